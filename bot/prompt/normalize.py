"""Stored Discord messages to clean prompt text.

Discord markup means nothing to the model (``<@123>`` is noise, ``@Alice`` is a person), attachments are only
worth a short note, and out-of-character chatter (``// brb``, ``((lol))``) does not belong in the story.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from bot.prompt.types import Mentions

MAX_MESSAGE_CHARS = 3000
TRUNCATION_MARKER = " [… message cut]"
MAX_ATTACHMENT_NOTES = 4
ATTACHMENT_NAME_MAX = 60

UNKNOWN_USER = "unknown-user"
UNKNOWN_CHANNEL = "unknown-channel"
UNKNOWN_ROLE = "unknown-role"

_MARKUP = re.compile(
    r"<@!?(?P<user>\d+)>"
    r"|<@&(?P<role>\d+)>"
    r"|<#(?P<channel>\d+)>"
    r"|<a?:(?P<emoji>\w{1,64}):\d+>"
    r"|<t:(?P<ts>-?\d{1,16})(?::(?P<style>[tTdDfFR]))?>"
    r"|</(?P<command>[\w\- ]{1,100}):\d+>"
)
_BLANK_LINES = re.compile(r"\n{3,}")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_NOTE_UNSAFE = re.compile(r"[\x00-\x1f\x7f\[\]]")
_KIND_UNSAFE = re.compile(r"[^a-z]")


def is_out_of_character(content: str) -> bool:
    """``// text`` or ``((text))`` (an unclosed ``((`` too: people forget the closing brackets)."""
    text = content.lstrip()
    return text.startswith("//") or text.startswith("((")


def _format_time(moment: datetime, style: str | None, reference: datetime | None) -> str:
    if style == "R" and reference is not None:
        return _relative(moment, reference)
    if style == "t":
        return f"{moment:%H:%M} UTC"
    if style == "T":
        return f"{moment:%H:%M:%S} UTC"
    if style == "d":
        return f"{moment:%Y-%m-%d}"
    if style == "D":
        return f"{moment.day} {moment:%B %Y}"
    if style == "F":
        return f"{moment:%A}, {moment.day} {moment:%B %Y %H:%M} UTC"
    return f"{moment.day} {moment:%B %Y %H:%M} UTC"


_UNITS = (("year", 365 * 86400), ("month", 30 * 86400), ("day", 86400), ("hour", 3600), ("minute", 60))


def _relative(moment: datetime, reference: datetime) -> str:
    if reference.tzinfo is None:
        reference = reference.replace(tzinfo=UTC)
    seconds = (moment - reference).total_seconds()
    span = abs(seconds)
    if span < 60:
        return "in a few seconds" if seconds >= 0 else "a few seconds ago"
    for unit, size in _UNITS:
        if span >= size:
            count = int(span // size)
            phrase = f"{count} {unit}{'s' if count != 1 else ''}"
            return f"in {phrase}" if seconds > 0 else f"{phrase} ago"
    return "now"  # pragma: no cover (the minute unit always matches above 60 s)


def resolve_markup(text: str, mentions: Mentions, *, created_at: datetime | None = None) -> str:
    """Mentions, channels, roles, custom emoji, timestamps and command mentions as readable text."""
    if "<" not in text:
        return text

    def _sub(match: re.Match[str]) -> str:
        if (user := match.group("user")) is not None:
            return "@" + _name(mentions.users, user, UNKNOWN_USER)
        if (role := match.group("role")) is not None:
            return "@" + _name(mentions.roles, role, UNKNOWN_ROLE)
        if (channel := match.group("channel")) is not None:
            return "#" + _name(mentions.channels, channel, UNKNOWN_CHANNEL)
        if (emoji := match.group("emoji")) is not None:
            return f":{emoji}:"
        if (command := match.group("command")) is not None:
            return "/" + command
        try:
            moment = datetime.fromtimestamp(int(match.group("ts")), UTC)
        except (OverflowError, OSError, ValueError):
            return "(an invalid time)"
        return _format_time(moment, match.group("style"), created_at)

    return _MARKUP.sub(_sub, text)


def _name(names: Mapping[int, str], raw_id: str, fallback: str) -> str:
    name = names.get(int(raw_id))
    name = " ".join(str(name).split()) if name else ""
    return name or fallback


def attachment_notes(attachments: Sequence[Mapping[str, Any]] | None) -> str:
    """``[image: cat.png] [file: notes.txt]``: what was attached, never its contents."""
    if not attachments:
        return ""
    notes: list[str] = []
    for item in attachments[:MAX_ATTACHMENT_NOTES]:
        if not isinstance(item, Mapping):
            continue
        kind = _KIND_UNSAFE.sub("", str(item.get("kind") or "file").lower())[:20] or "file"
        name = " ".join(_NOTE_UNSAFE.sub(" ", str(item.get("name") or "")).split())
        if len(name) > ATTACHMENT_NAME_MAX:
            name = name[: ATTACHMENT_NAME_MAX - 1] + "…"
        notes.append(f"[{kind}: {name}]" if name else f"[{kind}]")
    extra = len(attachments) - MAX_ATTACHMENT_NOTES
    if extra > 0:
        notes.append(f"[+{extra} more attachment{'s' if extra != 1 else ''}]")
    return " ".join(notes)


def tidy(text: str) -> str:
    """Uniform newlines, no trailing spaces, at most one blank line in a row, no outer whitespace."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _TRAILING_SPACE.sub("\n", text)
    return _BLANK_LINES.sub("\n\n", text).strip()


def cut(text: str, max_chars: int, marker: str = TRUNCATION_MARKER) -> str:
    """``text`` shortened to at most ``max_chars`` characters (marker included), at a word boundary if one is near."""
    if len(text) <= max_chars:
        return text
    keep = max(0, max_chars - len(marker))
    head = text[:keep]
    space = head.rfind(" ", keep - 80 if keep > 80 else 0)
    if space > keep // 2:
        head = head[:space]
    return head.rstrip() + marker


def message_text(
    content: str,
    attachments: Sequence[Mapping[str, Any]] | None,
    mentions: Mentions,
    *,
    created_at: datetime | None = None,
    max_chars: int = MAX_MESSAGE_CHARS,
) -> str:
    """The prompt text of one message ("" when it has nothing to say). OOC filtering is the caller's choice."""
    notes = attachment_notes(attachments)
    content = content or ""
    if "<" not in content:  # no markup: the result depends on the text alone, and chat text repeats
        return _plain_text(content, notes, max_chars)
    return _join(cut(tidy(resolve_markup(content, mentions, created_at=created_at)), max_chars), notes)


@lru_cache(maxsize=8192)
def _plain_text(content: str, notes: str, max_chars: int) -> str:
    return _join(cut(tidy(content), max_chars), notes)


def _join(text: str, notes: str) -> str:
    if notes:
        return f"{text} {notes}" if text else notes
    return text
