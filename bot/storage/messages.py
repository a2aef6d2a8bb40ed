"""The message store: what was said in channels with an active persona, kept in sync with Discord."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bot.storage.models import MessageKind, Persona, StoredMessage, utcnow
from bot.storage.upsert import dialect_insert


@dataclass(slots=True)
class MessageRecord:
    """A message as the store receives it (built by the Discord layer, or by tests)."""

    id: int
    guild_id: int
    channel_id: int
    author_id: int
    author_name: str
    kind: MessageKind
    content: str
    created_at: datetime
    parent_channel_id: int | None = None
    persona_id: int | None = None
    attachments: list[dict[str, Any]] = field(default_factory=list)
    reply_to_id: int | None = None
    edited_at: datetime | None = None


async def save_messages(session: AsyncSession, records: Sequence[MessageRecord]) -> None:
    """Insert or update messages by id (idempotent: a backfill may see messages already stored)."""
    if not records:
        return
    # A persona deleted while its reply was on the way to the store: keep the messages without the link (what
    # ON DELETE SET NULL would have left), rather than fail the foreign key and lose the whole batch.
    wanted = {r.persona_id for r in records if r.persona_id is not None}
    personas = set((await session.scalars(select(Persona.id).where(Persona.id.in_(wanted)))).all()) if wanted else set()
    rows = [
        {
            "id": r.id,
            "guild_id": r.guild_id,
            "channel_id": r.channel_id,
            "parent_channel_id": r.parent_channel_id,
            "author_id": r.author_id,
            "author_name": r.author_name[:100],
            "kind": r.kind,
            "persona_id": r.persona_id if r.persona_id in personas else None,
            "content": r.content,
            "attachments": r.attachments,
            "reply_to_id": r.reply_to_id,
            "created_at": r.created_at,
            "edited_at": r.edited_at,
        }
        for r in records
    ]
    # One statement per dialect, run with the rows as parameters: SQLAlchemy compiles it once. Rendering the rows
    # into a multi-row VALUES built and compiled a new statement for every batch (two thirds of a batch's cost).
    await session.execute(_upsert_statement(session), rows)


_UPSERTS: dict[str, Any] = {}


def _upsert_statement(session: AsyncSession) -> Any:
    dialect = session.get_bind().dialect.name
    stmt = _UPSERTS.get(dialect)
    if stmt is None:
        # On the table, not the ORM class: an ORM bulk insert would quietly put a column default in place of an
        # explicit NULL, where the database must refuse it.
        insert = dialect_insert(session, StoredMessage.__table__)
        stmt = _UPSERTS[dialect] = insert.on_conflict_do_update(
            index_elements=[StoredMessage.__table__.c.id],
            set_={
                "content": insert.excluded.content,
                "attachments": insert.excluded.attachments,
                "author_name": insert.excluded.author_name,
                "edited_at": insert.excluded.edited_at,
                "persona_id": insert.excluded.persona_id,
            },
        )
    return stmt


async def save_message(session: AsyncSession, record: MessageRecord) -> None:
    await save_messages(session, [record])


async def edit_message(session: AsyncSession, message_id: int, content: str, edited_at: datetime | None = None) -> bool:
    """Apply an edit; False when the message is not stored."""
    result = await session.execute(
        update(StoredMessage)
        .where(StoredMessage.id == message_id)
        .values(content=content, edited_at=edited_at or utcnow())
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def delete_messages(session: AsyncSession, message_ids: Sequence[int]) -> int:
    if not message_ids:
        return 0
    result = await session.execute(delete(StoredMessage).where(StoredMessage.id.in_(list(message_ids))))
    return int(result.rowcount)  # type: ignore[attr-defined]


async def get_message(session: AsyncSession, message_id: int) -> StoredMessage | None:
    return await session.get(StoredMessage, message_id)


async def latest_messages(
    session: AsyncSession,
    channel_id: int,
    *,
    limit: int = 200,
    after_id: int | None = None,
    before_id: int | None = None,
) -> list[StoredMessage]:
    """The newest ``limit`` messages of a channel (or thread), oldest first, after the scene start."""
    stmt = select(StoredMessage).where(StoredMessage.channel_id == channel_id)
    if after_id is not None:
        stmt = stmt.where(StoredMessage.id > after_id)
    if before_id is not None:
        stmt = stmt.where(StoredMessage.id < before_id)
    stmt = stmt.order_by(StoredMessage.id.desc()).limit(limit)
    rows = list((await session.scalars(stmt)).all())
    rows.reverse()
    return rows


_HISTORY_COLUMNS = (
    StoredMessage.id,
    StoredMessage.author_id,
    StoredMessage.author_name,
    StoredMessage.kind,
    StoredMessage.persona_id,
    StoredMessage.content,
    StoredMessage.attachments,
    StoredMessage.created_at,
    StoredMessage.edited_at,
)


async def history(
    session: AsyncSession,
    channel_id: int,
    *,
    limit: int = 200,
    after_id: int | None = None,
    before_id: int | None = None,
) -> list[Any]:
    """Like :func:`latest_messages`, but light read-only rows (what the prompt builder reads), several times
    cheaper than ORM objects for the hundreds of messages a prompt looks at."""
    stmt = select(*_HISTORY_COLUMNS).where(StoredMessage.channel_id == channel_id)
    if after_id is not None:
        stmt = stmt.where(StoredMessage.id > after_id)
    if before_id is not None:
        stmt = stmt.where(StoredMessage.id < before_id)
    rows = list((await session.execute(stmt.order_by(StoredMessage.id.desc()).limit(limit))).all())
    rows.reverse()
    return rows


async def existing_ids(session: AsyncSession, message_ids: Sequence[int]) -> set[int]:
    """Which of ``message_ids`` are stored."""
    if not message_ids:
        return set()
    stmt = select(StoredMessage.id).where(StoredMessage.id.in_(list(message_ids)))
    return set((await session.scalars(stmt)).all())


async def newest_message_id(session: AsyncSession, channel_id: int) -> int | None:
    stmt = select(func.max(StoredMessage.id)).where(StoredMessage.channel_id == channel_id)
    value = await session.scalar(stmt)
    return int(value) if value is not None else None


async def forget_user(session: AsyncSession, user_id: int, guild_id: int | None = None) -> int:
    """Delete a user's stored messages, in one guild or everywhere. Returns how many were deleted."""
    stmt = delete(StoredMessage).where(StoredMessage.author_id == user_id)
    if guild_id is not None:
        stmt = stmt.where(StoredMessage.guild_id == guild_id)
    result = await session.execute(stmt)
    return int(result.rowcount)  # type: ignore[attr-defined]


async def purge_older_than(session: AsyncSession, cutoff: datetime) -> int:
    result = await session.execute(delete(StoredMessage).where(StoredMessage.created_at < cutoff))
    return int(result.rowcount)  # type: ignore[attr-defined]
