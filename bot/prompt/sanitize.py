"""Role-marker neutralisation: no user-supplied text may open a Metharme turn or end the sequence.

The Metharme markers (`<|system|>`, `<|user|>`, `<|model|>`) are plain text to the Llama tokenizer, and `<s>`/`</s>`
are BOS/EOS to any engine that parses special tokens in text. A Discord user who types one would inject a role, so
every piece of user text (messages, display names, persona and card fields, lorebook entries) passes through
:func:`neutralize` before it enters a prompt.

Matching is deliberately lenient: text is compared after NFKC folding (full-width `＜｜ＳＹＳＴＥＭ｜＞`), case
folding, and with whitespace, control, format (zero-width) and combining characters removed, so `< | SyStEm | >`
or `<|sys\u200btem|>` are caught too. A match is defused by turning its angle brackets into `‹` and `›`, which keeps
the text readable and cannot fold back to `<`/`>`.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

ROLE_MARKERS: tuple[str, ...] = ("<|system|>", "<|user|>", "<|model|>")
SEQUENCE_MARKERS: tuple[str, ...] = ("<s>", "</s>")
ALL_MARKERS: tuple[str, ...] = ROLE_MARKERS + SEQUENCE_MARKERS

# Every character whose NFKC form is "<" (checked over all of Unicode): the cheap pre-test before folding.
_OPENING = re.compile("[<\ufe64\uff1c]")
_IGNORED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Mn", "Me", "Zs", "Zl", "Zp"})
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")
_SPACES = re.compile(r"\s+")

SAFE_LT = "\u2039"  # ‹
SAFE_GT = "\u203a"  # ›
NAME_MAX = 80


@lru_cache(maxsize=8192)
def _fold(ch: str) -> str:
    """What one character counts as when looking for markers ("" for characters a reader would skip)."""
    if ch.isspace() or unicodedata.category(ch) in _IGNORED_CATEGORIES:
        return ""
    return unicodedata.normalize("NFKC", ch).casefold()


_LONGEST_MARKER = max(len(m) for m in ALL_MARKERS)
_MARKER_AT = re.compile(r"<\|(?:system|user|model)\|>|</?s>")


def find_markers(text: str) -> list[tuple[int, int]]:
    """Spans ``(start, end)`` of ``text`` that read as a role or sequence marker, in order.

    Every marker starts with "<", so only the text after each "<"-like character is folded, up to the length of
    the longest marker in folded characters (ignorable characters in between are skipped, however many).
    """
    spans: list[tuple[int, int]] = []
    size = len(text)
    last_end = 0
    for opening in _OPENING.finditer(text):
        start = opening.start()
        if start < last_end:
            continue
        folded: list[str] = []
        origin: list[int] = []
        j = start
        while j < size and len(folded) < _LONGEST_MARKER:
            for ch in _fold(text[j]):
                folded.append(ch)
                origin.append(j)
            j += 1
        match = _MARKER_AT.match("".join(folded))
        if match is not None:
            last_end = origin[match.end() - 1] + 1
            spans.append((start, last_end))
    return spans


def has_marker(text: str) -> bool:
    return bool(find_markers(text))


def count_markers(text: str) -> int:
    """How many markers ``text`` contains by the lenient reading (used by tests and the prompt self-check)."""
    return len(find_markers(text))


def _defuse(text: str, spans: list[tuple[int, int]]) -> str:
    chars = list(text)
    for start, end in spans:
        for i in range(start, end):
            folded = _fold(chars[i])
            if "<" in folded:
                chars[i] = SAFE_LT
            elif ">" in folded:
                chars[i] = SAFE_GT
    return "".join(chars)


@lru_cache(maxsize=2048)
def neutralize(text: str) -> str:
    """``text`` with every role/sequence marker defused; text without markers comes back unchanged."""
    # One pass suffices (a defused span has no "<" left to start a new match), the loop is a guard.
    for _ in range(4):
        spans = find_markers(text)
        if not spans:
            return text
        text = _defuse(text, spans)
    raise AssertionError("marker neutralisation did not converge")  # pragma: no cover


@lru_cache(maxsize=4096)
def clean_name(name: str, fallback: str = "Someone") -> str:
    """A speaker name fit for ``Name: text`` lines and stop strings: one line, no markers, at most 80 chars."""
    name = unicodedata.normalize("NFC", name or "")
    name = _CONTROL.sub("", name)
    name = _SPACES.sub(" ", name).strip().rstrip(":").strip()
    name = neutralize(name)[:NAME_MAX].strip()
    return name or fallback
