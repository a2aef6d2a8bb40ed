"""Guild-wide settings."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from bot.storage.models import GuildSettings
from bot.storage.upsert import insert_ignoring_conflicts


async def get_guild(session: AsyncSession, guild_id: int) -> GuildSettings:
    """The guild's settings, created with defaults on first use (safe when two tasks ask at once)."""
    row = await session.get(GuildSettings, guild_id)
    if row is None:
        await session.execute(insert_ignoring_conflicts(session, GuildSettings, {"guild_id": guild_id}))
        row = await session.get(GuildSettings, guild_id, populate_existing=True)
        assert row is not None
    return row


async def find_guild(session: AsyncSession, guild_id: int) -> GuildSettings | None:
    """The guild's settings if it has a row (a read only: no write while the database is busy)."""
    return await session.get(GuildSettings, guild_id)


async def update_guild(session: AsyncSession, guild_id: int, **values: Any) -> GuildSettings:
    row = await get_guild(session, guild_id)
    for key, value in values.items():
        if not hasattr(GuildSettings, key):
            raise AttributeError(f"guild settings have no field {key!r}")
        setattr(row, key, value)
    await session.flush()
    return row
