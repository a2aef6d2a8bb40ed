"""The database schema: one typed ORM class per table.

Discord ids are 64-bit snowflakes (BigInteger). JSON columns hold lists and card data whose shape follows the
character-card spec; everything the bot filters or sorts on is a real column with an index.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Stable constraint names so migrations are identical on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

PERSONA_NAME_MAX = 80


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: DateTime(timezone=True),
        dict[str, Any]: JSON,
        list[Any]: JSON,
        list[str]: JSON,
        list[int]: JSON,
    }


class MessageKind(enum.StrEnum):
    HUMAN = "human"
    PERSONA = "persona"
    BOT = "bot"  # another bot or another application's webhook


class ReplyMode(enum.StrEnum):
    MENTION = "mention"
    ALWAYS = "always"


class GenerationStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class GuildSettings(Base):
    __tablename__ = "guild_settings"

    guild_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    nsfw_only: Mapped[bool] = mapped_column(Boolean, default=True)
    persona_manager_role_id: Mapped[int | None] = mapped_column(BigInteger)
    ratelimit_count: Mapped[int] = mapped_column(Integer, default=6)
    ratelimit_seconds: Mapped[int] = mapped_column(Integer, default=60)
    webhook_notice_sent: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Persona(Base):
    __tablename__ = "personas"
    __table_args__ = (UniqueConstraint("guild_id", "name", name="uq_personas_guild_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    guild_id: Mapped[int] = mapped_column(BigInteger, index=True)
    name: Mapped[str] = mapped_column(String(PERSONA_NAME_MAX))
    nickname: Mapped[str | None] = mapped_column(String(PERSONA_NAME_MAX))
    description: Mapped[str] = mapped_column(Text, default="")
    personality: Mapped[str] = mapped_column(Text, default="")
    scenario: Mapped[str] = mapped_column(Text, default="")
    greeting: Mapped[str] = mapped_column(Text, default="")
    alternate_greetings: Mapped[list[str]] = mapped_column(default=list)
    example_dialogue: Mapped[str] = mapped_column(Text, default="")
    system_prompt: Mapped[str] = mapped_column(Text, default="")
    post_history_instructions: Mapped[str] = mapped_column(Text, default="")
    creator_notes: Mapped[str] = mapped_column(Text, default="")
    creator: Mapped[str] = mapped_column(String(200), default="")
    character_version: Mapped[str] = mapped_column(String(100), default="")
    tags: Mapped[list[str]] = mapped_column(default=list)
    nsfw: Mapped[bool] = mapped_column(Boolean, default=False)
    # The avatar is kept as bytes: Discord attachment URLs expire, so the webhook gets the image itself.
    avatar: Mapped[bytes | None] = mapped_column(LargeBinary)
    avatar_mime: Mapped[str | None] = mapped_column(String(50))
    avatar_url: Mapped[str | None] = mapped_column(String(1000))
    lorebook: Mapped[dict[str, Any] | None] = mapped_column()
    extensions: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Card fields rpbot does not use itself, kept so an export gives back what was imported.
    card_extra: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_by: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ChannelSettings(Base):
    __tablename__ = "channel_settings"

    channel_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    guild_id: Mapped[int] = mapped_column(BigInteger, index=True)
    persona_id: Mapped[int | None] = mapped_column(ForeignKey("personas.id", ondelete="SET NULL"), index=True)
    # A thread follows its parent channel's persona unless it has its own, or the persona was switched off in it.
    persona_off: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    reply_mode: Mapped[ReplyMode] = mapped_column(
        Enum(ReplyMode, native_enum=False, length=20, values_callable=lambda e: [m.value for m in e]),
        default=ReplyMode.MENTION,
    )
    sampler: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Messages up to this id belong to an earlier scene and stay out of the prompt.
    scene_start_message_id: Mapped[int | None] = mapped_column(BigInteger)
    scene_started_at: Mapped[datetime | None] = mapped_column()
    greeting_index: Mapped[int] = mapped_column(Integer, default=0)
    # Newest message id seen; on start-up anything after it is backfilled from Discord once.
    last_synced_message_id: Mapped[int | None] = mapped_column(BigInteger)
    webhook_id: Mapped[int | None] = mapped_column(BigInteger)
    webhook_token: Mapped[str | None] = mapped_column(String(200))
    webhook_persona_id: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class StoredMessage(Base):
    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_channel_latest", "channel_id", "id"),
        Index("ix_messages_guild_author", "guild_id", "author_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)  # Discord message id
    guild_id: Mapped[int] = mapped_column(BigInteger)
    channel_id: Mapped[int] = mapped_column(BigInteger)  # the channel, or the thread for thread messages
    parent_channel_id: Mapped[int | None] = mapped_column(BigInteger)  # the thread's parent
    author_id: Mapped[int] = mapped_column(BigInteger)
    author_name: Mapped[str] = mapped_column(String(100))
    kind: Mapped[MessageKind] = mapped_column(
        Enum(MessageKind, native_enum=False, length=20, values_callable=lambda e: [m.value for m in e])
    )
    persona_id: Mapped[int | None] = mapped_column(ForeignKey("personas.id", ondelete="SET NULL"))
    content: Mapped[str] = mapped_column(Text, default="")
    # Short notes for attachments and stickers: [{"kind": "image", "name": "cat.png"}, ...]
    attachments: Mapped[list[Any]] = mapped_column(default=list)
    reply_to_id: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    edited_at: Mapped[datetime | None] = mapped_column()


class Generation(Base):
    __tablename__ = "generations"
    __table_args__ = (Index("ix_generations_channel_latest", "channel_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    guild_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    channel_id: Mapped[int] = mapped_column(BigInteger)
    trigger_message_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    user_id: Mapped[int | None] = mapped_column(BigInteger)
    persona_id: Mapped[int | None] = mapped_column(ForeignKey("personas.id", ondelete="SET NULL"))
    # First message of the reply (indexed for "Reply info"), and all parts of a split reply.
    reply_message_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    reply_message_ids: Mapped[list[int]] = mapped_column(default=list)
    status: Mapped[GenerationStatus] = mapped_column(
        Enum(GenerationStatus, native_enum=False, length=20, values_callable=lambda e: [m.value for m in e]),
        default=GenerationStatus.QUEUED,
    )
    finish_reason: Mapped[str | None] = mapped_column(String(40))
    error: Mapped[str | None] = mapped_column(Text)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    sampler: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Swipes: every kept reply text, and which one is shown.
    alternatives: Mapped[list[str]] = mapped_column(default=list)
    selected_index: Mapped[int] = mapped_column(Integer, default=0)
    queued_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    first_token_seconds: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[datetime | None] = mapped_column()


class BlockedUser(Base):
    __tablename__ = "blocked_users"

    guild_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    blocked_by: Mapped[int | None] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class OutputFilter(Base):
    __tablename__ = "output_filters"
    __table_args__ = (UniqueConstraint("guild_id", "pattern", name="uq_output_filters_guild_pattern"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    guild_id: Mapped[int] = mapped_column(BigInteger, index=True)
    pattern: Mapped[str] = mapped_column(String(500))
    is_regex: Mapped[bool] = mapped_column(Boolean, default=False)
    created_by: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEntry(Base):
    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_guild_latest", "guild_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    guild_id: Mapped[int | None] = mapped_column(BigInteger)
    actor_id: Mapped[int | None] = mapped_column(BigInteger)
    action: Mapped[str] = mapped_column(String(60))
    target: Mapped[str] = mapped_column(String(200), default="")
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
