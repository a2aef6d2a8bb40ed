"""Lorebooks (a card's ``character_book``): entries that enter the prompt when their keys come up.

Follows the V2/V3 card spec and SillyTavern's reading of it:

- an entry fires when one of its ``keys`` appears in the last ``scan_depth`` messages (speaker names included,
  as SillyTavern scans them); ``constant`` entries always fire; disabled entries never do;
- ``selective`` entries also need their ``secondary_keys`` (SillyTavern's ``selectiveLogic``: AND ANY, NOT ALL,
  NOT ANY, AND ALL);
- keys match case-insensitively unless ``case_sensitive``; ``extensions.match_whole_words`` asks for whole words;
- keys are regular expressions when the entry has ``use_regex`` (V3) or a key is written ``/pattern/flags``.
  Patterns come from strangers' cards, so they run under the ``regex`` module's timeout and patterns with nested
  repetition (the classic catastrophic-backtracking shape) are refused up front;
- ``recursive_scanning`` lets fired entries' content trigger further entries (a few rounds at most);
- ``insertion_order`` orders entries within a position (lower goes higher up); when the token budget is short,
  lower ``priority`` goes first, then lower ``insertion_order`` (SillyTavern's "order").

``extensions.probability`` is ignored on purpose: random activation would change the prompt between identical
turns and defeat the engines' prefix cache.
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import regex

log = logging.getLogger(__name__)

DEFAULT_SCAN_DEPTH = 4  # SillyTavern's default is 2; Discord messages are shorter and come from several people
MAX_SCAN_DEPTH = 100
MAX_RECURSION_ROUNDS = 3
DEFAULT_DEPTH = 4  # SillyTavern's default for @depth entries and the author's note
REGEX_TIMEOUT_SECONDS = 0.05
MAX_REGEX_CHARS = 500
MAX_KEY_CHARS = 500

# A quantified group that itself contains a quantifier: (a+)+, (a*)*, (?:ab+){2,}, ...
_NESTED_QUANTIFIER = re.compile(r"\((?:[^()\\]|\\.)*[+*}](?:[^()\\]|\\.)*\)\s*[+*{]")
_BACKREFERENCE = re.compile(r"\\[1-9]|\(\?P=")
_SLASH_REGEX = re.compile(r"^/(.+)/([a-z]*)$", re.DOTALL)


class LorePosition(enum.StrEnum):
    BEFORE_CHAR = "before_char"
    AFTER_CHAR = "after_char"
    AT_DEPTH = "at_depth"


class SelectiveLogic(enum.IntEnum):
    AND_ANY = 0
    NOT_ALL = 1
    NOT_ANY = 2
    AND_ALL = 3


class UnsafePattern(ValueError):
    """A lorebook regex that could hang the bot or does not compile; the message says which and why."""


def compile_key_pattern(pattern: str, *, ignore_case: bool, flags_text: str = "") -> regex.Pattern[str]:
    """Compile a card-supplied regex key, refusing shapes that can backtrack for ever."""
    if len(pattern) > MAX_REGEX_CHARS:
        raise UnsafePattern(f"the pattern is {len(pattern)} characters long (at most {MAX_REGEX_CHARS})")
    if _NESTED_QUANTIFIER.search(pattern):
        raise UnsafePattern("the pattern repeats a group that itself repeats, which can hang a regex engine")
    if _BACKREFERENCE.search(pattern):
        raise UnsafePattern("back-references are not supported in lorebook keys")
    flags = regex.V0
    if ignore_case or "i" in flags_text:
        flags |= regex.IGNORECASE
    if "s" in flags_text:
        flags |= regex.DOTALL
    if "m" in flags_text:
        flags |= regex.MULTILINE
    try:
        return regex.compile(pattern, flags)
    except (regex.error, ValueError, OverflowError, RecursionError) as exc:
        raise UnsafePattern(f"the pattern does not compile ({exc})") from None


class _Key:
    """One key, compiled for fast repeated searching."""

    __slots__ = ("case_sensitive", "folded", "pattern", "raw")

    def __init__(self, raw: str, *, case_sensitive: bool, whole_words: bool, use_regex: bool) -> None:
        self.raw = raw
        self.case_sensitive = case_sensitive
        self.folded: str | None = None
        self.pattern: regex.Pattern[str] | None = None
        slash = _SLASH_REGEX.match(raw)
        if slash is not None:
            self.pattern = compile_key_pattern(slash.group(1), ignore_case=False, flags_text=slash.group(2))
        elif use_regex:
            self.pattern = compile_key_pattern(raw, ignore_case=not case_sensitive)
        elif whole_words:
            flags = regex.V0 if case_sensitive else regex.IGNORECASE
            self.pattern = regex.compile(r"(?<!\w)" + regex.escape(raw) + r"(?!\w)", flags)
        else:
            self.folded = raw if case_sensitive else raw.casefold()

    def found_in(self, text: str, folded: str) -> bool:
        if self.pattern is not None:
            try:
                return self.pattern.search(text, timeout=REGEX_TIMEOUT_SECONDS) is not None
            except TimeoutError:
                log.warning("Lorebook key %r timed out; treated as not matching", self.raw[:60])
                return False
        assert self.folded is not None
        return self.folded in (text if self.case_sensitive else folded)


@dataclass(frozen=True, slots=True, eq=False)
class LoreEntry:
    uid: str  # the entry's id, or "#<index>" when it has none: stable while the book is unchanged
    name: str
    content: str
    keys: tuple[_Key, ...]
    secondary_keys: tuple[_Key, ...]
    constant: bool
    selective: bool
    logic: SelectiveLogic
    insertion_order: int
    priority: int
    position: LorePosition
    depth: int
    scan_depth: int | None
    exclude_recursion: bool
    prevent_recursion: bool
    index: int

    def _primary(self, text: str, folded: str) -> str | None:
        for key in self.keys:
            if key.found_in(text, folded):
                return key.raw
        return None

    def _secondary_ok(self, text: str, folded: str) -> bool:
        if not self.selective or not self.secondary_keys:
            return True
        hits = [key.found_in(text, folded) for key in self.secondary_keys]
        if self.logic is SelectiveLogic.AND_ALL:
            return all(hits)
        if self.logic is SelectiveLogic.NOT_ANY:
            return not any(hits)
        if self.logic is SelectiveLogic.NOT_ALL:
            return not all(hits)
        return any(hits)

    def matches(self, text: str, folded: str) -> str | None:
        """The key that fired this entry in ``text``, or None."""
        key = self._primary(text, folded)
        if key is not None and self._secondary_ok(text, folded):
            return key
        return None


@dataclass(frozen=True, slots=True)
class LoreMatch:
    entry: LoreEntry
    reason: str  # "constant", "key 'forest'", "key 'beast' (via another entry)"


@dataclass(frozen=True, slots=True, eq=False)
class Lorebook:
    name: str
    entries: tuple[LoreEntry, ...]
    scan_depth: int
    token_budget: int | None
    recursive: bool
    problems: tuple[str, ...] = ()  # entries or keys that were skipped, and why

    @classmethod
    def from_dict(cls, book: Mapping[str, Any] | None) -> Lorebook:
        """Read a ``character_book`` leniently: malformed entries or keys are skipped and listed in ``problems``."""
        problems: list[str] = []
        entries: list[LoreEntry] = []
        book = book if isinstance(book, Mapping) else {}
        raw_entries = book.get("entries")
        if not isinstance(raw_entries, Sequence) or isinstance(raw_entries, str):
            raw_entries = []
        for index, raw in enumerate(raw_entries):
            if not isinstance(raw, Mapping):
                problems.append(f"entry {index + 1} is not an object")
                continue
            entry = _read_entry(raw, index, problems)
            if entry is not None:
                entries.append(entry)
        return cls(
            name=_text(book.get("name")),
            entries=tuple(entries),
            scan_depth=_clamp(_int(book.get("scan_depth"), DEFAULT_SCAN_DEPTH), 1, MAX_SCAN_DEPTH),
            token_budget=_positive_or_none(book.get("token_budget")),
            recursive=bool(book.get("recursive_scanning")),
            problems=tuple(problems),
        )

    def scan(self, messages: Sequence[str]) -> list[LoreMatch]:
        """Entries fired by ``messages`` (oldest first; each already ``Name: text``), in book order."""
        buffers: dict[int, tuple[str, str]] = {}

        def buffer(depth: int) -> tuple[str, str]:
            if depth not in buffers:
                text = "\n".join(messages[-depth:]) if messages else ""
                buffers[depth] = (text, text.casefold())
            return buffers[depth]

        fired: dict[int, LoreMatch] = {}
        for entry in self.entries:
            if entry.constant:
                fired[entry.index] = LoreMatch(entry, "constant")
                continue
            text, folded = buffer(_clamp(entry.scan_depth or self.scan_depth, 1, MAX_SCAN_DEPTH))
            key = entry.matches(text, folded)
            if key is not None:
                fired[entry.index] = LoreMatch(entry, f"key {key!r}")
        if self.recursive:
            fresh = list(fired.values())
            for _ in range(MAX_RECURSION_ROUNDS):
                text = "\n".join(m.entry.content for m in fresh if not m.entry.prevent_recursion)
                if not text:
                    break
                folded = text.casefold()
                fresh = []
                for entry in self.entries:
                    if entry.index in fired or entry.exclude_recursion:
                        continue
                    key = entry.matches(text, folded)
                    if key is not None:
                        fired[entry.index] = match = LoreMatch(entry, f"key {key!r} (via another entry)")
                        fresh.append(match)
                if not fresh:
                    break
        return [fired[i] for i in sorted(fired)]


def _read_entry(raw: Mapping[str, Any], index: int, problems: list[str]) -> LoreEntry | None:
    if raw.get("enabled") is False:
        return None
    ext = raw.get("extensions") if isinstance(raw.get("extensions"), Mapping) else {}
    assert isinstance(ext, Mapping)
    content = _text(raw.get("content")).strip()
    label = _text(raw.get("name")) or _text(raw.get("comment"))
    if not content:
        return None
    case_sensitive = raw.get("case_sensitive")
    if case_sensitive is None:
        case_sensitive = ext.get("case_sensitive")
    options = {
        "case_sensitive": bool(case_sensitive),
        "whole_words": bool(ext.get("match_whole_words")),
        "use_regex": bool(raw.get("use_regex")),
    }
    where = f"entry {index + 1}" + (f" ({label[:40]!r})" if label else "")
    keys = _keys(raw.get("keys"), options, where, problems)
    secondary = _keys(raw.get("secondary_keys"), options, where, problems)
    constant = bool(raw.get("constant"))
    if not keys and not constant:
        return None
    raw_id = raw.get("id")
    uid = str(raw_id) if isinstance(raw_id, int | str) and not isinstance(raw_id, bool) and str(raw_id) else None
    position, depth = _position(raw, ext)
    logic_value = _int(ext.get("selectiveLogic"), 0)
    return LoreEntry(
        uid=uid if uid is not None else f"#{index}",
        name=label or (keys[0].raw if keys else f"entry {index + 1}"),
        content=content,
        keys=tuple(keys),
        secondary_keys=tuple(secondary),
        constant=constant,
        selective=bool(raw.get("selective")),
        logic=SelectiveLogic(logic_value) if logic_value in (0, 1, 2, 3) else SelectiveLogic.AND_ANY,
        insertion_order=_int(raw.get("insertion_order"), 100),
        priority=_int(raw.get("priority"), 0),
        position=position,
        depth=depth,
        scan_depth=_positive_or_none(ext.get("scan_depth")),
        exclude_recursion=bool(ext.get("exclude_recursion")),
        prevent_recursion=bool(ext.get("prevent_recursion")),
        index=index,
    )


def _keys(value: Any, options: Mapping[str, bool], where: str, problems: list[str]) -> list[_Key]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence):
        return []
    keys: list[_Key] = []
    for raw in value:
        if not isinstance(raw, str) or not raw.strip():
            continue
        raw = raw.strip()
        if len(raw) > MAX_KEY_CHARS:
            problems.append(f"{where}: a key of {len(raw)} characters skipped (at most {MAX_KEY_CHARS})")
            continue
        try:
            keys.append(_Key(raw, **options))
        except UnsafePattern as exc:
            problems.append(f"{where}: key {raw[:60]!r} skipped: {exc}")
    return keys


def _position(raw: Mapping[str, Any], ext: Mapping[str, Any]) -> tuple[LorePosition, int]:
    # SillyTavern keeps finer positions in extensions.position: 2/3 author's note (at its depth), 4 @depth,
    # 5/6 around the example messages, which directly follow the character block here.
    st = ext.get("position")
    if isinstance(st, int) and not isinstance(st, bool):
        if st in (2, 3):
            return LorePosition.AT_DEPTH, DEFAULT_DEPTH
        if st == 4:
            return LorePosition.AT_DEPTH, _clamp(_int(ext.get("depth"), DEFAULT_DEPTH), 0, 1000)
        if st in (5, 6):
            return LorePosition.AFTER_CHAR, 0
    if str(raw.get("position") or "").strip().lower() == "after_char":
        return LorePosition.AFTER_CHAR, 0
    if st == 1 and raw.get("position") is None:
        return LorePosition.AFTER_CHAR, 0
    return LorePosition.BEFORE_CHAR, 0


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _int(value: Any, default: int) -> int:
    if isinstance(value, bool) or value is None:
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value == value and abs(value) < 1e12:
        return int(value)
    if isinstance(value, str):
        try:
            return int(float(value.strip()))
        except ValueError:
            return default
    return default


def _positive_or_none(value: Any) -> int | None:
    number = _int(value, 0)
    return number if number > 0 else None


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))
