"""The chat cog end to end: the real discord.py client against the emulator, with the scripted engine."""

from __future__ import annotations

from bot.storage import generations as gen_repo
from bot.storage import messages as msg_repo
from bot.storage.models import GenerationStatus, MessageKind
from tests.cogs._world import World, eventually, make_world
from tests.discord_emulator import DiscordEmulator


async def test_persona_replies_through_webhook_with_its_name(emulator: DiscordEmulator, run_bot) -> None:
    w = await make_world(emulator, run_bot, replies="Greetings, Alice. The forest is calm tonight.")
    await emulator.user_message(w.channel, w.alice, "Hello Seraphina!")
    reply = await emulator.wait_for_webhook_message(w.channel)
    assert reply.username == "Seraphina"
    await emulator.wait_until(lambda: reply.content == "Greetings, Alice. The forest is calm tonight." and reply.components,
                              "the final reply with buttons")
    assert reply.allowed_mentions == {"parse": []}
    assert all(body.get("allowed_mentions") == {"parse": []} for body in reply.edits if "content" in body)
    labels = str(reply.components)
    assert "Regenerate" in labels and "Continue" in labels
    # The prompt carried the speaker's name and ended with the model turn.
    prompt = w.engine.prompts[-1]
    assert "Alice: Hello Seraphina!" in prompt and prompt.rstrip().endswith(("<|model|>", "<|model|>Seraphina:"))
    stored = await eventually(lambda: _stored(w, 2), "the reply in the store")
    async with w.bot.db.session() as s:
        gen = await gen_repo.latest_in_channel(s, w.channel.id)
    assert [m.kind for m in stored] == [MessageKind.HUMAN, MessageKind.PERSONA]
    assert stored[-1].content == "Greetings, Alice. The forest is calm tonight."
    assert gen.status is GenerationStatus.DONE and gen.user_id == w.alice.user.id and gen.reply_message_id == reply.id


async def test_mention_mode_ignores_unaddressed_messages(emulator: DiscordEmulator, run_bot) -> None:
    w = await make_world(emulator, run_bot)
    await emulator.user_message(w.channel, w.alice, "just chatting with bob")
    await emulator.user_message(w.channel, w.bob, f"<@{emulator.bot_user.id}> what do you think?")
    reply = await emulator.wait_for_webhook_message(w.channel)
    assert reply.username == "Seraphina"
    assert len(w.engine.prompts) == 1
    assert "Bob: @Seraphina what do you think?" in w.engine.prompts[0]
    assert "Alice: just chatting with bob" in w.engine.prompts[0]


async def _stored(w: World, count: int) -> list | None:
    async with w.bot.db.session() as s:
        rows = await msg_repo.latest_messages(s, w.channel.id)
    return rows if len(rows) >= count else None
