"""A cog that owns one slash-command group and works beside the chat cog (personas, chat settings, admin)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from discord import app_commands
from discord.ext import commands

if TYPE_CHECKING:
    from bot.client import RPBot
    from cogs.chat import ChatCog


class GroupCog(commands.Cog):
    """Registers ``self.group`` on load and removes it on unload; ``chat`` is the live chat cog, if loaded."""

    group: app_commands.Group

    def __init__(self, bot: RPBot) -> None:
        self.bot = bot

    @property
    def chat(self) -> ChatCog | None:
        return self.bot.get_cog("ChatCog")  # type: ignore[return-value]

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.group)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.group.name)
