"""Replies per user per time window."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

DEFAULT_COUNT = 6
DEFAULT_SECONDS = 60


class SlidingWindowLimiter:
    """At most ``count`` hits per key within ``seconds``; memory stays bounded by pruning idle keys."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000) -> None:
        self._clock = clock
        self._hits: dict[tuple[int, int], deque[float]] = {}
        self._max_keys = max_keys

    def hit(self, guild_id: int, user_id: int, count: int, seconds: float) -> bool:
        """Record a hit; False (and nothing recorded) when the user is over the limit."""
        if count <= 0:
            return True  # 0 disables the limit
        now = self._clock()
        key = (guild_id, user_id)
        hits = self._hits.get(key)
        if hits is None:
            if len(self._hits) >= self._max_keys:
                self._prune(now, seconds)
            hits = self._hits[key] = deque()
        while hits and now - hits[0] >= seconds:
            hits.popleft()
        if len(hits) >= count:
            return False
        hits.append(now)
        return True

    def retry_after(self, guild_id: int, user_id: int, seconds: float) -> float:
        hits = self._hits.get((guild_id, user_id))
        if not hits:
            return 0.0
        return max(0.0, seconds - (self._clock() - hits[0]))

    def _prune(self, now: float, seconds: float) -> None:
        for key in [k for k, v in self._hits.items() if not v or now - v[-1] >= seconds]:
            del self._hits[key]
        while len(self._hits) >= self._max_keys:
            self._hits.pop(next(iter(self._hits)))
