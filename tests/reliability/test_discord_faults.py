"""Discord misbehaves: rate limits, server errors, a deleted webhook, missing permissions, gateway drops.

Each test runs the real bot against the emulator with the scripted engine and checks the same thing at the end:
every trigger got exactly one reply, and the store matches what Discord shows.
"""

from __future__ import annotations

from bot.storage.models import GenerationStatus
from tests.cogs._world import eventually, make_world
from tests.discord_emulator import DiscordEmulator
from tests.discord_emulator import models as m
from tests.reliability.helpers import (
    WEBHOOK_EDIT,
    WEBHOOK_POST,
    assert_store_matches_discord,
    generations,
    persona_messages,
    settled,
    stored,
)
from tests.support.scripted_engine import ScriptedEngine

LONG = " ".join(f"word{i}" for i in range(40)) + "."


async def _final(emu: DiscordEmulator, channel, text: str):  # type: ignore[no-untyped-def]
    return await emu.wait_until(
        lambda: next((p for p in persona_messages(emu, channel) if p.content.endswith(text) and p.components), None),
        f"the reply {text[:30]!r}… with buttons",
    )


async def test_rate_limits_on_send_and_edit_delay_but_never_double_a_reply(emulator: DiscordEmulator, run_bot) -> None:
    engine = ScriptedEngine(LONG, delay=0.01)
    w = await make_world(emulator, run_bot, engine=engine)
    send_429 = emulator.fail_next("POST", WEBHOOK_POST, 429, count=2, retry_after=0.1)
    edit_429 = emulator.fail_next("PATCH", WEBHOOK_EDIT, 429, count=3, retry_after=0.1)
    await emulator.user_message(w.channel, w.alice, "Seraphina, count for me")
    reply = await _final(emulator, w.channel, LONG)
    assert send_429.hits == 2 and edit_429.hits == 3
    assert [p.content for p in persona_messages(emulator, w.channel)] == [LONG]
    assert reply.allowed_mentions == {"parse": []}
    [gen] = await settled(w.bot)
    assert gen.status is GenerationStatus.DONE and gen.reply_message_ids == [reply.id]
    await assert_store_matches_discord(emulator, w.bot, w.channel)


async def test_a_global_rate_limit_is_waited_out(emulator: DiscordEmulator, run_bot) -> None:
    w = await make_world(emulator, run_bot, replies="After the global limit.")
    rule = emulator.fail_next("*", r"/webhooks/.*", 429, count=1, retry_after=0.2, is_global=True)
    await emulator.user_message(w.channel, w.alice, "Seraphina?")
    await _final(emulator, w.channel, "After the global limit.")
    assert rule.hits == 1
    assert len(persona_messages(emulator, w.channel)) == 1
    await assert_store_matches_discord(emulator, w.bot, w.channel)


async def test_a_server_error_on_send_is_retried_once_and_posts_one_reply(emulator: DiscordEmulator, run_bot) -> None:
    w = await make_world(emulator, run_bot, replies="Through the 500.")
    rule = emulator.fail_next("POST", WEBHOOK_POST, 500, count=1)
    await emulator.user_message(w.channel, w.alice, "Seraphina?")
    await emulator.wait_until(
        lambda: any(p.content == "Through the 500." and p.components for p in persona_messages(emulator, w.channel)),
        "the reply after discord.py's retry",
        timeout=10,
    )
    assert rule.hits == 1 and len(persona_messages(emulator, w.channel)) == 1
    await assert_store_matches_discord(emulator, w.bot, w.channel)


async def test_webhook_deleted_mid_stream_the_reply_moves_to_a_new_one(emulator: DiscordEmulator, run_bot) -> None:
    engine = ScriptedEngine(LONG, delay=0.02)
    w = await make_world(emulator, run_bot, engine=engine)
    w.engine.pause()
    await emulator.user_message(w.channel, w.alice, "Seraphina, talk")
    w.engine.resume()
    first = await emulator.wait_for_webhook_message(w.channel)
    await emulator.delete_webhook(first.webhook_id)
    reply = await _final(emulator, w.channel, LONG)
    assert reply.webhook_id != first.webhook_id
    # The text is shown once: the part that could not be edited any more was posted again through the new webhook.
    finished = [p for p in persona_messages(emulator, w.channel) if p.content == LONG]
    assert finished == [reply]
    # Deleting a webhook leaves its messages: the stale partial one is removed (the bot has Manage Messages here).
    await emulator.wait_until(lambda: first.deleted, "the orphaned partial message removed")
    assert persona_messages(emulator, w.channel) == [reply]
    [gen] = await settled(w.bot)
    assert gen.status is GenerationStatus.DONE and gen.reply_message_ids == [reply.id]
    await assert_store_matches_discord(emulator, w.bot, w.channel)


async def test_losing_manage_webhooks_mid_stream_falls_back_and_tells_admins_once(
    emulator: DiscordEmulator, run_bot
) -> None:
    engine = ScriptedEngine([LONG, "Second."], delay=0.02)
    w = await make_world(emulator, run_bot, engine=engine)
    await emulator.user_message(w.channel, w.alice, "Seraphina, talk")
    first = await emulator.wait_for_webhook_message(w.channel)
    await emulator.delete_webhook(first.webhook_id)
    await emulator.deny_bot_manage_webhooks(w.channel)
    await _final(emulator, w.channel, f"**Seraphina**: {LONG}")
    await emulator.user_message(w.channel, w.alice, "Seraphina, again")
    await _final(emulator, w.channel, "**Seraphina**: Second.")
    notices = [x for x in emulator.messages_in(w.channel) if "Manage Webhooks" in x.content]
    assert len(notices) == 1
    await assert_store_matches_discord(emulator, w.bot, w.channel)


async def test_without_send_messages_the_reply_fails_cleanly_and_the_bot_recovers(
    emulator: DiscordEmulator, run_bot
) -> None:
    w = await make_world(emulator, run_bot, replies="I can speak again.")
    await emulator.deny_bot_manage_webhooks(w.channel)
    bot_role = w.guild.role(emulator.bot_user.username)
    await emulator.set_permissions(w.channel, bot_role, deny=m.SEND_MESSAGES)
    await emulator.user_message(w.channel, w.alice, "Seraphina?")

    async def failed() -> bool:
        gens = await generations(w.bot, w.channel.id)
        return bool(gens) and gens[-1].status is GenerationStatus.FAILED

    await emulator.wait_until(lambda: any(r.status == 403 for r in emulator.requests), "a refused send")
    await eventually(failed, "the generation marked failed")
    assert not persona_messages(emulator, w.channel)
    # Permission restored: the next trigger is answered normally.
    await emulator.set_permissions(w.channel, bot_role, deny=0)
    await emulator.deny_bot_manage_webhooks(w.channel, denied=False)
    await emulator.user_message(w.channel, w.alice, "Seraphina, now?")
    await _final(emulator, w.channel, "I can speak again.")
    await assert_store_matches_discord(emulator, w.bot, w.channel)


async def test_gateway_drop_mid_reply_resumes_and_answers_what_was_said_meanwhile(
    emulator: DiscordEmulator, run_bot
) -> None:
    engine = ScriptedEngine([LONG, "Welcome back, Bob."], delay=0.02)
    w = await make_world(emulator, run_bot, engine=engine)
    await emulator.user_message(w.channel, w.alice, "Seraphina, a long one please")
    await emulator.wait_for_webhook_message(w.channel)  # streaming
    await emulator.disconnect(0)
    late = await emulator.user_message(w.channel, w.bob, "Seraphina, me next")  # sent while the bot is away
    resumed = await emulator.wait_for_resume(0)
    assert resumed.detail["replayed"] >= 1
    await _final(emulator, w.channel, LONG)
    await _final(emulator, w.channel, "Welcome back, Bob.")
    gens = await settled(w.bot)
    assert sorted(g.trigger_message_id for g in gens) == sorted([gens[0].trigger_message_id, late.id])
    assert all(g.status is GenerationStatus.DONE for g in gens)
    assert [p.content for p in persona_messages(emulator, w.channel)] == [LONG, "Welcome back, Bob."]
    await assert_store_matches_discord(emulator, w.bot, w.channel)


async def test_lost_session_fresh_identify_keeps_the_reply_and_backfills_the_gap(
    emulator: DiscordEmulator, run_bot
) -> None:
    import asyncio

    engine = ScriptedEngine([LONG, "I read it all."], delay=0.02)
    w = await make_world(emulator, run_bot, engine=engine)
    # Hold the new IDENTIFY until the test has spoken into the gap (Discord replays nothing to a new session).
    gate = asyncio.Event()
    original = w.bot.before_identify_hook

    async def held(shard_id, *, initial=False):  # type: ignore[no-untyped-def]
        if not initial:
            await gate.wait()
        await original(shard_id, initial=initial)

    w.bot.before_identify_hook = held  # type: ignore[method-assign]
    await emulator.user_message(w.channel, w.alice, "Seraphina, a long one please")
    await emulator.wait_for_webhook_message(w.channel)  # streaming
    await emulator.invalidate_session(0)
    gap = [
        await emulator.user_message(w.channel, w.bob, "The password to the vault is swordfish."),
        await emulator.user_message(w.channel, w.alice, "Remember that, Seraphina."),
    ]
    await _final(emulator, w.channel, LONG)  # the reply in flight is finished over REST meanwhile
    gate.set()
    await emulator.wait_for_identify(0)

    async def gap_stored() -> bool:
        ids = {r.id for r in await stored(w.bot, w.channel.id)}
        return all(g.id in ids for g in gap)

    await eventually(gap_stored, "the messages said during the gap stored by the backfill")
    # No event came for the gap, but its last message named the persona: it is answered once the bot is back (once),
    # and that reply's prompt holds everything said while the bot was away.
    await _final(emulator, w.channel, "I read it all.")
    assert "swordfish" in w.engine.prompts[-1] and "Alice: Remember that, Seraphina." in w.engine.prompts[-1]
    await asyncio.sleep(0.2)
    assert [p.content for p in persona_messages(emulator, w.channel)] == [LONG, "I read it all."]
    assert len(w.engine.prompts) == 2
    await assert_store_matches_discord(emulator, w.bot, w.channel)
