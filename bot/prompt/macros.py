"""Card macros: ``{{char}}``, ``{{user}}``, their old aliases ``<BOT>``/``<USER>``, and ``{{original}}``.

Matching is case-insensitive like SillyTavern's. Expansion happens before :func:`~bot.prompt.sanitize.neutralize`,
so a name that looks like a marker is still defused.
"""

from __future__ import annotations

import re

_NAME_MACRO = re.compile(r"\{\{\s*(char|user)\s*\}\}|<(bot|user)>", re.IGNORECASE)
_ORIGINAL = re.compile(r"\{\{\s*original\s*\}\}", re.IGNORECASE)
PERSONA_SLOT = re.compile(r"\{\{\s*persona\s*\}\}", re.IGNORECASE)


def expand_macros(text: str, *, char: str, user: str) -> str:
    """Replace ``{{char}}``/``<BOT>`` with ``char`` and ``{{user}}``/``<USER>`` with ``user``."""
    if "{" not in text and "<" not in text:
        return text

    def _sub(match: re.Match[str]) -> str:
        which = (match.group(1) or match.group(2)).lower()
        return char if which in ("char", "bot") else user

    return _NAME_MACRO.sub(lambda m: _sub(m), text)


def with_original(template: str, original: str) -> str:
    """A card's ``system_prompt``/``post_history_instructions`` with ``{{original}}`` standing for the app's own."""
    return _ORIGINAL.sub(lambda _m: original, template)
