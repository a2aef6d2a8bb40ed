"""Inputs of the prompt builder: the persona, the channel history and how to resolve Discord mentions.

These are plain types, not ORM rows, but rows convert easily: :meth:`PersonaSpec.from_row` reads a
:class:`bot.storage.models.Persona` (or a mapping with its column names) and a
:class:`bot.storage.models.StoredMessage` satisfies :class:`HistoryMessage` as it is.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from bot.storage.models import MessageKind


class Role(enum.StrEnum):
    SYSTEM = "system"
    USER = "user"
    MODEL = "model"

    @property
    def marker(self) -> str:
        return f"<|{self.value}|>"


@dataclass(frozen=True, slots=True)
class PersonaSpec:
    """What the builder needs of a persona (a character card's prompt-relevant fields)."""

    name: str
    nickname: str | None = None
    description: str = ""
    personality: str = ""
    scenario: str = ""
    greeting: str = ""
    alternate_greetings: tuple[str, ...] = ()
    example_dialogue: str = ""
    system_prompt: str = ""
    post_history_instructions: str = ""
    lorebook: Mapping[str, Any] | None = None
    id: int | None = None

    @property
    def display_name(self) -> str:
        """The name the persona speaks under: the V3 ``nickname`` when set (it replaces ``{{char}}``)."""
        return (self.nickname or "").strip() or self.name

    @property
    def greetings(self) -> tuple[str, ...]:
        """The greeting followed by the alternate greetings, empty ones left out."""
        return tuple(g for g in (self.greeting, *self.alternate_greetings) if g.strip())

    @classmethod
    def from_row(cls, row: Any) -> PersonaSpec:
        """Build from a ``Persona`` row, anything with its attribute names, or a mapping of its columns."""

        def get(name: str, default: Any = None) -> Any:
            value = row.get(name, default) if isinstance(row, Mapping) else getattr(row, name, default)
            return default if value is None else value

        lorebook = get("lorebook")
        return cls(
            name=str(get("name", "")),
            nickname=get("nickname") or None,
            description=str(get("description", "")),
            personality=str(get("personality", "")),
            scenario=str(get("scenario", "")),
            greeting=str(get("greeting", "")),
            alternate_greetings=tuple(str(g) for g in get("alternate_greetings", ()) or ()),
            example_dialogue=str(get("example_dialogue", "")),
            system_prompt=str(get("system_prompt", "")),
            post_history_instructions=str(get("post_history_instructions", "")),
            lorebook=lorebook if isinstance(lorebook, Mapping) else None,
            id=get("id"),
        )


@runtime_checkable
class HistoryMessage(Protocol):
    """A stored channel message; :class:`bot.storage.models.StoredMessage` has exactly these attributes.

    (Read-only properties here so that rows and dataclasses with narrower types both match.)
    """

    @property
    def id(self) -> int: ...
    @property
    def author_id(self) -> int: ...
    @property
    def author_name(self) -> str: ...
    @property
    def kind(self) -> MessageKind | str: ...
    @property
    def persona_id(self) -> int | None: ...
    @property
    def content(self) -> str: ...
    @property
    def attachments(self) -> Sequence[Mapping[str, Any]]: ...
    @property
    def created_at(self) -> datetime | None: ...
    @property
    def edited_at(self) -> datetime | None: ...


@dataclass(slots=True)
class ChatMessage:
    """A concrete :class:`HistoryMessage` for callers without ORM rows (the CLI, tests, benchmarks)."""

    id: int
    author_id: int
    author_name: str
    kind: MessageKind | str
    content: str
    persona_id: int | None = None
    attachments: list[dict[str, Any]] = field(default_factory=list)
    created_at: datetime | None = None
    edited_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Mentions:
    """Names for the ids in Discord markup: ``<@id>`` users, ``<#id>`` channels, ``<@&id>`` roles.

    Users' current display names are also preferred over the name stored with their older messages, so one person
    keeps one name throughout the prompt.
    """

    users: Mapping[int, str] = field(default_factory=dict)
    channels: Mapping[int, str] = field(default_factory=dict)
    roles: Mapping[int, str] = field(default_factory=dict)

    @classmethod
    def coerce(cls, value: Any) -> Mentions:
        """Accept a Mentions, None, a mapping with users/channels/roles keys, or an object with those attributes."""
        if value is None:
            return _EMPTY_MENTIONS
        if isinstance(value, Mentions):
            return value
        if isinstance(value, Mapping):
            return cls(
                users=value.get("users") or {}, channels=value.get("channels") or {}, roles=value.get("roles") or {}
            )
        return cls(
            users=getattr(value, "users", None) or {},
            channels=getattr(value, "channels", None) or {},
            roles=getattr(value, "roles", None) or {},
        )


_EMPTY_MENTIONS = Mentions()


def kind_of(message: HistoryMessage) -> MessageKind:
    """The message's kind as a :class:`MessageKind` (rows store the enum, callers may pass its string value)."""
    kind = message.kind
    if isinstance(kind, MessageKind):
        return kind
    try:
        return MessageKind(str(kind).lower())
    except ValueError:
        return MessageKind.HUMAN
