"""Stop strings on a stream of text chunks.

A stop string can arrive split across chunks (``"\\n<|us"`` then ``"er|>"``), so text that could be the start of a
stop string is held back until the next chunk shows whether it is one. Engines whose backend cannot stop on strings
(or does so unreliably) run their output through a :class:`StopMatcher`.
"""

from __future__ import annotations

from collections.abc import Iterable


class StopMatcher:
    """Feed chunks in; get back the text that is safe to show, and whether a stop string was reached."""

    def __init__(self, stops: Iterable[str]) -> None:
        self.stops = sorted({s for s in stops if s}, key=len, reverse=True)
        self._firsts = "".join({s[0] for s in self.stops})
        self._held = ""
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended the text

    def feed(self, text: str) -> str:
        """The part of ``text`` (plus held text) that can be emitted now. Emits nothing once stopped."""
        if self.stopped:
            return ""
        buf = self._held + text
        if not any(first in buf for first in self._firsts):
            # No stop string can start anywhere in it (held text would start one): all of it is safe to show. Most
            # tokens take this path, which engines run once per token.
            self._held = ""
            return buf
        best = -1
        for stop in self.stops:
            at = buf.find(stop)
            if at != -1 and (best == -1 or at < best):
                best, self.matched = at, stop
        if best != -1:
            self.stopped = True
            self._held = ""
            return buf[:best]
        keep = self._partial_suffix(buf)
        self._held = buf[len(buf) - keep :]
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        """Text held back at the end of the stream (it turned out not to be a stop string)."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _partial_suffix(self, buf: str) -> int:
        """Length of the longest suffix of ``buf`` that is a proper prefix of some stop string."""
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(buf)), longest, -1):
                if buf.endswith(stop[:size]):
                    longest = size
                    break
        return longest
