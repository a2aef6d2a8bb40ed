"""Persona display names that Discord accepts for webhook messages."""

from __future__ import annotations

import re
import unicodedata

WEBHOOK_NAME_MAX = 80
# Discord refuses webhook names containing these words (any case).
_FORBIDDEN = re.compile(r"clyde|discord", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def webhook_username(name: str) -> str:
    """A webhook username for ``name``: 1-80 characters, no "clyde"/"discord".

    Forbidden words get a zero-width joiner after their first letter, which keeps them readable.
    """
    cleaned = _CONTROL.sub("", unicodedata.normalize("NFC", name)).strip()
    cleaned = _FORBIDDEN.sub(lambda m: m.group(0)[0] + "\u2060" + m.group(0)[1:], cleaned)
    if not cleaned:
        cleaned = "Persona"
    return cleaned[:WEBHOOK_NAME_MAX]


def mentions_name(text: str, name: str) -> bool:
    """Whether ``name`` is written in ``text`` as a whole word, ignoring case."""
    name = name.strip()
    if not name:
        return False
    pattern = r"(?<![\w])" + re.escape(name) + r"(?![\w])"
    return re.search(pattern, text, re.IGNORECASE) is not None
