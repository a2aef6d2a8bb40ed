"""Injected REST failures: the next N matching requests get an error instead of the emulator's answer."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tests.discord_emulator.api_errors import default_error_body


@dataclass
class FaultRule:
    method: str  # upper case, or "*"
    pattern: re.Pattern[str]
    status: int
    remaining: int
    retry_after: float | None
    body: dict[str, Any] | None
    is_global: bool = False
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        return self.remaining > 0 and self.method in ("*", method) and self.pattern.fullmatch(path) is not None

    def response(self, path: str) -> tuple[dict[str, Any], dict[str, str]]:
        """The JSON body and extra headers for one hit."""
        headers: dict[str, str] = {}
        if self.status == 429:
            retry_after = 0.05 if self.retry_after is None else self.retry_after
            body = {"message": "You are being rate limited.", "retry_after": retry_after, "global": self.is_global}
            if not self.is_global:
                body["code"] = 0
            # discord.py only trusts a 429 that came through Discord's proxy (Via) and has a JSON body.
            headers = {
                "Via": "1.1 google",
                "Retry-After": str(max(1, round(retry_after))),
                "X-RateLimit-Limit": "5",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset-After": f"{retry_after:.3f}",
                "X-RateLimit-Scope": "global" if self.is_global else "user",
            }
            if self.is_global:
                headers["X-RateLimit-Global"] = "true"
            if self.body is not None:
                body.update(self.body)
            return body, headers
        return (self.body if self.body is not None else default_error_body(self.status, path)), headers
