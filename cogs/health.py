"""Serves Prometheus metrics and /healthz when RPBOT_METRICS_PORT is set."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from discord.ext import commands

from bot.ops.metrics import MetricsServer
from bot.storage import DatabaseError

if TYPE_CHECKING:
    from bot.client import RPBot

log = logging.getLogger(__name__)


class HealthCog(commands.Cog):
    def __init__(self, bot: RPBot) -> None:
        self.bot = bot
        self.server = MetricsServer(bot.metrics, self.problems, before_scrape=self._refresh)

    async def cog_load(self) -> None:
        port = self.bot.settings.metrics_port
        if port:
            await self.server.start(self.bot.settings.metrics_host, port)

    async def cog_unload(self) -> None:
        await self.server.stop()

    def _refresh(self) -> None:
        metrics = self.bot.metrics
        connected = self.bot.is_ready() and not self.bot.is_closed()
        metrics.discord_connected.set(1 if connected else 0)
        latency = self.bot.latency
        if latency == latency and latency != float("inf"):  # NaN/inf before the first heartbeat
            metrics.discord_latency.set(latency)
        metrics.engine_up.set(1 if self._engine_problem() is None else 0)

    def _engine_problem(self) -> str | None:
        queue = self.bot.queue
        if self.bot.engine is None or queue is None:
            return "the engine is not started"
        if queue.closed:
            return "the generation queue is closed"
        if queue.restarting or self.bot.engine.broken:
            return "the engine is restarting after a failure"
        return None

    async def problems(self) -> list[str]:
        problems: list[str] = []
        if self.bot.is_closed() or self.bot.shutting_down.is_set():
            problems.append("shutting down")
        elif not self.bot.is_ready():
            problems.append("not connected to Discord")
        try:
            await self.bot.db.ping()
        except DatabaseError as exc:
            problems.append(str(exc))
        engine = self._engine_problem()
        if engine is not None:
            problems.append(engine)
        return problems


async def setup(bot: RPBot) -> None:
    await bot.add_cog(HealthCog(bot))
