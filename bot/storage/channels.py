"""Per-channel chat settings: which persona is active, how it replies, where the scene starts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.storage.models import ChannelSettings, Persona, ReplyMode, utcnow
from bot.storage.upsert import insert_ignoring_conflicts


async def get_channel(session: AsyncSession, channel_id: int) -> ChannelSettings | None:
    return await session.get(ChannelSettings, channel_id)


async def ensure_channel(session: AsyncSession, guild_id: int, channel_id: int) -> ChannelSettings:
    row = await session.get(ChannelSettings, channel_id)
    if row is None:
        values = {"channel_id": channel_id, "guild_id": guild_id, "reply_mode": ReplyMode.MENTION}
        await session.execute(insert_ignoring_conflicts(session, ChannelSettings, values))
        row = await session.get(ChannelSettings, channel_id, populate_existing=True)
        assert row is not None
    return row


async def active_persona(session: AsyncSession, channel_id: int) -> tuple[ChannelSettings, Persona] | None:
    """The channel's settings and active persona, or None when no persona is active there."""
    row = await session.get(ChannelSettings, channel_id)
    if row is None or row.persona_id is None:
        return None
    persona = await session.get(Persona, row.persona_id)
    if persona is None:
        return None
    return row, persona


async def effective_persona(
    session: AsyncSession, channel_id: int, parent_id: int | None = None
) -> tuple[ChannelSettings, Persona] | None:
    """The persona that speaks in a channel or thread, with the settings it uses: the thread's own, else (unless it
    was switched off in the thread) its parent channel's."""
    own = await active_persona(session, channel_id)
    if own is not None or parent_id is None:
        return own
    row = await session.get(ChannelSettings, channel_id)
    if row is not None and row.persona_off:
        return None
    return await active_persona(session, parent_id)


async def switch_off(session: AsyncSession, guild_id: int, channel_id: int, *, thread: bool) -> None:
    """No persona here any more; in a thread, not the parent channel's either."""
    row = await set_active_persona(session, guild_id, channel_id, None)
    row.persona_off = thread
    await session.flush()


async def set_active_persona(
    session: AsyncSession, guild_id: int, channel_id: int, persona_id: int | None, *, scene_start: int | None = None
) -> ChannelSettings:
    """Switch the channel's persona; a switch starts a new scene (older messages leave the prompt)."""
    row = await ensure_channel(session, guild_id, channel_id)
    if persona_id is not None:
        row.persona_off = False
    if row.persona_id != persona_id:
        row.persona_id = persona_id
        row.greeting_index = 0
        start_scene(row, scene_start)
    await session.flush()
    return row


def start_scene(row: ChannelSettings, last_message_id: int | None, when: datetime | None = None) -> None:
    row.scene_start_message_id = last_message_id
    row.scene_started_at = when or utcnow()


async def update_channel(session: AsyncSession, guild_id: int, channel_id: int, **values: Any) -> ChannelSettings:
    row = await ensure_channel(session, guild_id, channel_id)
    for key, value in values.items():
        if not hasattr(ChannelSettings, key):
            raise AttributeError(f"channel settings have no field {key!r}")
        setattr(row, key, value)
    await session.flush()
    return row


async def channels_with_persona(
    session: AsyncSession, guild_ids: Sequence[int] | None = None
) -> Sequence[ChannelSettings]:
    stmt = select(ChannelSettings).where(ChannelSettings.persona_id.is_not(None))
    if guild_ids is not None:
        stmt = stmt.where(ChannelSettings.guild_id.in_(list(guild_ids)))
    return (await session.scalars(stmt)).all()


async def channels_with_webhook(session: AsyncSession) -> Sequence[ChannelSettings]:
    return (await session.scalars(select(ChannelSettings).where(ChannelSettings.webhook_id.is_not(None)))).all()


async def forget_webhook_persona(session: AsyncSession, persona_id: int) -> None:
    """Webhooks that carry this persona's avatar must be given it again (it changed, or the id was freed)."""
    await session.execute(
        update(ChannelSettings).where(ChannelSettings.webhook_persona_id == persona_id).values(webhook_persona_id=None)
    )
