"""Card import/export errors. ``str(err)`` names the problem and how to fix it; ``code`` is for callers and tests."""

from __future__ import annotations


class CardError(ValueError):
    """A card file that cannot be imported (or a persona that cannot be exported)."""

    def __init__(self, message: str, code: str) -> None:
        self.code = code
        super().__init__(message)
