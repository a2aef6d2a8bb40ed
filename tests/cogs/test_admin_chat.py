"""Moderation as members see it: the real bot (every cog, the ScriptedEngine) against the Discord emulator.

Blocked users and paused guilds get no reply, filtered output never reaches the channel (streamed edits included),
nsfw-only gating holds by default, forgetting removes text from later prompts (after a restart too), Reply info
names the human behind a reply, and the rate limit answers with a clock.

"No reply" is observed after a barrier: a later trigger that does get a reply, or the message being stored, so a
missing reply is never inferred from a timeout.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from bot.client import RPBot
from bot.storage import channels as channel_repo
from bot.storage import generations as gen_repo
from bot.storage import messages as msg_repo
from bot.storage.messages import MessageRecord
from bot.storage.models import Generation, GenerationStatus, MessageKind, ReplyMode, StoredMessage
from tests.cogs._world import eventually
from tests.cogs.conftest import CHAT_EXTENSIONS, FAST_STREAM, World, activate_persona
from tests.discord_emulator import DiscordEmulator
from tests.discord_emulator import models as m
from tests.discord_emulator.fixtures import BotRunner
from tests.discord_emulator.interactions import InteractionHandle
from tests.support.scripted_engine import ScriptedEngine

WITHHELD = "*(This reply was withheld by this server's output filters.)*"
# "dragon" comes after a few words and is followed by many: streamed unfiltered, an edit would show it.
DRAGON = "The night is long and cold, and the old dragon wakes at last, stretching its wings over the quiet valley."
CLEAN = "A calm night settles over the valley, and nothing stirs until morning comes."


async def admin(
    emu: DiscordEmulator, where: m.Channel, who: m.Member, sub: str, /, **options: Any
) -> InteractionHandle:
    handle = await emu.slash_command(where, who, "admin", options, subcommand=sub)
    await handle.wait_response()
    assert handle.ephemeral
    return handle


async def finished_reply(emu: DiscordEmulator, channel: m.Channel) -> m.Message:
    """The persona's reply to the last driver action, once final (it carries its buttons)."""
    reply = await emu.wait_for_webhook_message(channel)
    await emu.wait_until(lambda: reply.components and not reply.content.endswith(" …"), "the finished reply")
    return reply


def persona_messages(emu: DiscordEmulator, channel: m.Channel) -> list[m.Message]:
    return emu.sent_messages(channel, source="webhook", include_deleted=True)


async def generations(bot: RPBot) -> list[Generation]:
    async with bot.db.session() as session:
        return list((await session.scalars(select(Generation).order_by(Generation.id))).all())


async def stored_ids(bot: RPBot) -> set[int]:
    async with bot.db.session() as session:
        return set((await session.scalars(select(StoredMessage.id))).all())


async def is_stored(bot: RPBot, message: m.Message) -> bool:
    return message.id in await stored_ids(bot)


# ---- nsfw-only ---------------------------------------------------------------------------------------------------


async def test_nsfw_only_gating_holds_by_default(
    emulator: DiscordEmulator, chat_bot: RPBot, world: World, scripted_engine: ScriptedEngine
) -> None:
    await activate_persona(chat_bot, world.general)
    await activate_persona(chat_bot, world.nsfw)
    thread = await emulator.create_thread(world.general, "side scene", owner=world.member)

    await emulator.user_message(world.general, world.member, "Aria, are you there?")
    await emulator.user_message(thread, world.member, "Aria, in here?")
    await emulator.user_message(world.nsfw, world.member, "Aria, are you there?")
    await finished_reply(emulator, world.nsfw)
    assert persona_messages(emulator, world.general) == []
    assert emulator.sent_messages(thread) == []
    assert len(scripted_engine.prompts) == 1

    await admin(emulator, world.general, world.admin, "nsfw-only", enabled=False)
    await emulator.user_message(world.general, world.member, "Aria, and now?")
    reply = await finished_reply(emulator, world.general)
    assert reply.content == "Hello there, traveller."


async def test_persona_use_outside_age_restricted_channels_explains_the_setting(
    emulator: DiscordEmulator, chat_bot: RPBot, world: World
) -> None:
    await activate_persona(chat_bot, world.nsfw)  # creates the persona
    staff = await emulator.add_member(world.guild, "sam", permissions=m.MANAGE_CHANNELS)
    use = await emulator.slash_command(world.general, staff, "persona", {"name": "Aria"}, subcommand="use")
    await use.wait_response()
    await use.wait_content()
    assert use.ephemeral
    assert "/admin nsfw-only enabled:False" in use.content and "age-restricted" in use.content


# ---- blocked users -------------------------------------------------------------------------------------------------


async def test_blocked_user_gets_no_reply_and_is_not_read(
    emulator: DiscordEmulator, chat_bot: RPBot, world: World, scripted_engine: ScriptedEngine
) -> None:
    await activate_persona(chat_bot, world.nsfw)
    await admin(emulator, world.nsfw, world.admin, "block", user=world.member)

    ignored = await emulator.user_message(world.nsfw, world.member, "Aria, the password is swordfish")
    await emulator.user_message(world.nsfw, world.admin, "Aria, good evening")
    reply = await finished_reply(emulator, world.nsfw)
    assert len(persona_messages(emulator, world.nsfw)) == 1
    assert len(scripted_engine.prompts) == 1
    assert "good evening" in scripted_engine.prompts[0] and "swordfish" not in scripted_engine.prompts[0]
    assert not await is_stored(chat_bot, ignored)
    [gen] = await generations(chat_bot)
    assert gen.user_id == world.admin.user.id

    regen = await emulator.click_button(reply, f"rpbot:regen:{gen.id}", world.member)
    await regen.wait_response()
    assert regen.ephemeral and regen.content == "You cannot use personas in this server."

    await admin(emulator, world.nsfw, world.admin, "unblock", user=world.member)
    await emulator.user_message(world.nsfw, world.member, "Aria, may I speak again?")
    await finished_reply(emulator, world.nsfw)
    assert "may I speak again?" in scripted_engine.prompts[-1]


# ---- pause ---------------------------------------------------------------------------------------------------------


async def test_pause_cancels_queued_replies_and_silences_the_guild(
    emulator: DiscordEmulator, chat_bot: RPBot, world: World, scripted_engine: ScriptedEngine
) -> None:
    gid = world.guild.id
    queue = chat_bot.queue
    assert queue is not None
    second = await emulator.create_channel(world.guild, "after-dark-2", nsfw=True)
    await activate_persona(chat_bot, world.nsfw)
    await activate_persona(chat_bot, second)

    scripted_engine.hang_next(after_chunks=1)  # the first reply shows a word, then hangs until cancelled
    await emulator.user_message(world.nsfw, world.member, "Aria, tell me a long story")
    partial = await emulator.wait_for_webhook_message(world.nsfw)
    await emulator.user_message(second, world.admin, "Aria, one for me too")
    await emulator.wait_until(lambda: len(queue.requests(gid)) == 2, "one reply running and one queued")

    handle = await admin(emulator, world.general, world.admin, "pause")
    assert "(2 queued or running replies cancelled)" in handle.content
    assert queue.requests(gid) == []
    await emulator.wait_until(lambda: partial.deleted, "the half-written reply to be removed")

    async def both_cancelled() -> bool:
        return [g.status for g in await generations(chat_bot)] == [GenerationStatus.CANCELLED] * 2

    await eventually(both_cancelled, "both generations marked cancelled")

    silenced = await emulator.user_message(world.nsfw, world.member, "Aria, hello?")
    await eventually(lambda: is_stored(chat_bot, silenced), "the message in the store")
    await admin(emulator, world.general, world.admin, "resume")
    after = await emulator.user_message(world.nsfw, world.member, "Aria, hello again")
    reply = await finished_reply(emulator, world.nsfw)
    assert reply.content == "Hello there, traveller."
    gens = await generations(chat_bot)
    assert len(gens) == 3 and gens[-1].trigger_message_id == after.id  # nothing for the message sent while paused
    assert [m for m in persona_messages(emulator, second) if not m.deleted] == []


async def test_a_reply_being_prepared_when_the_guild_is_paused_is_not_sent(
    emulator: DiscordEmulator,
    chat_bot: RPBot,
    world: World,
    scripted_engine: ScriptedEngine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await activate_persona(chat_bot, world.nsfw)
    # Hold the reply while it loads the channel's history, i.e. after it was triggered and before it is queued.
    reading, go_on = asyncio.Event(), asyncio.Event()
    real_history = msg_repo.history

    async def held_history(*args: Any, **kwargs: Any) -> Any:
        reading.set()
        await go_on.wait()
        return await real_history(*args, **kwargs)

    monkeypatch.setattr(msg_repo, "history", held_history)
    await emulator.user_message(world.nsfw, world.member, "Aria, quick, before the pause!")
    await asyncio.wait_for(reading.wait(), timeout=5)

    handle = await admin(emulator, world.general, world.admin, "pause")
    assert "(0 queued or running replies cancelled)" in handle.content
    go_on.set()

    async def cancelled() -> bool:
        return [g.status for g in await generations(chat_bot)] == [GenerationStatus.CANCELLED]

    await eventually(cancelled, "the reply cancelled")
    assert scripted_engine.prompts == []
    assert persona_messages(emulator, world.nsfw) == []


# ---- output filters ----------------------------------------------------------------------------------------------


def leaked(emu: DiscordEmulator, channel: m.Channel, word: str) -> list[str]:
    """Every text a persona ever showed in the channel (each edit, deleted messages too) that contains ``word``."""
    posts = emu.sent_messages(channel, source=("webhook", "bot"), include_deleted=True)  # "bot": no-webhook fallback
    shown = [text for msg in posts for text in (*msg.content_history, msg.content)]
    return [text for text in shown if word in text.lower()]


async def test_filtered_output_is_withheld_while_streaming_and_regenerated(
    emulator: DiscordEmulator, chat_bot: RPBot, world: World, scripted_engine: ScriptedEngine
) -> None:
    await activate_persona(chat_bot, world.nsfw)
    await admin(emulator, world.nsfw, world.admin, "filter add", pattern="dragon")
    scripted_engine.delay = 0.03
    scripted_engine.set_replies([DRAGON, CLEAN])

    await emulator.user_message(world.nsfw, world.member, "Aria, what lives in the mountains?")
    reply = await finished_reply(emulator, world.nsfw)
    assert reply.content == CLEAN
    assert len(reply.content_history) >= 2  # it was streamed: posted early, edited later
    assert scripted_engine.cancelled == 1  # the first stream was stopped as soon as the word appeared
    assert leaked(emulator, world.nsfw, "dragon") == []

    async def recorded() -> bool:
        return [(g.alternatives, g.status) for g in await generations(chat_bot)] == [([CLEAN], GenerationStatus.DONE)]

    await eventually(recorded, "only the clean reply recorded")


async def test_output_filtered_twice_becomes_a_notice(
    emulator: DiscordEmulator, chat_bot: RPBot, world: World, scripted_engine: ScriptedEngine
) -> None:
    await activate_persona(chat_bot, world.nsfw)
    await admin(emulator, world.nsfw, world.admin, "filter add", pattern=r"drag(on|ons)\b", regex=True)
    scripted_engine.delay = 0.03
    scripted_engine.set_replies(DRAGON)

    await emulator.user_message(world.nsfw, world.member, "Aria, what lives in the mountains?")
    reply = await finished_reply(emulator, world.nsfw)
    assert reply.content == WITHHELD
    assert len(scripted_engine.prompts) == 2  # regenerated once
    assert leaked(emulator, world.nsfw, "dragon") == []
    [gen] = await generations(chat_bot)
    assert gen.status is GenerationStatus.FAILED and gen.error == "filtered"


async def test_swiping_back_to_a_version_filtered_since_is_refused(
    emulator: DiscordEmulator, chat_bot: RPBot, world: World, scripted_engine: ScriptedEngine
) -> None:
    await activate_persona(chat_bot, world.nsfw)
    scripted_engine.set_replies(["The dragon sleeps.", "A quiet night."])
    await emulator.user_message(world.nsfw, world.member, "Aria, what is up the hill?")
    reply = await finished_reply(emulator, world.nsfw)
    assert reply.content == "The dragon sleeps."  # no filter yet
    [gen] = await generations(chat_bot)

    regen = await emulator.click_button(reply, f"rpbot:regen:{gen.id}", world.member)
    await regen.wait_response()
    await emulator.wait_until(lambda: reply.content == "A quiet night." and "2/2" in str(reply.components), "swipe 2")

    await admin(emulator, world.nsfw, world.admin, "filter add", pattern="dragon")
    back = await emulator.click_button(reply, f"rpbot:prev:{gen.id}", world.member)
    await back.wait_response()
    assert back.ephemeral and "withheld by this server's output filters" in back.content
    assert reply.content == "A quiet night."


# ---- forgetting ----------------------------------------------------------------------------------------------------


async def test_forgotten_text_leaves_later_prompts_even_after_a_restart(
    emulator: DiscordEmulator, run_bot: BotRunner, chat_bot: RPBot, world: World, scripted_engine: ScriptedEngine
) -> None:
    await activate_persona(chat_bot, world.nsfw)
    await emulator.user_message(world.nsfw, world.member, "Aria, my secret is pineapple")
    await finished_reply(emulator, world.nsfw)
    assert "pineapple" in scripted_engine.prompts[-1]

    handle = await admin(emulator, world.nsfw, world.admin, "forget", user=world.member)
    assert handle.content.startswith("Deleted 1 stored message(s)")
    await emulator.user_message(world.nsfw, world.admin, "Aria, what was the secret?")
    await finished_reply(emulator, world.nsfw)
    assert "what was the secret?" in scripted_engine.prompts[-1] and "pineapple" not in scripted_engine.prompts[-1]

    mango = await emulator.user_message(world.nsfw, world.member, "mango is my other secret")  # stored, no reply
    await eventually(lambda: is_stored(chat_bot, mango), "the message in the store")
    me = await emulator.slash_command(world.nsfw, world.member, "forget-me")
    await me.wait_response()
    assert me.content.startswith("Done: 1 stored message(s) of yours were deleted")
    assert not await is_stored(chat_bot, mango)

    # A restart backfills what Discord still has; what was forgotten must not come back.
    await run_bot.stop(chat_bot)
    engine = ScriptedEngine("Welcome back.")
    bot = await run_bot(engine=engine, start_generation=True, extensions=CHAT_EXTENSIONS, settings=FAST_STREAM)
    chat = bot.get_cog("ChatCog")
    await emulator.wait_for_request("GET", rf"/channels/{world.nsfw.id}/messages")
    await emulator.wait_until(lambda: all(t.done() for t in chat._tasks), "the backfill")  # type: ignore[union-attr]
    await emulator.user_message(world.nsfw, world.admin, "Aria, any secrets left?")
    await finished_reply(emulator, world.nsfw)
    assert "any secrets left?" in engine.prompts[-1]
    assert "pineapple" not in engine.prompts[-1] and "mango" not in engine.prompts[-1]
    async with bot.db.session() as session:
        authors = set((await session.scalars(select(StoredMessage.author_id))).all())
    assert world.member.user.id not in authors


# ---- Reply info ----------------------------------------------------------------------------------------------------


async def test_reply_info_names_the_triggering_user(
    emulator: DiscordEmulator, chat_bot: RPBot, world: World, scripted_engine: ScriptedEngine
) -> None:
    persona = await activate_persona(chat_bot, world.nsfw)
    trigger = await emulator.user_message(world.nsfw, world.member, "Aria, say something rude")
    reply = await finished_reply(emulator, world.nsfw)

    async def recorded() -> Generation | None:
        async with chat_bot.db.session() as session:
            return await gen_repo.by_reply_message(session, reply.id)

    gen = await eventually(recorded, "the reply recorded")

    refused = await emulator.message_command(world.nsfw, world.member, "Reply info", reply)
    await refused.wait_response()
    assert refused.ephemeral and not refused.embeds and "Manage Messages" in refused.content

    info = await emulator.message_command(world.nsfw, world.mod, "Reply info", reply)
    await info.wait_response()
    assert info.ephemeral
    fields = {f["name"]: f["value"] for f in info.embeds[0]["fields"]}
    assert fields["Triggered by"] == f"<@{world.member.user.id}> ({world.member.user.id})"
    assert fields["Persona"] == persona.name
    assert fields["Trigger message"] == str(trigger.id)
    assert fields["Tokens"] == f"prompt {gen.prompt_tokens}, reply {gen.completion_tokens}"
    assert gen.prompt_tokens and gen.completion_tokens
    assert "temperature=" in fields["Settings"]
    assert info.original is not None and info.original.mention_ids == []  # naming is not pinging


# ---- rate limit ----------------------------------------------------------------------------------------------------


async def test_rate_limit_reacts_with_a_clock(
    emulator: DiscordEmulator, chat_bot: RPBot, world: World, scripted_engine: ScriptedEngine
) -> None:
    await activate_persona(chat_bot, world.nsfw)
    await admin(emulator, world.nsfw, world.admin, "ratelimit", count=1, seconds=3600)

    await emulator.user_message(world.nsfw, world.member, "Aria, one")
    await finished_reply(emulator, world.nsfw)
    over = await emulator.user_message(world.nsfw, world.member, "Aria, two")
    await emulator.wait_until(lambda: over.reactions == ["⏰"], "the clock reaction")
    await emulator.user_message(world.nsfw, world.admin, "Aria, three")  # another user has a limit of their own
    await finished_reply(emulator, world.nsfw)
    triggers = [g.trigger_message_id for g in await generations(chat_bot)]
    assert len(triggers) == 2 and over.id not in triggers
    assert len(scripted_engine.prompts) == 2


async def test_rate_limit_counts_replies_not_messages_in_always_mode(
    emulator: DiscordEmulator, chat_bot: RPBot, world: World, scripted_engine: ScriptedEngine
) -> None:
    await activate_persona(chat_bot, world.nsfw)
    async with chat_bot.db.session() as session:
        await channel_repo.update_channel(session, world.guild.id, world.nsfw.id, reply_mode=ReplyMode.ALWAYS)
    chat_bot.get_cog("ChatCog").invalidate_channel(world.nsfw.id)  # type: ignore[union-attr]
    await admin(emulator, world.nsfw, world.admin, "ratelimit", count=1, seconds=3600)

    burst = [await emulator.user_message(world.nsfw, world.member, f"line {i}") for i in range(3)]
    await finished_reply(emulator, world.nsfw)  # one reply for the burst, and no clock on any of it
    assert all(msg.reactions == [] for msg in burst)
    late = await emulator.user_message(world.nsfw, world.member, "one more thing")
    await emulator.wait_until(lambda: late.reactions == ["⏰"], "the clock reaction")
    assert len(scripted_engine.prompts) == 1


async def test_regenerate_and_continue_count_against_the_rate_limit(
    emulator: DiscordEmulator, chat_bot: RPBot, world: World, scripted_engine: ScriptedEngine
) -> None:
    """A regenerate costs the model as much as a message: spamming the button cannot get round the limit."""
    await activate_persona(chat_bot, world.nsfw)
    await admin(emulator, world.nsfw, world.admin, "ratelimit", count=2, seconds=3600)
    await emulator.user_message(world.nsfw, world.member, "Aria, one")
    reply = await finished_reply(emulator, world.nsfw)
    [gen] = await generations(chat_bot)

    regen = await emulator.click_button(reply, f"rpbot:regen:{gen.id}", world.member)  # the second of two
    await regen.wait_response()
    await emulator.wait_until(lambda: len(scripted_engine.prompts) == 2 and reply.components, "the regenerated reply")
    cog = chat_bot.get_cog("ChatCog")
    await emulator.wait_until(lambda: world.nsfw.id not in cog._generating, "the regenerated reply recorded")  # type: ignore[union-attr]

    for action in ("regen", "cont"):
        refused = await emulator.click_button(reply, f"rpbot:{action}:{gen.id}", world.member)
        await refused.wait_response()
        assert refused.ephemeral and "2 replies in 3600 seconds" in refused.content
        assert "try again in" in refused.content
    assert len(scripted_engine.prompts) == 2
    # Swiping between the stored versions generates nothing and stays free; another member has a limit of their own.
    back = await emulator.click_button(reply, f"rpbot:prev:{gen.id}", world.member)
    await back.wait_response()
    assert not back.ephemeral
    other = await emulator.click_button(reply, f"rpbot:regen:{gen.id}", world.admin)
    await other.wait_response()
    await emulator.wait_until(lambda: len(scripted_engine.prompts) == 3, "the admin's regenerate")


# ---- retention -----------------------------------------------------------------------------------------------------


async def test_retention_purge_reaches_the_history_in_memory(
    emulator: DiscordEmulator, run_bot: BotRunner, world: World, scripted_engine: ScriptedEngine
) -> None:
    bot = await run_bot(
        engine=scripted_engine,
        start_generation=True,
        extensions=CHAT_EXTENSIONS,
        settings={**FAST_STREAM, "message_retention_days": 30},
    )
    await activate_persona(bot, world.nsfw)
    old = datetime.now(UTC) - timedelta(days=40)
    async with bot.db.session() as session:
        await msg_repo.save_messages(
            session,
            [
                MessageRecord(
                    1,
                    world.guild.id,
                    world.nsfw.id,
                    world.member.user.id,
                    "Nell",
                    MessageKind.HUMAN,
                    "the ancient lore of the valley",
                    old,
                ),
            ],
        )
    await emulator.user_message(world.nsfw, world.admin, "Aria, remind me of the lore")
    await finished_reply(emulator, world.nsfw)
    assert "ancient lore" in scripted_engine.prompts[-1]  # the chat now holds it in memory

    await bot.get_cog("AdminCog").retention()  # type: ignore[union-attr]  # one run of the hourly purge
    await emulator.user_message(world.nsfw, world.admin, "Aria, and now?")
    await finished_reply(emulator, world.nsfw)
    assert "and now?" in scripted_engine.prompts[-1] and "ancient lore" not in scripted_engine.prompts[-1]
