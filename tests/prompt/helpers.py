"""Small builders for prompt tests: messages and personas with readable defaults."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from bot.prompt import ChatMessage, PersonaSpec
from bot.storage.models import MessageKind

BASE_TIME = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
USER_IDS = {"Alice": 101, "Bob": 102, "Carol": 103, "Dice Bot": 900}


def human(msg_id: int, name: str, text: str, **kw: Any) -> ChatMessage:
    return ChatMessage(
        id=msg_id,
        author_id=USER_IDS.get(name, 1000 + msg_id),
        author_name=name,
        kind=MessageKind.HUMAN,
        content=text,
        created_at=BASE_TIME + timedelta(minutes=msg_id),
        **kw,
    )


def persona_msg(msg_id: int, text: str, *, persona_id: int = 1, name: str = "Seraphina") -> ChatMessage:
    return ChatMessage(
        id=msg_id,
        author_id=5000 + persona_id,
        author_name=name,
        kind=MessageKind.PERSONA,
        content=text,
        persona_id=persona_id,
        created_at=BASE_TIME + timedelta(minutes=msg_id),
    )


def bot_msg(msg_id: int, name: str, text: str) -> ChatMessage:
    return ChatMessage(
        id=msg_id,
        author_id=USER_IDS.get(name, 9000 + msg_id),
        author_name=name,
        kind=MessageKind.BOT,
        content=text,
        created_at=BASE_TIME + timedelta(minutes=msg_id),
    )


def seraphina(**overrides: Any) -> PersonaSpec:
    fields: dict[str, Any] = {
        "name": "Seraphina",
        "description": "A gentle forest guardian with pink hair.",
        "personality": "caring, protective",
        "scenario": "{{user}} wakes up in her glade.",
        "id": 1,
    }
    fields.update(overrides)
    return PersonaSpec(**fields)
