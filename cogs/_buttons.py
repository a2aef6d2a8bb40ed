"""Reply buttons: swipe, regenerate, continue, delete.

The generation id lives in each button's custom id (``DynamicItem``), so buttons keep working after a restart
without any view being kept in memory.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import discord

if TYPE_CHECKING:
    from cogs.chat import ChatCog

ACTIONS = ("prev", "next", "regen", "cont", "del")


def _cog(interaction: discord.Interaction) -> ChatCog:
    cog = interaction.client.get_cog("ChatCog")  # type: ignore[union-attr]
    if cog is None:
        raise RuntimeError("the chat cog is not loaded")
    return cog  # type: ignore[return-value]


class ReplyButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"rpbot:(?P<action>[a-z]+):(?P<gen>\d+)"):
    def __init__(
        self,
        action: str,
        generation_id: int,
        *,
        label: str | None = None,
        emoji: str | None = None,
        style: discord.ButtonStyle = discord.ButtonStyle.secondary,
        disabled: bool = False,
    ) -> None:
        self.action = action
        self.generation_id = generation_id
        super().__init__(
            discord.ui.Button(
                label=label,
                emoji=emoji,
                style=style,
                disabled=disabled,
                custom_id=f"rpbot:{action}:{generation_id}",
            )
        )

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button[Any], match: re.Match[str], /
    ) -> ReplyButton:
        action = match["action"]
        if action not in ACTIONS:
            raise ValueError(f"unknown reply button action {action!r}")
        return cls(action, int(match["gen"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await _cog(interaction).on_reply_button(interaction, self.action, self.generation_id)


def reply_view(generation_id: int, index: int, count: int) -> discord.ui.View:
    """Buttons for the latest persona reply: ◀ n/m ▶, Regenerate, Continue, Delete."""
    view = discord.ui.View(timeout=None)
    if count > 1:
        view.add_item(ReplyButton("prev", generation_id, emoji="◀️", disabled=index <= 0))
        view.add_item(
            discord.ui.Button(label=f"{index + 1}/{count}", disabled=True, custom_id=f"rpbot:pos:{generation_id}")
        )
        view.add_item(ReplyButton("next", generation_id, emoji="▶️", disabled=index >= count - 1))
    view.add_item(ReplyButton("regen", generation_id, emoji="🔄", label="Regenerate"))
    view.add_item(ReplyButton("cont", generation_id, emoji="➡️", label="Continue"))
    view.add_item(ReplyButton("del", generation_id, emoji="🗑️", style=discord.ButtonStyle.danger))
    return view


def retry_view(generation_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(ReplyButton("regen", generation_id, emoji="🔄", label="Try again"))
    return view
