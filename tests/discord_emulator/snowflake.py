"""Snowflake ids that grow with time, like Discord's: milliseconds since 2015, then worker, process and counter."""

from __future__ import annotations

import datetime
import time

DISCORD_EPOCH_MS = 1_420_070_400_000


class SnowflakeFactory:
    """Hands out strictly increasing snowflakes whose timestamp part is the current time."""

    def __init__(self, worker_id: int = 1, process_id: int = 0) -> None:
        self._worker = worker_id & 0x1F
        self._process = process_id & 0x1F
        self._last_ms = 0
        self._counter = 0

    def next(self) -> int:
        now_ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        if now_ms <= self._last_ms:
            # Same millisecond (or the clock went back): keep growing without reusing an id.
            self._counter += 1
            if self._counter > 0xFFF:
                self._last_ms += 1
                self._counter = 0
            now_ms = self._last_ms
        else:
            self._counter = 0
        self._last_ms = now_ms
        return (now_ms << 22) | (self._worker << 17) | (self._process << 12) | self._counter


def snowflake_time(snowflake: int) -> datetime.datetime:
    """When a snowflake was made (UTC)."""
    ms = (snowflake >> 22) + DISCORD_EPOCH_MS
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)


def iso(ts: datetime.datetime) -> str:
    """Discord's timestamp format: ISO 8601 with microseconds and an explicit UTC offset."""
    return ts.astimezone(datetime.UTC).isoformat(timespec="microseconds")


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
