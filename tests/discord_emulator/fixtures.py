"""pytest fixtures: ``emulator``, ``run_bot`` and the ERROR-log guard. Registered in tests/conftest.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import discord
import pytest

from bot.client import RPBot
from bot.config import Settings
from bot.generation.base import Engine
from bot.storage import Database
from bot.storage.migrate import upgrade_async
from tests.discord_emulator.emulator import DiscordEmulator

GUARDED_LOGGERS = ("bot", "cogs", "discord")
COMMANDS_PATH = r"/applications/\d+/(guilds/\d+/)?commands"


class ErrorLogGuard(logging.Handler):
    """Collects ERROR (and worse) records from the bot's loggers; the test fails if any were not allowed.

    discord.py catches exceptions in event handlers and only logs them, so without this a crashed handler passes.
    """

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []
        self._allowed: list[re.Pattern[str]] = []

    def allow(self, pattern: str) -> None:
        """Tolerate ERROR records whose message matches ``pattern`` (a regex, searched) in this test."""
        self._allowed.append(re.compile(pattern))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def unexpected(self) -> list[logging.LogRecord]:
        return [r for r in self.records if not any(p.search(r.getMessage()) for p in self._allowed)]

    @staticmethod
    def render(record: logging.LogRecord) -> str:
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            text += f"\n    {type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        return text


@pytest.fixture(autouse=True)
def error_log_guard(request: pytest.FixtureRequest) -> Iterator[ErrorLogGuard | None]:
    """Active in every test that uses the emulator: fails it on ERROR records from bot, cogs or discord.

    Request it by name to ``allow()`` expected errors.
    """
    if "emulator" not in request.fixturenames:
        yield None
        return
    guard = ErrorLogGuard()
    loggers = [logging.getLogger(name) for name in GUARDED_LOGGERS]
    for logger in loggers:
        logger.addHandler(guard)
    try:
        yield guard
    finally:
        for logger in loggers:
            logger.removeHandler(guard)
    bad = guard.unexpected()
    if bad:
        pytest.fail("ERROR log records during the test:\n" + "\n".join(guard.render(r) for r in bad), pytrace=False)


@pytest.fixture
async def emulator() -> AsyncIterator[DiscordEmulator]:
    """A started emulator, stopped after the test; the test fails if the emulator itself hit a bug."""
    emu = DiscordEmulator()
    await emu.start()
    try:
        yield emu
    finally:
        await emu.stop()
    if emu.internal_errors:
        pytest.fail("the Discord emulator reported problems:\n" + "\n".join(emu.internal_errors), pytrace=False)


def emulator_settings(emu: DiscordEmulator, database_url: str, **overrides: Any) -> Settings:
    """Settings pointing the bot at ``emu`` (no .env is read)."""
    values: dict[str, Any] = {
        "discord_token": emu.token,
        "database_url": database_url,
        "discord_api_url": emu.api_url,
        "discord_gateway_url": emu.gateway_url,
        "engine": "openai",
        "openai_base_url": "http://127.0.0.1:9/v1",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


class BotRunner:
    """Starts ``RPBot`` instances against the emulator and one migrated SQLite database; stops them at teardown.

    Call it again after ``stop()`` for a restarted bot on the same database and emulator.
    """

    def __init__(self, emu: DiscordEmulator, tmp_path: Path) -> None:
        self.emu = emu
        self.database_url = f"sqlite+aiosqlite:///{tmp_path / 'rpbot.sqlite3'}"
        self._migrated = False
        self._running: dict[RPBot, asyncio.Task[None]] = {}

    async def __call__(
        self,
        *,
        engine: Engine | None = None,
        start_generation: bool = False,
        extensions: tuple[str, ...] = (),
        setup: Callable[[RPBot], Awaitable[None]] | None = None,
        settings: dict[str, Any] | None = None,
        expect_sync: bool = True,
        ready_timeout: float = 15.0,
        **options: Any,
    ) -> RPBot:
        """Start a bot and return it once READY (all GUILD_CREATEs handled) and its commands are synced.

        ``setup(bot)`` runs inside setup_hook before the extensions load and the command sync: add test cogs and
        dynamic items there so their commands are part of the sync. ``settings`` overrides Settings fields;
        ``options`` go to RPBot (and on to discord.py).
        """
        if not self._migrated:
            await upgrade_async(self.database_url)
            self._migrated = True
        config = emulator_settings(self.emu, self.database_url, **(settings or {}))
        options.setdefault("guild_ready_timeout", 0.05)
        bot = RPBot(
            config,
            Database(self.database_url),
            engine=engine,
            extensions=extensions,
            identify_delay=0,
            start_generation=start_generation,
            **options,
        )
        if setup is not None:
            original_hook = bot.setup_hook

            async def setup_hook() -> None:
                await setup(bot)
                await original_hook()

            bot.setup_hook = setup_hook  # type: ignore[method-assign]
        started = asyncio.get_running_loop().time()
        await bot.login(config.require_token())
        task = asyncio.create_task(bot.connect(), name="rpbot-connect")
        self._running[bot] = task
        ready = asyncio.create_task(bot.wait_until_ready())
        done, _ = await asyncio.wait({ready, task}, timeout=ready_timeout, return_when=asyncio.FIRST_COMPLETED)
        if ready not in done:
            ready.cancel()
            if task in done and task.exception() is not None:
                raise RuntimeError(f"the bot stopped before it was ready: {task.exception()!r}")
            raise TimeoutError(f"the bot was not ready after {ready_timeout}s\n{self.emu.describe()}")
        # READY fires guild_ready_timeout after the last GUILD_CREATE; on a busy machine a guild may come later.
        count = bot.shard_count or 1
        shards = set(bot.shard_ids or range(count))
        expected = [g.id for g in self.emu.guilds.values() if (g.id >> 22) % count in shards]
        await self.emu.wait_until(
            lambda: all((g := bot.get_guild(gid)) is not None and not g.unavailable for gid in expected),
            "every guild to be available to the bot",
            ready_timeout,
        )
        if expect_sync:
            await self.emu.wait_for_request("PUT", COMMANDS_PATH, since=started, timeout=ready_timeout)
        return bot

    async def stop(self, bot: RPBot) -> None:
        """Close the bot (drains cogs, closes the engine and database) and wait for its connection task."""
        task = self._running.pop(bot, None)
        await bot.close()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=15)

    async def stop_all(self) -> None:
        for bot in reversed(list(self._running)):
            await self.stop(bot)


@pytest.fixture
async def run_bot(emulator: DiscordEmulator, tmp_path: Path) -> AsyncIterator[BotRunner]:
    """``bot = await run_bot(...)`` starts an RPBot against ``emulator``; ``await run_bot.stop(bot)`` stops it.

    Every bot still running is stopped at teardown; discord.py's global API/gateway URLs are restored.
    """
    saved = (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)
    runner = BotRunner(emulator, tmp_path)
    try:
        yield runner
    finally:
        await runner.stop_all()
        discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = saved
