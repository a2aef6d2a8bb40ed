"""Moderation state: blocked users, output filters, and the audit log."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.storage.models import AuditEntry, BlockedUser, OutputFilter

# Audit actions of deletion requests; forget_requests() reads them back, so keep the names stable.
FORGET_ME = "forget-me"  # a user, about themselves, everywhere
ADMIN_FORGET = "admin.forget"  # an admin, about a user, in one guild


async def block_user(session: AsyncSession, guild_id: int, user_id: int, by: int | None, reason: str = "") -> bool:
    """Block a user; False when already blocked."""
    if await session.get(BlockedUser, (guild_id, user_id)) is not None:
        return False
    session.add(BlockedUser(guild_id=guild_id, user_id=user_id, blocked_by=by, reason=reason[:500]))
    await session.flush()
    return True


async def unblock_user(session: AsyncSession, guild_id: int, user_id: int) -> bool:
    result = await session.execute(
        delete(BlockedUser).where(BlockedUser.guild_id == guild_id, BlockedUser.user_id == user_id)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def is_blocked(session: AsyncSession, guild_id: int, user_id: int) -> bool:
    return await session.get(BlockedUser, (guild_id, user_id)) is not None


async def blocked_users(session: AsyncSession, guild_id: int) -> Sequence[BlockedUser]:
    stmt = select(BlockedUser).where(BlockedUser.guild_id == guild_id).order_by(BlockedUser.created_at)
    return (await session.scalars(stmt)).all()


async def add_filter(
    session: AsyncSession, guild_id: int, pattern: str, *, is_regex: bool, by: int | None
) -> OutputFilter | None:
    """Add an output filter; None when the same pattern exists."""
    existing = await session.scalar(
        select(OutputFilter).where(OutputFilter.guild_id == guild_id, OutputFilter.pattern == pattern)
    )
    if existing is not None:
        return None
    row = OutputFilter(guild_id=guild_id, pattern=pattern, is_regex=is_regex, created_by=by)
    session.add(row)
    await session.flush()
    return row


async def remove_filter(session: AsyncSession, guild_id: int, pattern: str) -> bool:
    result = await session.execute(
        delete(OutputFilter).where(OutputFilter.guild_id == guild_id, OutputFilter.pattern == pattern)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def list_filters(session: AsyncSession, guild_id: int) -> Sequence[OutputFilter]:
    stmt = select(OutputFilter).where(OutputFilter.guild_id == guild_id).order_by(OutputFilter.id)
    return (await session.scalars(stmt)).all()


async def audit(
    session: AsyncSession,
    guild_id: int | None,
    actor_id: int | None,
    action: str,
    target: str = "",
    **details: Any,
) -> AuditEntry:
    entry = AuditEntry(guild_id=guild_id, actor_id=actor_id, action=action[:60], target=target[:200], details=details)
    session.add(entry)
    await session.flush()
    return entry


async def recent_audit(session: AsyncSession, guild_id: int, limit: int = 20) -> Sequence[AuditEntry]:
    stmt = select(AuditEntry).where(AuditEntry.guild_id == guild_id).order_by(AuditEntry.id.desc()).limit(limit)
    return (await session.scalars(stmt)).all()


async def forget_requests(session: AsyncSession, guild_id: int, user_ids: Collection[int]) -> dict[int, datetime]:
    """When each of ``user_ids`` last asked to be forgotten in this guild (/forget-me anywhere, or /admin forget
    here). The audit log records every such request, so it is the record to honour: messages older than it must
    not be stored again (e.g. by a backfill from Discord's history)."""
    if not user_ids:
        return {}
    targets = {f"user {uid}": uid for uid in user_ids}
    stmt = (
        select(AuditEntry.target, func.max(AuditEntry.created_at))
        .where(
            AuditEntry.target.in_(list(targets)),
            or_(
                AuditEntry.action == FORGET_ME,
                and_(AuditEntry.action == ADMIN_FORGET, AuditEntry.guild_id == guild_id),
            ),
        )
        .group_by(AuditEntry.target)
    )
    result: dict[int, datetime] = {}
    for target, when in (await session.execute(stmt)).all():
        result[targets[target]] = when if when.tzinfo else when.replace(tzinfo=UTC)  # SQLite drops the zone
    return result
