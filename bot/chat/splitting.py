"""Split a long reply into Discord-sized messages at natural boundaries."""

from __future__ import annotations

import re

DISCORD_MESSAGE_LIMIT = 2000

_SENTENCE_END = re.compile(r"[.!?…][\"')\]*_~]*\s")


def _cut_point(text: str, limit: int) -> int:
    """Where to cut ``text`` (longer than ``limit``): paragraph, then line, sentence, word, else hard."""
    window = text[:limit]
    floor = limit // 3  # never cut so early that a part is tiny
    for sep in ("\n\n", "\n"):
        pos = window.rfind(sep)
        if pos >= floor:
            return pos + len(sep)
    ends = [m.end() for m in _SENTENCE_END.finditer(window)]
    if ends and ends[-1] >= floor:
        return ends[-1]
    pos = window.rfind(" ")
    if pos >= floor:
        return pos + 1
    return limit


def split_message(text: str, limit: int = DISCORD_MESSAGE_LIMIT) -> list[str]:
    """Parts of at most ``limit`` characters; joined, they give back the text (minus whitespace at the cuts)."""
    if limit < 10:
        raise ValueError("limit must be at least 10 characters")
    text = text.strip()
    parts: list[str] = []
    while len(text) > limit:
        cut = _cut_point(text, limit)
        part = text[:cut].rstrip()
        if part:
            parts.append(part)
        text = text[cut:].lstrip()
    if text:
        parts.append(text)
    return parts
