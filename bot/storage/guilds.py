"""Guild-wide settings."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from bot.storage.models import GuildSettings


async def get_guild(session: AsyncSession, guild_id: int) -> GuildSettings:
    """The guild's settings, created with defaults on first use."""
    row = await session.get(GuildSettings, guild_id)
    if row is None:
        row = GuildSettings(guild_id=guild_id)
        session.add(row)
        await session.flush()
    return row


async def update_guild(session: AsyncSession, guild_id: int, **values: Any) -> GuildSettings:
    row = await get_guild(session, guild_id)
    for key, value in values.items():
        if not hasattr(GuildSettings, key):
            raise AttributeError(f"guild settings have no field {key!r}")
        setattr(row, key, value)
    await session.flush()
    return row
