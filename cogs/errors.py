"""One error handler for every application command: specific, ephemeral messages; never a traceback.

Errors are handled by type, most specific first: our own user-facing errors and validation, Discord's check
failures (permissions, cooldowns, guild-only), transformer errors (bad option values), and finally anything
unexpected, which is logged with a short id the user can quote to an admin.
"""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from cogs._user_errors import CommandError, NotPermitted

if TYPE_CHECKING:
    from bot.client import RPBot

log = logging.getLogger(__name__)

__all__ = ["CommandError", "NotPermitted", "describe", "on_app_command_error", "respond"]

MAX_MESSAGE_CHARS = 1900  # Discord's limit is 2000; the channel fallback adds a mention


def describe(error: BaseException) -> tuple[str, bool]:
    """(message for the user, whether it is unexpected and must be logged with an id).

    Takes what a command raised (wrapped in CommandInvokeError by discord.py) or what a modal or view raised as is.
    """
    original = getattr(error, "original", None)
    if isinstance(error, app_commands.CommandInvokeError) and original is not None:
        error = original
    if not isinstance(error, app_commands.AppCommandError):
        from bot.cards import CardError
        from bot.generation.base import SamplerError
        from bot.moderation.filters import FilterError
        from bot.prompt import PromptError
        from bot.storage.personas import PersonaError

        if isinstance(error, CardError):
            return f"That card could not be imported: {error}", False
        if isinstance(error, PersonaError | FilterError | SamplerError | PromptError):
            return str(error), False
        if isinstance(error, discord.Forbidden):
            return "I lack a Discord permission needed for that here (check my role and the channel).", False
        return "", True
    if isinstance(error, CommandError | NotPermitted):
        return error.message, False
    if isinstance(error, app_commands.MissingPermissions):
        perms = ", ".join(p.replace("_", " ").title() for p in error.missing_permissions)
        return f"You need the {perms} permission for that.", False
    if isinstance(error, app_commands.BotMissingPermissions):
        perms = ", ".join(p.replace("_", " ").title() for p in error.missing_permissions)
        return f"I need the {perms} permission here for that.", False
    if isinstance(error, app_commands.CommandOnCooldown):
        return f"Slow down: try again {discord.utils.format_dt(_in(error.retry_after), 'R')}.", False
    if isinstance(error, app_commands.NoPrivateMessage):
        return "That command only works in a server.", False
    if isinstance(error, app_commands.TransformerError):
        return f"{error.value!r} is not a valid {error.type.name.lower()} here.", False
    if isinstance(error, app_commands.CheckFailure):
        return "You cannot use that command here.", False
    return "", True


def _in(seconds: float):
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) + timedelta(seconds=seconds)


async def respond(interaction: discord.Interaction, message: str) -> None:
    """Answer ephemerally whatever state the interaction is in; fall back to the channel when the token expired."""
    mentions = discord.AllowedMentions.none()
    if len(message) > MAX_MESSAGE_CHARS:
        # Errors may quote what the user typed (up to 6000 characters); Discord refuses a message over 2000.
        message = message[: MAX_MESSAGE_CHARS - 1] + "…"
    try:
        if interaction.response.is_done():
            await interaction.followup.send(message, ephemeral=True, allowed_mentions=mentions)
        else:
            await interaction.response.send_message(message, ephemeral=True, allowed_mentions=mentions)
    except discord.NotFound:
        channel = interaction.channel
        if isinstance(channel, discord.abc.Messageable):
            await channel.send(f"{interaction.user.mention} {message}", allowed_mentions=mentions)
    except discord.HTTPException as exc:
        log.warning("could not send an error reply: %s", exc)


async def on_app_command_error(interaction: discord.Interaction, error: BaseException) -> None:
    """The tree's error handler; modals and views of the cogs report their errors through it too."""
    message, unexpected = describe(error)
    if unexpected:
        error_id = secrets.token_hex(4)
        if interaction.command is not None:
            where = f"command /{interaction.command.qualified_name}"
        else:  # a modal or a component: its custom_id says which
            where = f"interaction {(interaction.data or {}).get('custom_id', '?')}"
        log.error("%s failed (error id %s)", where, error_id, exc_info=getattr(error, "original", error))
        message = f"Something went wrong on my side (error id `{error_id}`). An admin can find it in the bot's log."
    await respond(interaction, message)


class ErrorsCog(commands.Cog):
    def __init__(self, bot: RPBot) -> None:
        self.bot = bot
        self._previous = bot.tree.on_error

    async def cog_load(self) -> None:
        self.bot.tree.on_error = on_app_command_error  # type: ignore[assignment]

    async def cog_unload(self) -> None:
        self.bot.tree.on_error = self._previous  # type: ignore[method-assign]


async def setup(bot: RPBot) -> None:
    await bot.add_cog(ErrorsCog(bot))
