"""Run-time permission checks. ``default_permissions`` is only Discord's default, which server admins can change,
so every staff command checks the member's real permissions again when it runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord

from bot.storage import guilds as guild_repo
from cogs._user_errors import NotPermitted

if TYPE_CHECKING:
    from bot.client import RPBot


def _member(interaction: discord.Interaction) -> discord.Member:
    if interaction.guild is None or not isinstance(interaction.user, discord.Member):
        raise NotPermitted("That command only works in a server.")
    return interaction.user


async def require_persona_manager(interaction: discord.Interaction) -> discord.Member:
    """Manage Channels in this channel, or the guild's persona-manager role."""
    member = _member(interaction)
    if member.resolved_permissions is not None and member.resolved_permissions.manage_channels:
        return member
    if interaction.permissions.manage_channels or interaction.permissions.administrator:
        return member
    bot: RPBot = interaction.client  # type: ignore[assignment]
    async with bot.db.session() as session:
        role_id = (await guild_repo.get_guild(session, member.guild.id)).persona_manager_role_id
    if role_id is not None and any(r.id == role_id for r in member.roles):
        return member
    raise NotPermitted("You need the Manage Channels permission (or the server's persona manager role) for that.")


def has_manage_guild(interaction: discord.Interaction) -> bool:
    perms = interaction.permissions
    return interaction.guild is not None and (perms.manage_guild or perms.administrator)


def require_manage_guild(interaction: discord.Interaction) -> discord.Member:
    member = _member(interaction)
    if has_manage_guild(interaction):
        return member
    raise NotPermitted("You need the Manage Server permission for that.")


def is_moderator(interaction: discord.Interaction) -> bool:
    perms = interaction.permissions
    return perms.manage_messages or perms.manage_guild or perms.administrator
