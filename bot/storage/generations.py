"""Generation records: who asked, what came out, the swipes kept, how long it took."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.storage.models import Generation, GenerationStatus, utcnow

RECENT_SCAN = 1000


async def create_generation(session: AsyncSession, **fields: Any) -> Generation:
    gen = Generation(**fields)
    session.add(gen)
    await session.flush()
    return gen


async def record_new_reply(
    session: AsyncSession,
    generation_id: int,
    message_ids: Sequence[int],
    *,
    via_webhook: bool,
    add_completion_tokens: int = 0,
    **fields: Any,
) -> None:
    """Write a just-posted reply's outcome and message ids in one UPDATE, without reading the row first (a new
    reply's row has no messages yet, and every field is given here)."""
    values: dict[str, Any] = {
        **fields,
        "reply_message_ids": list(message_ids),
        "reply_message_id": message_ids[0] if message_ids else None,
        "sampler": {**(fields.get("sampler") or {}), "via_webhook": via_webhook},
    }
    if add_completion_tokens:
        values["completion_tokens"] = func.coalesce(Generation.completion_tokens, 0) + add_completion_tokens
    await session.execute(update(Generation).where(Generation.id == generation_id).values(**values))


async def get_generation(session: AsyncSession, generation_id: int) -> Generation | None:
    return await session.get(Generation, generation_id)


async def by_reply_message(session: AsyncSession, message_id: int) -> Generation | None:
    """The generation that produced a Discord message (any part of a split reply)."""
    gen = (await session.scalars(select(Generation).where(Generation.reply_message_id == message_id))).first()
    if gen is not None:
        return gen
    # Later parts of a split reply live only in the JSON id list: search the recent generations.
    recent = (await session.scalars(select(Generation).order_by(Generation.id.desc()).limit(RECENT_SCAN))).all()
    return next((g for g in recent if message_id in (g.reply_message_ids or [])), None)


async def latest_in_channel(session: AsyncSession, channel_id: int) -> Generation | None:
    stmt = select(Generation).where(Generation.channel_id == channel_id).order_by(Generation.id.desc()).limit(1)
    return (await session.scalars(stmt)).first()


async def previous_reply(session: AsyncSession, channel_id: int, before_id: int) -> Generation | None:
    """The newest generation before ``before_id`` in the channel that still has messages posted."""
    stmt = (
        select(Generation)
        .where(Generation.channel_id == channel_id, Generation.id < before_id, Generation.reply_message_id.is_not(None))
        .order_by(Generation.id.desc())
        .limit(1)
    )
    return (await session.scalars(stmt)).first()


async def unfinished(session: AsyncSession) -> Sequence[Generation]:
    stmt = select(Generation).where(Generation.status.in_([GenerationStatus.QUEUED, GenerationStatus.RUNNING]))
    return (await session.scalars(stmt)).all()


async def fail_unfinished(
    session: AsyncSession,
    reason: str = "interrupted by a restart",
    *,
    guilds: Callable[[int | None], bool] | None = None,
) -> int:
    """Mark replies left running by a crash as failed, so nothing is left dangling.

    ``guilds`` limits it to the guilds this process serves: with several processes (shards) on one database, the
    others' replies are still running.
    """
    is_unfinished = Generation.status.in_([GenerationStatus.QUEUED, GenerationStatus.RUNNING])
    stmt = update(Generation).where(is_unfinished)
    if guilds is not None:
        rows = (await session.execute(select(Generation.id, Generation.guild_id).where(is_unfinished))).all()
        ids = [gen_id for gen_id, guild_id in rows if guilds(guild_id)]
        if not ids:
            return 0
        stmt = stmt.where(Generation.id.in_(ids))
    result = await session.execute(stmt.values(status=GenerationStatus.FAILED, error=reason, finished_at=utcnow()))
    return int(result.rowcount)  # type: ignore[attr-defined]
