"""Shared fixtures for cog tests: a guild with the usual cast, a ScriptedEngine, and the bot with every cog loaded.

Kept generic on purpose (several cog test modules use them): ``world`` builds the guild, ``scripted_engine`` is a
fresh engine per test, ``chat_bot`` starts RPBot with all of ``bot.client.EXTENSIONS`` and generation running.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from bot.client import EXTENSIONS, RPBot
from bot.storage import channels as channel_repo
from bot.storage import personas as persona_repo
from bot.storage.models import Persona
from tests.discord_emulator import DiscordEmulator
from tests.discord_emulator import models as m
from tests.discord_emulator.fixtures import BotRunner
from tests.support.scripted_engine import ScriptedEngine

CHAT_EXTENSIONS = EXTENSIONS
# The fastest streaming Settings allow, so replies are edited while they stream.
FAST_STREAM = {"stream_edit_interval": 0.2}


@dataclass(slots=True)
class World:
    """One guild: a plain channel, an age-restricted one, and members with different powers."""

    guild: m.Guild
    general: m.Channel  # not age-restricted
    nsfw: m.Channel  # age-restricted
    admin: m.Member  # Manage Server
    mod: m.Member  # Manage Messages only
    member: m.Member  # nothing beyond @everyone


@pytest.fixture
async def world(emulator: DiscordEmulator) -> World:
    guild = await emulator.create_guild("Tavern", channels=("general",))
    nsfw = await emulator.create_channel(guild, "after-dark", nsfw=True)
    admin = await emulator.add_member(guild, "ada", nick="Ada", permissions=m.MANAGE_GUILD)
    mod = await emulator.add_member(guild, "moe", nick="Moe", permissions=m.MANAGE_MESSAGES)
    member = await emulator.add_member(guild, "nell", nick="Nell")
    return World(guild, guild.channel("general"), nsfw, admin, mod, member)


@pytest.fixture
def scripted_engine() -> ScriptedEngine:
    return ScriptedEngine("Hello there, traveller.")


@pytest.fixture
async def chat_bot(run_bot: BotRunner, world: World, scripted_engine: ScriptedEngine) -> RPBot:
    """RPBot with every extension, the ScriptedEngine and a running generation queue."""
    return await run_bot(
        engine=scripted_engine, start_generation=True, extensions=CHAT_EXTENSIONS, settings=FAST_STREAM
    )


async def activate_persona(
    bot: RPBot, channel: m.Channel, name: str = "Aria", *, guild_id: int | None = None, **fields: Any
) -> Persona:
    """Create a persona in the channel's guild and make it the channel's active persona (storage layer, no greeting)."""
    gid = guild_id if guild_id is not None else channel.guild_id
    assert gid is not None
    fields.setdefault("description", f"{name} is a friendly innkeeper.")
    async with bot.db.session() as session:
        persona = await persona_repo.find_persona(session, gid, name)
        if persona is None:
            persona = await persona_repo.create_persona(session, gid, name, **fields)
        await channel_repo.set_active_persona(session, gid, channel.id, persona.id)
    chat = bot.get_cog("ChatCog")
    if chat is not None:
        chat.invalidate_channel(channel.id)  # type: ignore[attr-defined]
    return persona
