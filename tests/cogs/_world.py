"""A small Discord world for chat tests: a guild with an age-restricted channel, people, and an active persona."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from bot.client import EXTENSIONS
from bot.storage import channels as channel_repo
from bot.storage import personas as persona_repo
from tests.discord_emulator import DiscordEmulator
from tests.discord_emulator import models as m
from tests.support.scripted_engine import ScriptedEngine


async def eventually(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 5.0) -> Any:
    """Poll an async condition (e.g. a database query) until it is truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class World:
    emu: DiscordEmulator
    bot: Any
    engine: ScriptedEngine
    guild: Any
    channel: Any
    alice: Any
    bob: Any
    mod: Any
    persona_id: int


async def make_world(
    emulator: DiscordEmulator,
    run_bot: Any,
    *,
    replies: Any = "Hello there.",
    persona: dict[str, Any] | None = None,
    reply_mode: str = "mention",
    engine: ScriptedEngine | None = None,
    settings: dict[str, Any] | None = None,
    nsfw: bool = True,
) -> World:
    guild = await emulator.create_guild("Tavern", channels=())
    channel = await emulator.create_channel(guild, "roleplay", nsfw=nsfw)
    alice = await emulator.add_member(guild, "alice", nick="Alice")
    bob = await emulator.add_member(guild, "bob", nick="Bob")
    mod = await emulator.add_member(
        guild, "mod", nick="Mod", permissions=m.MANAGE_GUILD | m.MANAGE_CHANNELS | m.MANAGE_MESSAGES
    )
    engine = engine or ScriptedEngine(replies=replies)
    bot = await run_bot(
        engine=engine,
        start_generation=True,
        extensions=tuple(e for e in EXTENSIONS if e != "cogs.personas"),
        settings={"stream_edit_interval": 0.2, **(settings or {})},
    )
    fields = {"description": "A kind guardian of the forest.", "greeting": "Welcome, traveller.", **(persona or {})}
    name = fields.pop("name", "Seraphina")
    async with bot.db.session() as session:
        row = await persona_repo.create_persona(session, guild.id, name, **fields)
        await channel_repo.set_active_persona(session, guild.id, channel.id, row.id)
        if reply_mode != "mention":
            from bot.storage.models import ReplyMode

            await channel_repo.update_channel(session, guild.id, channel.id, reply_mode=ReplyMode(reply_mode))
    return World(emulator, bot, engine, guild, channel, alice, bob, mod, row.id)
