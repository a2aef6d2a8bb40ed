"""Errors whose message is meant for the Discord user, shown ephemerally by the handler in ``cogs.errors``.

They live in this plain module, not in the ``cogs.errors`` extension: discord.py re-executes an extension module
each time it loads (a restart in the same process, a reload), which would create new classes that ``isinstance``
checks against the old ones (still imported by plain modules such as ``cogs._permissions``) no longer match.
"""

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
