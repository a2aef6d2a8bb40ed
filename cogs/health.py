"""Serves Prometheus metrics and /healthz when RPBOT_METRICS_PORT is set."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING

from discord.ext import commands

from bot.ops.metrics import MetricsServer
from bot.storage import DatabaseError

if TYPE_CHECKING:
    from bot.client import RPBot

log = logging.getLogger(__name__)

# A health probe must answer before the orchestrator's own timeout (docker-compose.yml: 5 s).
DATABASE_PING_TIMEOUT = 3.0


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
        for shard_id, shard in self.bot.shards.items():
            label = str(shard_id)
            metrics.discord_connected.labels(shard=label).set(0 if shard.is_closed() else 1)
            latency = shard.latency
            if math.isfinite(latency):  # NaN/inf before the first heartbeat
                metrics.discord_latency.labels(shard=label).set(latency)
        metrics.engine_up.set(1 if self._engine_problem() is None else 0)

    def _discord_problem(self) -> str | None:
        if self.bot.is_closed() or self.bot.shutting_down.is_set():
            return "shutting down"
        if not self.bot.is_ready():
            return "not connected to Discord yet"
        closed = sorted(shard_id for shard_id, shard in self.bot.shards.items() if shard.is_closed())
        if closed:
            return f"not connected to Discord: shard {', '.join(map(str, closed))} disconnected"
        return None

    def _engine_problem(self) -> str | None:
        queue = self.bot.queue
        if self.bot.engine is None or queue is None:
            return "the engine is not started"
        if queue.closed:
            return "the generation queue is closed"
        if queue.restarting or self.bot.engine.broken:
            return "the engine is restarting after a failure"
        return None

    async def _database_problem(self) -> str | None:
        try:
            async with asyncio.timeout(DATABASE_PING_TIMEOUT):
                await self.bot.db.ping()
        except DatabaseError as exc:
            return str(exc)
        except TimeoutError:
            return f"the database did not answer within {DATABASE_PING_TIMEOUT:g}s"
        return None

    async def problems(self) -> list[str]:
        """Why the bot is not healthy; empty when it is connected, its database answers and its engine is ready."""
        found = [self._discord_problem(), await self._database_problem(), self._engine_problem()]
        return [problem for problem in found if problem is not None]


async def setup(bot: RPBot) -> None:
    await bot.add_cog(HealthCog(bot))
