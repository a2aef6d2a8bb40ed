"""The Metharme format's fixed pieces: markers, the model card's RP prompt, stop strings."""

from __future__ import annotations

from collections.abc import Iterable

from bot.prompt.types import Role

SYSTEM = Role.SYSTEM.marker
USER = Role.USER.marker
MODEL = Role.MODEL.marker
EOS_TEXT = "</s>"

# Pygmalion-2's model card. {{persona}} is where the character block goes.
DEFAULT_SYSTEM_PROMPT = (
    "Enter RP mode. Pretend to be {{char}} whose persona follows:\n{{persona}}\n\n"
    "You shall reply to the user while staying in character, and generate long responses."
)
DEFAULT_POST_HISTORY = ""

BASE_STOPS: tuple[str, ...] = (USER, MODEL, SYSTEM, EOS_TEXT)
MAX_NAME_STOPS = 8


def stop_strings(names: Iterable[str], *, limit: int = MAX_NAME_STOPS) -> list[str]:
    """The role markers, ``</s>``, then ``\\nName:`` for up to ``limit`` names (most relevant first)."""
    stops = list(BASE_STOPS)
    seen: set[str] = set()
    for name in names:
        key = name.casefold()
        if not name or key in seen:
            continue
        seen.add(key)
        stops.append(f"\n{name}:")
        if len(seen) >= limit:
            break
    return stops
