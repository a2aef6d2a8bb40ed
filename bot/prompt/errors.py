"""Errors of prompt building and reply clean-up. ``str(err)`` is what a user or server admin sees."""

from __future__ import annotations


class PromptError(Exception):
    """A prompt cannot be built; the message says why and what to change."""


class PersonaTooLarge(PromptError):
    """The system prompt and persona block alone leave too little of the context for a conversation."""

    def __init__(self, message: str, *, needed: int, available: int) -> None:
        self.needed, self.available = needed, available
        super().__init__(message)


class EmptyReply(PromptError):
    """Nothing usable was left of a model reply after clean-up; the caller may retry the generation."""
