"""Model output to a reply fit to post.

Stop strings end most runs cleanly, but not all: a backend may ignore some (OpenAI-compatible servers take only a
few), a marker may come out in another spelling, and a run cut by the token limit can end half-way into one. So
the reply is cut at the first role marker, at ``<START>``, or at the first line where the model starts speaking as
someone else (``Alice: ...``); a leading ``Seraphina:`` (the persona's own name, which the prompt primes) is
dropped, and so is surrounding whitespace.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from bot.prompt.errors import EmptyReply
from bot.prompt.sanitize import ALL_MARKERS, find_markers

# Names a model falls back on when it invents the other side of the conversation.
GENERIC_SPEAKERS: tuple[str, ...] = ("User", "You", "Human", "Anon", "Anonymous", "{{user}}", "<USER>")
_START = re.compile(r"<\s*start\s*>", re.IGNORECASE)
_PARTIALS: tuple[str, ...] = (*ALL_MARKERS, "<START>")


def _name_alternation(names: Iterable[str]) -> str:
    unique = sorted({n.strip() for n in names if n and n.strip()}, key=len, reverse=True)
    return "|".join(re.escape(n) for n in unique)


def _strip_partial_marker(text: str) -> str:
    """Drop a marker that the token limit cut half-way (``...<|us``); a lone ``<`` stays (it may be a heart)."""
    lowered = text.lower()
    for marker in _PARTIALS:
        for size in range(len(marker) - 1, 1, -1):
            if lowered.endswith(marker[:size].lower()):
                return text[: len(text) - size]
    return text


def clean_reply(
    text: str,
    persona_name: str,
    participants: Iterable[str],
    *,
    aliases: Iterable[str] = (),
    continuation: bool = False,
) -> str:
    """The postable reply in ``text``; raises :class:`EmptyReply` (with the reason) when nothing is left.

    ``participants`` are the other speakers of the conversation (``BuiltPrompt.participants``); ``aliases`` are
    other names of the persona (its nickname). With ``continuation`` the text extends an earlier reply, so its
    leading whitespace is kept and no name prefix is expected.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    original = text
    own = {persona_name.strip().casefold(), *(a.strip().casefold() for a in aliases if a)}
    own.discard("")

    cut_at = len(text)
    spans = find_markers(text)
    if spans:
        cut_at = spans[0][0]
    if start := _START.search(text):
        cut_at = min(cut_at, start.start())
    text = _strip_partial_marker(text[:cut_at])

    if not continuation and own:
        own_names = _name_alternation([persona_name, *aliases])
        text = re.sub(rf"^\s*(?:[*_]{{0,2}}(?:{own_names})[*_]{{0,2}}[ \t]*:[*_]{{0,2}}\s*)+", "", text, flags=re.I)

    others = _name_alternation([p for p in (*participants, *GENERIC_SPEAKERS) if p.strip().casefold() not in own])
    impersonated: str | None = None
    if others:
        line = re.search(rf"(?m)^[ \t]*[*_]{{0,2}}({others})[*_]{{0,2}}[ \t]*:", text, flags=re.I)
        if line is not None:
            impersonated = line.group(1)
            text = text[: line.start()]

    text = text.rstrip() if continuation else text.strip()
    if not text.strip():
        if impersonated is not None:
            reason = f"the model only wrote a turn for {impersonated}"
        elif original.strip():
            reason = "the model only wrote role markers or its own name"
        else:
            reason = "the model returned no text"
        raise EmptyReply(f"The reply was empty after clean-up: {reason}. Try generating again.")
    return text
