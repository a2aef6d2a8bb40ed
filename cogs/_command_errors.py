"""Errors commands raise for the user to see. Not in ``cogs.errors``: discord.py executes an extension module afresh
on every load, so classes defined there would differ between the copy the handler checks and the copy a helper
module imported earlier (a second bot in one process, or a reload), and ``isinstance`` would quietly fail."""

from __future__ import annotations

from discord import app_commands


class CommandError(app_commands.AppCommandError):
    """Raise from a command to show ``message`` to the user (ephemeral), with nothing logged as an error."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class NotPermitted(app_commands.CheckFailure):
    """The member lacks what the command needs; the message says what that is."""

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)
