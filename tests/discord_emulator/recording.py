"""What the bot asked the REST API, kept in order so tests can assert on it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Part:
    """One part of a multipart body (``payload_json`` or ``files[n]``)."""

    name: str
    filename: str | None
    content_type: str | None
    data: bytes


@dataclass
class RecordedRequest:
    """One REST request. ``path`` is relative to the API root (``/channels/1/messages``), decoded."""

    method: str
    path: str
    query: dict[str, str]
    json: Any  # the JSON body, or the decoded payload_json of a multipart body; None when there was none
    parts: list[Part] = field(default_factory=list)
    time: float = 0.0  # loop.time() when it arrived
    status: int | None = None  # the status the emulator answered with
    injected: bool = False  # answered by fail_next() rather than the emulator's logic

    @property
    def files(self) -> list[Part]:
        return [p for p in self.parts if p.filename is not None]

    def matches(self, method: str | None = None, path: str | None = None) -> bool:
        """``method`` ("*" or None = any) and ``path`` as a regular expression that must match the whole path."""
        if method not in (None, "*") and method.upper() != self.method:
            return False
        return path is None or re.fullmatch(path, self.path) is not None

    def __repr__(self) -> str:
        q = "&".join(f"{k}={v}" for k, v in self.query.items())
        return f"<{self.method} {self.path}{'?' + q if q else ''} -> {self.status}>"
