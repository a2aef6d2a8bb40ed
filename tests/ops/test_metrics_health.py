"""/metrics and /healthz scraped for real over HTTP from a bot running against the Discord emulator."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest

from bot.generation.base import GenerationRequest
from bot.generation.queue import GenerationJob
from bot.ops.metrics import BotMetrics, MetricsServer
from bot.storage import Database
from tests.discord_emulator import DiscordEmulator
from tests.discord_emulator.fixtures import BotRunner, ErrorLogGuard
from tests.ops.conftest import health, scrape
from tests.support.rpbot_process import free_port
from tests.support.scripted_engine import ScriptedEngine

EXPORTED = {
    "rpbot_queue_depth",
    "rpbot_queue_in_flight",
    "rpbot_queue_submitted",
    "rpbot_queue_completed",
    "rpbot_queue_failed",
    "rpbot_replies",
    "rpbot_time_to_first_token_seconds",
    "rpbot_generation_seconds",
    "rpbot_queue_wait_seconds",
    "rpbot_tokens_per_second",
    "rpbot_engine_up",
    "rpbot_discord_latency_seconds",
    "rpbot_discord_connected",
}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


def _job(channel_id: int, guild_id: int = 1) -> GenerationJob:
    return GenerationJob(GenerationRequest("Hello", max_new_tokens=20), guild_id=guild_id, channel_id=channel_id)


async def test_metrics_move_with_queue_activity(
    emulator: DiscordEmulator, run_bot: BotRunner, http: aiohttp.ClientSession
) -> None:
    await emulator.create_guild("Tavern")
    port = free_port()
    engine = ScriptedEngine("One two three four five.", capacity=1)
    bot = await run_bot(
        engine=engine, start_generation=True, extensions=("cogs.health",), settings={"metrics_port": port}
    )
    assert bot.queue is not None
    await emulator.wait_until(lambda: bot.latency == bot.latency and bot.latency != float("inf"), "a heartbeat ACK")

    before = await scrape(http, port)
    assert set(before.families) >= EXPORTED, sorted(EXPORTED - set(before.families))
    assert before.value("rpbot_engine_up") == 1
    assert before.value("rpbot_discord_connected", shard="0") == 1
    assert before.value("rpbot_discord_latency_seconds", shard="0") >= 0
    assert before.value("rpbot_queue_submitted_total") == 0

    engine.pause()  # hold the first request running so the gauges can be seen
    first = bot.queue.submit(_job(channel_id=10))
    second = bot.queue.submit(_job(channel_id=11))
    await emulator.wait_until(lambda: engine.active == 1, "the first request to run")
    busy = await scrape(http, port)
    assert busy.value("rpbot_queue_in_flight") == 1
    assert busy.value("rpbot_queue_depth") == 1
    assert busy.value("rpbot_queue_submitted_total") == 2

    engine.resume()
    await first.wait()
    await second.wait()
    done = await scrape(http, port)
    assert done.value("rpbot_queue_in_flight") == 0 and done.value("rpbot_queue_depth") == 0
    assert done.value("rpbot_queue_completed_total") == 2
    assert done.value("rpbot_queue_completion_tokens_total") > 0
    assert done.value("rpbot_time_to_first_token_seconds_count") == 2
    assert done.value("rpbot_queue_wait_seconds_count") == 2
    assert done.value("rpbot_tokens_per_second") > 0


async def test_healthz_is_ok_when_connected_with_database_and_engine(
    emulator: DiscordEmulator, run_bot: BotRunner, http: aiohttp.ClientSession
) -> None:
    await emulator.create_guild("Tavern")
    port = free_port()
    await run_bot(
        engine=ScriptedEngine(), start_generation=True, extensions=("cogs.health",), settings={"metrics_port": port}
    )
    assert await health(http, port) == (200, {"status": "ok"})


async def test_healthz_reports_an_unreachable_database_without_its_password(
    emulator: DiscordEmulator, run_bot: BotRunner, http: aiohttp.ClientSession
) -> None:
    await emulator.create_guild("Tavern")
    port = free_port()
    bot = await run_bot(
        engine=ScriptedEngine(), start_generation=True, extensions=("cogs.health",), settings={"metrics_port": port}
    )
    # A PostgreSQL server that went away: nothing listens on that port.
    working, bot.db = bot.db, Database(f"postgresql+asyncpg://rpbot:hunter2@127.0.0.1:{free_port()}/rpbot")
    try:
        status, body = await health(http, port)
    finally:
        await bot.db.close()
        bot.db = working
    assert status == 503 and body["status"] == "unhealthy"
    assert len(body["problems"]) == 1
    assert "unreachable" in body["problems"][0] and "hunter2" not in str(body)
    assert await health(http, port) == (200, {"status": "ok"})


async def test_healthz_reports_an_engine_that_cannot_restart(
    emulator: DiscordEmulator, run_bot: BotRunner, http: aiohttp.ClientSession, error_log_guard: ErrorLogGuard
) -> None:
    error_log_guard.allow(r"could not restart the scripted engine")
    await emulator.create_guild("Tavern")
    port = free_port()
    engine = ScriptedEngine()
    bot = await run_bot(
        engine=engine, start_generation=True, extensions=("cogs.health",), settings={"metrics_port": port}
    )
    assert bot.queue is not None
    bot.queue.restart_backoff = (0.05,)
    engine.fail_starts(1_000_000)
    engine.fail_next(broken=True)
    with pytest.raises(Exception, match="broke"):
        await bot.queue.submit(_job(channel_id=10)).wait()
    await emulator.wait_until(lambda: bot.queue is not None and bot.queue.restarting, "the engine restart to begin")

    status, body = await health(http, port)
    assert status == 503 and body["problems"] == ["the engine is restarting after a failure"]
    assert (await scrape(http, port)).value("rpbot_engine_up") == 0

    engine.fail_starts(0)  # the next restart attempt succeeds
    await emulator.wait_until(lambda: not bot.queue.restarting, "the engine to be back")  # type: ignore[union-attr]
    assert await health(http, port) == (200, {"status": "ok"})
    assert (await scrape(http, port)).value("rpbot_queue_engine_restarts_total") == 1


async def test_healthz_reports_a_disconnected_shard_until_it_reconnects(
    emulator: DiscordEmulator, run_bot: BotRunner, http: aiohttp.ClientSession
) -> None:
    guilds = [await emulator.create_guild("Guild 0")]
    while len({(g.id >> 22) % 2 for g in guilds}) < 2:
        guilds.append(await emulator.create_guild(f"Guild {len(guilds)}"))
    port = free_port()
    bot = await run_bot(
        engine=ScriptedEngine(),
        start_generation=True,
        extensions=("cogs.health",),
        settings={"metrics_port": port, "shard_count": 2},
    )
    shard = bot.get_shard(1)
    assert shard is not None
    await shard.disconnect()

    status, body = await health(http, port)
    assert status == 503 and body["problems"] == ["not connected to Discord: shard 1 disconnected"]
    metrics = await scrape(http, port)
    assert metrics.value("rpbot_discord_connected", shard="0") == 1
    assert metrics.value("rpbot_discord_connected", shard="1") == 0

    await shard.reconnect()
    await emulator.wait_until(lambda: not shard.is_closed(), "shard 1 to reconnect")
    assert await health(http, port) == (200, {"status": "ok"})


async def test_healthz_lists_each_problem_and_is_gone_after_close(
    emulator: DiscordEmulator, run_bot: BotRunner, http: aiohttp.ClientSession
) -> None:
    """Without the generation stack the engine is reported; after close() the endpoint is gone."""
    await emulator.create_guild("Tavern")
    port = free_port()
    bot = await run_bot(extensions=("cogs.health",), settings={"metrics_port": port})
    status, body = await health(http, port)
    assert status == 503 and body["problems"] == ["the engine is not started"]

    bot.shutting_down.set()  # what close() sets first, while cogs drain
    status, body = await health(http, port)
    assert status == 503 and body["problems"] == ["shutting down", "the engine is not started"]

    await run_bot.stop(bot)
    with pytest.raises(aiohttp.ClientConnectionError):
        await health(http, port)


async def test_a_failing_health_check_is_a_503_not_a_crash(
    http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken_check() -> list[str]:
        raise RuntimeError("secret detail")

    server = MetricsServer(BotMetrics(), broken_check)
    port = await server.start("127.0.0.1", 0)
    try:
        with caplog.at_level(logging.ERROR, logger="bot.ops.metrics"):
            status, body = await health(http, port)
    finally:
        await server.stop()
    assert status == 503 and body == {"status": "unhealthy", "problems": ["health check failed: RuntimeError"]}
    assert "secret detail" not in str(body)  # exception text may hold anything; only its type is shown
    assert "health check failed" in caplog.text


async def test_persona_replies_are_counted_by_outcome(
    emulator: DiscordEmulator, run_bot: BotRunner, http: aiohttp.ClientSession
) -> None:
    from tests.cogs._world import make_world

    port = free_port()
    w = await make_world(emulator, run_bot, replies="The forest is calm tonight.", settings={"metrics_port": port})
    await emulator.user_message(w.channel, w.alice, "Hello Seraphina!")
    reply = await emulator.wait_for_webhook_message(w.channel)
    await emulator.wait_until(lambda: reply.components, "the finished reply")
    ok = await scrape(http, port)
    assert ok.value("rpbot_replies_total", outcome="ok") == 1
    assert ok.value("rpbot_generation_seconds_count") == 1
    assert ok.value("rpbot_generation_seconds_sum") > 0

    w.engine.fail_next()  # an engine error: the user gets a notice, the metric a failure
    await emulator.user_message(w.channel, w.alice, "Seraphina, again?")
    notice = await emulator.wait_for_webhook_message(w.channel, lambda msg: "could not answer" in msg.content)
    assert "Try again" in str(notice.components)
    failed = await scrape(http, port)
    assert failed.value("rpbot_replies_total", outcome="failed") == 1
    assert failed.value("rpbot_replies_total", outcome="ok") == 1
    assert failed.value("rpbot_generation_seconds_count") == 1  # only finished replies are timed
