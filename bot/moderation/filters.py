"""Output filters: words or regular expressions that withhold model output.

Patterns come from server admins, so matching must never hang the bot: the ``regex`` module's timeout bounds each
search, a budget bounds one check over all of a guild's filters (they run on the event loop, once per streamed
chunk), patterns are size-limited and probed against pathological input when added, and a search that still times
out or runs past the budget counts as a hit (fail closed: better a withheld reply than an unfiltered one).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import regex

log = logging.getLogger(__name__)

MAX_PATTERN_LENGTH = 200
MAX_FILTERS_PER_GUILD = 100
SEARCH_TIMEOUT = 0.05  # seconds per pattern per check
CHECK_BUDGET = 0.2  # seconds per check of all a guild's filters (100 slow ones must not stall the bot for 5 s)
_PROBES = ("a" * 3000 + "!", "ab" * 1500 + "!", " " * 3000 + "x", "x" * 3000, "aaa" * 1000 + "b")


class FilterError(ValueError):
    """An unusable pattern; the message says why."""


@dataclass(frozen=True, slots=True)
class CompiledFilter:
    pattern: str
    is_regex: bool
    compiled: regex.Pattern[str]


def compile_filter(pattern: str, *, is_regex: bool) -> CompiledFilter:
    """Validate and compile a filter. Plain words match whole words, ignoring case."""
    pattern = pattern.strip()
    if not pattern:
        raise FilterError("The pattern is empty.")
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise FilterError(f"Patterns are at most {MAX_PATTERN_LENGTH} characters (this one has {len(pattern)}).")
    source = pattern if is_regex else r"(?<!\w)" + regex.escape(pattern) + r"(?!\w)"
    try:
        compiled = regex.compile(source, regex.IGNORECASE | regex.V0)
    except regex.error as exc:
        raise FilterError(f"That is not a valid regular expression: {exc}.") from None
    if is_regex:
        if compiled.search("") is not None:
            raise FilterError("That pattern matches empty text, so it would withhold every reply.")
        for probe in _PROBES:
            try:
                compiled.search(probe, timeout=SEARCH_TIMEOUT)
            except TimeoutError:
                raise FilterError(
                    "That pattern is too slow to check (it backtracks catastrophically); simplify it, "
                    "e.g. avoid nested repeats like (a+)+."
                ) from None
    return CompiledFilter(pattern, is_regex, compiled)


class OutputFilterSet:
    """A guild's filters, checked against model output before it is posted."""

    def __init__(
        self,
        filters: Iterable[CompiledFilter] = (),
        *,
        budget: float = CHECK_BUDGET,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.filters = list(filters)
        self.budget = budget
        self._clock = clock

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[str, bool]]) -> OutputFilterSet:
        compiled = []
        for pattern, is_regex in rows:
            try:
                compiled.append(compile_filter(pattern, is_regex=is_regex))
            except FilterError as exc:
                log.warning("skipping stored output filter %r: %s", pattern, exc)
        return cls(compiled)

    def __bool__(self) -> bool:
        return bool(self.filters)

    def first_hit(self, text: str) -> str | None:
        """The first pattern that matches ``text`` (or times out, or is reached after the budget), else None."""
        deadline = self._clock() + self.budget
        for flt in self.filters:
            remaining = deadline - self._clock()
            if remaining <= 0:
                log.warning("output filters ran past their time budget at %r; withholding the text", flt.pattern)
                return flt.pattern
            try:
                if flt.compiled.search(text, timeout=min(SEARCH_TIMEOUT, remaining)) is not None:
                    return flt.pattern
            except TimeoutError:
                log.warning("output filter %r timed out; withholding the text", flt.pattern)
                return flt.pattern
        return None
