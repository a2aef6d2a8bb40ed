"""The Discord client: an AutoShardedBot that owns the database, the engine and the generation queue."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import TYPE_CHECKING, Any

import discord
import yarl
from discord.ext import commands

from bot.config import Settings
from bot.ops.metrics import BotMetrics
from bot.storage import Database

if TYPE_CHECKING:
    from bot.generation.base import Engine
    from bot.generation.queue import GenerationQueue

log = logging.getLogger(__name__)

# Extensions loaded at start-up, in order. A cog that fails to load is logged and skipped.
EXTENSIONS: tuple[str, ...] = (
    "cogs.errors",
    "cogs.chat",
    "cogs.personas",
    "cogs.chat_settings",
    "cogs.admin",
    "cogs.health",
)

_default_gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY


def apply_discord_urls(settings: Settings) -> None:
    """Point discord.py at the configured REST and gateway URLs (proxies, or the test emulator)."""
    api = settings.discord_api_url.rstrip("/")
    if not api.endswith(("/v10", "/v9")):
        api += "/v10"
    discord.http.Route.BASE = api
    if settings.discord_gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)
    else:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = _default_gateway


def bot_intents() -> discord.Intents:
    intents = discord.Intents.none()
    intents.guilds = True
    intents.guild_messages = True
    intents.message_content = True  # personas read what people say
    intents.dm_messages = True
    intents.members = False  # display names arrive with each message; no member cache needed
    intents.webhooks = True
    return intents


class RPBot(commands.AutoShardedBot):
    """rpbot's Discord client. Core services hang off it so cogs can reach them."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        *,
        engine: Engine | None = None,
        extensions: tuple[str, ...] = EXTENSIONS,
        identify_delay: float = 5.0,
        start_generation: bool = True,
        freeze_gc: bool = False,
        **options: Any,
    ) -> None:
        apply_discord_urls(settings)
        kwargs: dict[str, Any] = {}
        # Edits and deletes arrive as raw events and the message store is ours: discord.py's cache of the last
        # 1,000 messages would only cost a linear search per MESSAGE_UPDATE (every streamed edit is one).
        options.setdefault("max_messages", None)
        if settings.shard_count is not None:
            kwargs["shard_count"] = settings.shard_count
        if settings.shard_ids is not None:
            kwargs["shard_ids"] = settings.shard_ids
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=bot_intents(),
            allowed_mentions=discord.AllowedMentions.none(),
            help_command=None,
            **kwargs,
            **options,
        )
        self.settings = settings
        self.db = db
        self.engine: Engine | None = engine
        self.queue: GenerationQueue | None = None
        self.extensions_to_load = extensions
        self.failed_extensions: dict[str, str] = {}
        self.identify_delay = identify_delay
        self.start_generation = start_generation
        self.shutting_down = asyncio.Event()
        self._shutdown: asyncio.Future[None] | None = None
        self.metrics = BotMetrics()
        self.freeze_gc = freeze_gc

    async def setup_hook(self) -> None:
        if self.start_generation:
            await self._start_generation()
        for name in self.extensions_to_load:
            try:
                await self.load_extension(name)
            except commands.ExtensionNotFound:
                log.debug("extension %s is not present", name)
            except Exception as exc:
                self.failed_extensions[name] = f"{type(exc).__name__}: {exc}"
                log.exception("could not load %s; the bot runs without it", name)
        try:
            synced = await self.tree.sync()
            log.info("synced %d application commands", len(synced))
        except discord.HTTPException as exc:
            log.warning("could not sync application commands: %s", exc)

    async def _start_generation(self) -> None:
        from bot.generation.queue import GenerationQueue

        if self.engine is None:
            from bot.generation.factory import build_engine

            self.engine = build_engine(self.settings)
        await self.engine.start()
        self.queue = GenerationQueue(
            self.engine,
            max_size=self.settings.queue_max_size,
            timeout=self.settings.request_timeout_seconds,
        )
        await self.queue.start()
        self.metrics.attach_queue(self.queue)

    async def on_ready(self) -> None:
        if self.freeze_gc:
            self.freeze_gc = False
            # What exists once the bot is up (modules, models, the engine, discord.py's state) lives as long as the
            # process: take it out of the cyclic garbage collector's full passes. Those scanned it all and paused
            # the event loop 150-200 ms on the benchmark machine (the slowest replies at 50 msg/s); they now scan
            # only what was made since. Only `rpbot run` asks for it: a test process starts many bots.
            gc.collect()
            gc.freeze()
            log.debug("froze %d objects out of the garbage collector's reach", gc.get_freeze_count())

    async def on_message(self, message: discord.Message, /) -> None:
        """rpbot has no prefix commands: the chat cog handles messages (this stops "@bot ..." being parsed)."""

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        # Discord allows one IDENTIFY per 5 s per bucket; tests and single-shard installs need no wait.
        if not initial and self.identify_delay > 0:
            await asyncio.sleep(self.identify_delay)

    async def close(self) -> None:
        """Shut down gracefully: stop triggers, let cogs drain, then close Discord, the queue, the engine and the DB.

        Every caller (a signal, discord.py itself, tests) waits for the same single shutdown, so nothing is closed
        twice and nobody returns while the store is still being written.
        """
        if self._shutdown is None:
            self._shutdown = asyncio.ensure_future(self._shut_down())
        await asyncio.shield(self._shutdown)

    async def _shut_down(self) -> None:
        self.shutting_down.set()
        log.info("shutting down")
        grace = self.settings.shutdown_grace_seconds
        for cog in list(self.cogs.values()):
            drain = getattr(cog, "drain", None)
            if drain is not None:
                try:
                    await drain(grace)
                except Exception:
                    log.exception("error while draining %s", type(cog).__name__)
        await super().close()
        if self.queue is not None:
            await self.queue.close()
        if self.engine is not None:
            try:
                await self.engine.close()
            except Exception:
                log.exception("error while closing the engine")
        await self.db.close()
        log.info("shut down cleanly")
