"""The engine fails: an exception mid-stream, a hang past the timeout, out of memory, a broken engine that must be
restarted. Each time the person gets a notice in place of the half-written reply, the queue goes on serving the
other channels, and the next request succeeds."""

from __future__ import annotations

import pytest

from bot.generation.base import EngineError
from bot.storage.models import GenerationStatus
from tests.cogs._world import make_world
from tests.discord_emulator import DiscordEmulator
from tests.reliability.helpers import assert_store_matches_discord, button, persona_messages, settled
from tests.support.scripted_engine import ScriptedEngine

SLOW = " ".join(f"word{i}" for i in range(30)) + "."
CURSOR = " …"


def _inject(engine: ScriptedEngine, fault: str) -> None:
    if fault == "error":
        engine.fail_next(EngineError("CUDA error: an illegal memory access was encountered"), after_chunks=3)
    elif fault == "oom":
        engine.oom_next(after_chunks=3)
    elif fault == "broken":
        engine.oom_next(after_chunks=3, broken=True)  # the engine needs a restart before it can serve again
    else:
        engine.hang_next(after_chunks=3)


@pytest.mark.parametrize(
    ("fault", "notice"),
    [
        ("error", "could not answer because the model failed"),
        ("oom", "could not answer because the model failed"),
        ("broken", "could not answer because the model failed"),
        ("hang", "took too long to answer"),
    ],
)
async def test_engine_fault_mid_stream_gives_a_notice_and_the_queue_goes_on(
    emulator: DiscordEmulator, run_bot, fault: str, notice: str
) -> None:
    engine = ScriptedEngine(SLOW, delay=0.01)
    w = await make_world(emulator, run_bot, engine=engine, settings={"request_timeout_seconds": 1.0})
    w.bot.queue.restart_backoff = (0.05,)
    other = await emulator.create_channel(w.guild, "elsewhere", nsfw=True)
    from bot.storage import channels as channel_repo

    async with w.bot.db.session() as session:
        await channel_repo.set_active_persona(session, w.guild.id, other.id, w.persona_id)
    _inject(engine, fault)
    await emulator.user_message(w.channel, w.alice, "Seraphina, tell me something")
    failed = await emulator.wait_for_webhook_message(w.channel)
    await emulator.wait_until(lambda: notice in failed.content and failed.components, "the notice with Try again")
    assert any(h.endswith(CURSOR) for h in failed.content_history)  # it was streaming when the fault hit
    assert "CUDA" not in failed.content and "memory" not in failed.content
    # Try again on the notice works ...
    click = await emulator.click_button(failed, button(failed, "Try again"), w.alice)
    await click.wait_response()
    await emulator.wait_until(lambda: engine.completed == 1, "the retried reply", timeout=10)
    # ... and the queue goes on: another channel and the same channel are both answered afterwards.
    await emulator.user_message(other, w.bob, "Seraphina, are you well?")
    await emulator.user_message(w.channel, w.alice, "Seraphina, once more")
    await emulator.wait_until(lambda: engine.completed == 3, "both later replies", timeout=10)
    gens = await settled(w.bot)
    # The failed generation became a good one when tried again; the two later ones are good.
    assert [g.status for g in gens] == [GenerationStatus.DONE] * 3
    assert not any(m.content.endswith(CURSOR) for m in emulator.messages_in(w.channel) + emulator.messages_in(other))
    assert sum(p.content == SLOW for p in persona_messages(emulator, w.channel)) == 2
    assert sum(p.content == SLOW for p in persona_messages(emulator, other)) == 1
    stats = w.bot.queue.stats
    assert stats.failed == 1 and stats.completed == 3 and stats.in_flight == 0
    if fault == "hang":
        assert stats.timed_out == 1 and engine.cancelled >= 1  # the hung stream was stopped, not left running
    if fault == "broken":
        assert stats.engine_restarts == 1 and engine.starts == 2
    for channel in (w.channel, other):
        await assert_store_matches_discord(emulator, w.bot, channel)


async def test_an_engine_that_will_not_restart_fails_waiting_requests_then_recovers(
    emulator: DiscordEmulator, run_bot, error_log_guard
) -> None:
    error_log_guard.allow("could not restart the scripted engine")
    engine = ScriptedEngine("Back on my feet.")
    w = await make_world(emulator, run_bot, engine=engine)
    w.bot.queue.restart_backoff = (0.3,)
    engine.fail_starts(1)
    engine.fail_next(broken=True)
    await emulator.user_message(w.channel, w.alice, "Seraphina?")
    first = await emulator.wait_for_webhook_message(w.channel)
    await emulator.wait_until(lambda: "the model failed" in first.content, "the first notice")
    await emulator.wait_until(lambda: w.bot.queue.stats.engine_restarts == 1, "the engine restarted", timeout=10)
    await emulator.user_message(w.channel, w.alice, "Seraphina, now?")
    await emulator.wait_until(
        lambda: any(p.content == "Back on my feet." for p in persona_messages(emulator, w.channel)), "the next reply"
    )
    assert engine.starts == 3  # the first start, one failed restart, one that worked
    await assert_store_matches_discord(emulator, w.bot, w.channel)
