"""Moderation: /admin commands, /forget-me, the "Reply info" message command, and message retention."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import tasks

from bot.moderation.filters import MAX_FILTERS_PER_GUILD, FilterError, compile_filter
from bot.storage import generations as gen_repo
from bot.storage import guilds as guild_repo
from bot.storage import messages as msg_repo
from bot.storage import moderation as mod_repo
from bot.storage.models import Persona
from cogs._group_cog import GroupCog
from cogs._permissions import has_manage_guild, is_moderator, require_manage_guild
from cogs._user_errors import CommandError, NotPermitted

if TYPE_CHECKING:
    from bot.client import RPBot

log = logging.getLogger(__name__)

MANAGE_GUILD = discord.Permissions(manage_guild=True)
MANAGE_MESSAGES = discord.Permissions(manage_messages=True)
NO_MENTIONS = discord.AllowedMentions.none()
RETENTION_CHECK_HOURS = 1.0
MAX_RATELIMIT_COUNT = 1000
MAX_RATELIMIT_SECONDS = 86_400
MESSAGE_MAX = 2000  # Discord's limit on a message's content
CHOICE_VALUE_MAX = 100  # Discord's limit on an autocomplete choice's value


def _fmt_time(when: datetime | None) -> str:
    if when is None:
        return "?"
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return discord.utils.format_dt(when, "f")


def _listing(title: str, lines: list[str]) -> str:
    """A bold title and as many whole lines as fit in one message, then how many were left out."""
    reserve = len(f"\n…and {len(lines)} more")
    shown: list[str] = []
    size = len(title) + 4
    for line in lines:
        if size + 1 + len(line) + reserve > MESSAGE_MAX:
            break
        shown.append(line)
        size += 1 + len(line)
    text = "\n".join([f"**{title}**", *shown])
    if len(shown) < len(lines):
        text += f"\n…and {len(lines) - len(shown)} more"
    return text


def _code(text: str) -> str:
    """Show a pattern verbatim: markdown is not parsed in a code span (escaping would show the backslashes), and
    a backtick, the only character that could end the span, is shown as a look-alike."""
    return "`" + text.replace("`", "\u02cb") + "`"


_TARGET_MENTIONS = {"user": "<@{}>", "channel": "<#{}>", "role": "<@&{}>"}


def _audit_target(target: str) -> str:
    """Audit targets are stored as "user 123"; show them as mentions (never pinging: mentions are disabled)."""
    kind, _, ident = target.partition(" ")
    template = _TARGET_MENTIONS.get(kind)
    return template.format(ident) if template and ident.isdigit() else target


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class AdminGroup(app_commands.Group, name="admin", description="Moderate personas in this server"):
    filter = app_commands.Group(name="filter", description="Words or patterns withheld from persona replies")

    def __init__(self, cog: AdminCog) -> None:
        super().__init__()
        self.cog = cog

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        require_manage_guild(interaction)  # Discord's default permissions can be changed by admins: check again
        return True

    @property
    def bot(self) -> RPBot:
        return self.cog.bot

    async def _audit(self, interaction: discord.Interaction, action: str, target: str = "", **details: object) -> None:
        async with self.bot.db.session() as session:
            await mod_repo.audit(session, interaction.guild_id, interaction.user.id, action, target, **details)

    def _changed(self, guild_id: int) -> None:
        chat = self.cog.chat
        if chat is not None:
            chat.invalidate_guild(guild_id)

    # -- users --

    @app_commands.command(name="block", description="Personas ignore this user in this server")
    @app_commands.describe(user="Who to block", reason="Why (shown in the audit log)")
    async def block(self, interaction: discord.Interaction, user: discord.User, reason: str | None = None) -> None:
        assert interaction.guild_id is not None
        if user.bot:
            raise CommandError("Bots are never answered anyway; block a person instead.")
        async with self.bot.db.session() as session:
            added = await mod_repo.block_user(session, interaction.guild_id, user.id, interaction.user.id, reason or "")
        if not added:
            raise CommandError(f"{user.mention} is already blocked.")
        self._changed(interaction.guild_id)
        # Replies they asked for before the block are not written either.
        pending = self.bot.queue.requests(interaction.guild_id) if self.bot.queue else []
        cancelled = sum(req.cancel() for req in pending if req.job.user_id == user.id)
        await self._audit(interaction, "admin.block", f"user {user.id}", reason=reason or "", cancelled=cancelled)
        text = f"Blocked {user.mention}: personas will ignore them here."
        if cancelled:
            text += f" {cancelled} pending replies to them were cancelled."
        await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NO_MENTIONS)

    @app_commands.command(name="unblock", description="Let a blocked user talk to personas again")
    async def unblock(self, interaction: discord.Interaction, user: discord.User) -> None:
        assert interaction.guild_id is not None
        async with self.bot.db.session() as session:
            removed = await mod_repo.unblock_user(session, interaction.guild_id, user.id)
        if not removed:
            raise CommandError(f"{user.mention} is not blocked.")
        await self._audit(interaction, "admin.unblock", f"user {user.id}")
        self._changed(interaction.guild_id)
        await interaction.response.send_message(
            f"Unblocked {user.mention}.", ephemeral=True, allowed_mentions=NO_MENTIONS
        )

    @app_commands.command(name="blocklist", description="Users personas ignore in this server")
    async def blocklist(self, interaction: discord.Interaction) -> None:
        assert interaction.guild_id is not None
        async with self.bot.db.session() as session:
            rows = await mod_repo.blocked_users(session, interaction.guild_id)
        if not rows:
            text = "Nobody is blocked."
        else:
            lines = [
                f"<@{r.user_id}> since {_fmt_time(r.created_at)}" + (f": {r.reason}" if r.reason else "") for r in rows
            ]
            text = _listing("Blocked users", lines)
        await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NO_MENTIONS)

    @app_commands.command(name="forget", description="Delete everything a user said from the bot's memory here")
    async def forget(self, interaction: discord.Interaction, user: discord.User) -> None:
        assert interaction.guild_id is not None
        count = await self.cog.forget(user.id, interaction.guild_id)
        await self._audit(interaction, mod_repo.ADMIN_FORGET, f"user {user.id}", messages=count)
        await interaction.response.send_message(
            f"Deleted {count} stored message(s) of {user.mention} in this server.",
            ephemeral=True,
            allowed_mentions=NO_MENTIONS,
        )

    # -- the whole guild --

    @app_commands.command(name="pause", description="Stop all persona replies in this server")
    async def pause(self, interaction: discord.Interaction) -> None:
        assert interaction.guild_id is not None
        async with self.bot.db.session() as session:
            await guild_repo.update_guild(session, interaction.guild_id, paused=True)
        # Chat must see the pause before the queue is emptied, so nothing it is preparing is submitted after.
        self._changed(interaction.guild_id)
        cancelled = self.bot.queue.cancel_guild(interaction.guild_id) if self.bot.queue else 0
        await self._audit(interaction, "admin.pause", cancelled=cancelled)
        await interaction.response.send_message(
            f"Personas are paused in this server ({cancelled} queued or running replies cancelled). "
            "Use /admin resume to let them talk again.",
            ephemeral=True,
        )

    @app_commands.command(name="resume", description="Let personas reply again in this server")
    async def resume(self, interaction: discord.Interaction) -> None:
        assert interaction.guild_id is not None
        async with self.bot.db.session() as session:
            await guild_repo.update_guild(session, interaction.guild_id, paused=False)
        await self._audit(interaction, "admin.resume")
        self._changed(interaction.guild_id)
        await interaction.response.send_message("Personas may reply again in this server.", ephemeral=True)

    @app_commands.command(name="ratelimit", description="Replies each user may get per time window")
    @app_commands.describe(count="Replies per window (0 = no limit)", seconds="Window length in seconds")
    async def ratelimit(
        self,
        interaction: discord.Interaction,
        count: app_commands.Range[int, 0, MAX_RATELIMIT_COUNT],
        seconds: app_commands.Range[int, 1, MAX_RATELIMIT_SECONDS],
    ) -> None:
        assert interaction.guild_id is not None
        async with self.bot.db.session() as session:
            await guild_repo.update_guild(
                session, interaction.guild_id, ratelimit_count=count, ratelimit_seconds=seconds
            )
        await self._audit(interaction, "admin.ratelimit", count=count, seconds=seconds)
        self._changed(interaction.guild_id)
        text = "No reply limit per user." if count == 0 else f"Each user gets at most {count} replies per {seconds} s."
        await interaction.response.send_message(text, ephemeral=True)

    @app_commands.command(name="nsfw-only", description="Whether personas reply only in age-restricted channels")
    async def nsfw_only(self, interaction: discord.Interaction, enabled: bool) -> None:
        assert interaction.guild_id is not None
        async with self.bot.db.session() as session:
            await guild_repo.update_guild(session, interaction.guild_id, nsfw_only=enabled)
        await self._audit(interaction, "admin.nsfw-only", enabled=enabled)
        self._changed(interaction.guild_id)
        text = (
            "Personas reply only in age-restricted (NSFW) channels."
            if enabled
            else "Personas now reply in every channel where they are active. The model is not safety-tuned: "
            "use output filters and keep an eye on it."
        )
        await interaction.response.send_message(text, ephemeral=True)

    @app_commands.command(name="persona-role", description="A role that may manage personas (besides Manage Channels)")
    @app_commands.describe(role="The role; leave empty to remove it")
    async def persona_role(self, interaction: discord.Interaction, role: discord.Role | None = None) -> None:
        assert interaction.guild_id is not None
        async with self.bot.db.session() as session:
            await guild_repo.update_guild(
                session, interaction.guild_id, persona_manager_role_id=role.id if role else None
            )
        await self._audit(interaction, "admin.persona-role", f"role {role.id}" if role else "none")
        text = (
            f"Members with {role.mention} may now manage personas." if role else "The persona manager role is removed."
        )
        await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NO_MENTIONS)

    # -- generation --

    @app_commands.command(name="queue", description="Replies queued and being written in this server")
    async def queue(self, interaction: discord.Interaction) -> None:
        assert interaction.guild_id is not None
        queue = self.bot.queue
        requests = queue.requests(interaction.guild_id) if queue else []
        if not requests:
            await interaction.response.send_message("Nothing is queued or running in this server.", ephemeral=True)
            return
        lines = []
        for req in requests:
            where = f"<#{req.job.channel_id}>"
            state = "writing" if req.position == 0 else f"#{req.position} in queue"
            who = f" for <@{req.job.user_id}>" if req.job.user_id else ""
            lines.append(f"- {state}: {req.job.label or 'reply'} in {where}{who} ({req.waited_seconds:.0f}s)")
        await interaction.response.send_message(
            _listing("Generation queue", lines), ephemeral=True, allowed_mentions=NO_MENTIONS
        )

    @app_commands.command(name="cancel", description="Cancel queued and running replies (in one channel or all)")
    async def cancel(
        self, interaction: discord.Interaction, channel: discord.TextChannel | discord.Thread | None = None
    ) -> None:
        assert interaction.guild_id is not None
        queue = self.bot.queue
        if queue is None:
            count = 0
        elif channel is not None:
            count = queue.cancel_channel(channel.id)
        else:
            count = queue.cancel_guild(interaction.guild_id)
        await self._audit(interaction, "admin.cancel", f"channel {channel.id}" if channel else "guild", cancelled=count)
        where = channel.mention if channel else "this server"
        await interaction.response.send_message(f"Cancelled {count} replies in {where}.", ephemeral=True)

    @app_commands.command(name="audit", description="Recent admin and persona actions")
    async def audit(self, interaction: discord.Interaction, limit: app_commands.Range[int, 1, 50] = 15) -> None:
        assert interaction.guild_id is not None
        async with self.bot.db.session() as session:
            rows = await mod_repo.recent_audit(session, interaction.guild_id, limit)
        if not rows:
            await interaction.response.send_message("No actions recorded yet.", ephemeral=True)
            return
        lines = []
        for row in rows:
            details = ", ".join(f"{k}={v}" for k, v in (row.details or {}).items() if v not in ("", None))
            actor = f"<@{row.actor_id}>" if row.actor_id else "the bot"
            line = f"{_fmt_time(row.created_at)} {actor} **{row.action}** {_audit_target(row.target)}"
            lines.append(line.rstrip() + (f" ({details})" if details else ""))
        embed = discord.Embed(title="Audit log", description="\n".join(lines)[:4000])
        await interaction.response.send_message(embed=embed, ephemeral=True, allowed_mentions=NO_MENTIONS)

    # -- output filters --

    @filter.command(name="add", description="Withhold persona replies that contain a word or match a pattern")
    @app_commands.describe(pattern="A word, or a regular expression with regex=True", regex="Treat it as a regex")
    async def filter_add(
        self, interaction: discord.Interaction, pattern: app_commands.Range[str, 1, 200], regex: bool = False
    ) -> None:
        assert interaction.guild_id is not None
        try:
            compiled = compile_filter(pattern, is_regex=regex)
        except FilterError as exc:
            raise CommandError(str(exc)) from None
        async with self.bot.db.session() as session:
            if len(await mod_repo.list_filters(session, interaction.guild_id)) >= MAX_FILTERS_PER_GUILD:
                raise CommandError(f"A server can have at most {MAX_FILTERS_PER_GUILD} filters; remove one first.")
            row = await mod_repo.add_filter(
                session, interaction.guild_id, compiled.pattern, is_regex=regex, by=interaction.user.id
            )
            if row is None:
                raise CommandError("That filter exists already.")
            await mod_repo.audit(
                session, interaction.guild_id, interaction.user.id, "admin.filter.add", compiled.pattern, regex=regex
            )
        self._changed(interaction.guild_id)
        await interaction.response.send_message(f"Added filter {_code(compiled.pattern)}.", ephemeral=True)

    @filter.command(name="remove", description="Remove an output filter")
    async def filter_remove(self, interaction: discord.Interaction, pattern: str) -> None:
        assert interaction.guild_id is not None
        pattern = pattern.strip()
        async with self.bot.db.session() as session:
            stored = [r.pattern for r in await mod_repo.list_filters(session, interaction.guild_id)]
            if pattern not in stored and len(pattern) == CHOICE_VALUE_MAX:
                # Autocomplete values are cut to Discord's limit: a longer pattern comes back as its prefix.
                longer = [p for p in stored if p.startswith(pattern)]
                pattern = longer[0] if len(longer) == 1 else pattern
            if not await mod_repo.remove_filter(session, interaction.guild_id, pattern):
                raise CommandError("No such filter; see /admin filter list.")
            await mod_repo.audit(session, interaction.guild_id, interaction.user.id, "admin.filter.remove", pattern)
        self._changed(interaction.guild_id)
        await interaction.response.send_message("Filter removed.", ephemeral=True)

    @filter_remove.autocomplete("pattern")
    async def _filter_names(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        # Autocomplete skips the group's interaction_check, and the patterns are for moderators' eyes only.
        if interaction.guild_id is None or not has_manage_guild(interaction):
            return []
        async with self.bot.db.session() as session:
            rows = await mod_repo.list_filters(session, interaction.guild_id)
        return [
            app_commands.Choice(name=r.pattern[:CHOICE_VALUE_MAX], value=r.pattern[:CHOICE_VALUE_MAX])
            for r in rows
            if current.lower() in r.pattern.lower()
        ][:25]

    @filter.command(name="list", description="Output filters of this server")
    async def filter_list(self, interaction: discord.Interaction) -> None:
        assert interaction.guild_id is not None
        async with self.bot.db.session() as session:
            rows = await mod_repo.list_filters(session, interaction.guild_id)
        if not rows:
            text = "No output filters."
        else:
            lines = [f"- {_code(r.pattern)}" + (" (regex)" if r.is_regex else "") for r in rows]
            text = _listing("Output filters", lines)
        await interaction.response.send_message(text, ephemeral=True)


class AdminCog(GroupCog):
    def __init__(self, bot: RPBot) -> None:
        super().__init__(bot)
        self.group = AdminGroup(self)
        # Discord reads ``contexts`` (dm_permission, which guild_only sets, is deprecated), so pass both.
        self.reply_info_menu = app_commands.ContextMenu(
            name="Reply info", callback=self.reply_info, allowed_contexts=app_commands.AppCommandContext(guild=True)
        )
        self.reply_info_menu.guild_only = True
        self.reply_info_menu.default_permissions = MANAGE_MESSAGES

    async def cog_load(self) -> None:
        await super().cog_load()
        self.bot.tree.add_command(self.reply_info_menu)
        if self.bot.settings.message_retention_days > 0:
            self.retention.start()

    async def cog_unload(self) -> None:
        await super().cog_unload()
        self.bot.tree.remove_command(self.reply_info_menu.name, type=self.reply_info_menu.type)
        self.retention.cancel()

    async def forget(self, user_id: int, guild_id: int | None = None) -> int:
        """Delete a user's stored messages (in one guild, or everywhere). Through the chat cog when it runs: it keeps
        recent history in memory and writes behind, and both must lose the messages too."""
        chat = self.chat
        if chat is not None:
            return await chat.forget_user(user_id, guild_id)
        async with self.bot.db.session() as session:
            return await msg_repo.forget_user(session, user_id, guild_id)

    @app_commands.command(name="forget-me", description="Delete everything you said from the bot's memory")
    async def forget_me(self, interaction: discord.Interaction) -> None:
        count = await self.forget(interaction.user.id)
        async with self.bot.db.session() as session:
            await mod_repo.audit(
                session,
                interaction.guild_id,
                interaction.user.id,
                mod_repo.FORGET_ME,
                f"user {interaction.user.id}",
                messages=count,
            )
        await interaction.response.send_message(
            f"Done: {count} stored message(s) of yours were deleted, in every server. Personas no longer remember "
            "them.",
            ephemeral=True,
        )

    async def reply_info(self, interaction: discord.Interaction, message: discord.Message) -> None:
        if interaction.guild is None:
            raise CommandError("Reply info only works in a server.")
        if not is_moderator(interaction):
            raise NotPermitted("You need the Manage Messages permission for Reply info.")
        async with self.bot.db.session() as session:
            gen = await gen_repo.by_reply_message(session, message.id)
            persona = await session.get(Persona, gen.persona_id) if gen and gen.persona_id else None
        if gen is None or gen.guild_id != interaction.guild.id:
            raise CommandError("That message is not a persona reply I know of.")
        sampler = ", ".join(f"{k}={v}" for k, v in (gen.sampler or {}).items() if k != "via_webhook" and v is not None)
        embed = discord.Embed(title="Reply info")
        embed.add_field(name="Triggered by", value=f"<@{gen.user_id}> ({gen.user_id})" if gen.user_id else "unknown")
        embed.add_field(name="Persona", value=persona.name if persona else "(deleted)")
        embed.add_field(name="When", value=_fmt_time(gen.queued_at))
        embed.add_field(name="Trigger message", value=str(gen.trigger_message_id or "-"))
        embed.add_field(name="Tokens", value=f"prompt {gen.prompt_tokens or 0}, reply {gen.completion_tokens or 0}")
        embed.add_field(name="Status", value=f"{gen.status.value} ({gen.finish_reason or '-'})")
        embed.add_field(name="Swipes", value=f"{gen.selected_index + 1}/{max(1, len(gen.alternatives))}")
        if sampler:
            embed.add_field(name="Settings", value=sampler[:1000], inline=False)
        async with self.bot.db.session() as session:
            await mod_repo.audit(
                session, interaction.guild.id, interaction.user.id, "reply-info", f"message {message.id}"
            )
        await interaction.response.send_message(embed=embed, ephemeral=True, allowed_mentions=NO_MENTIONS)

    @tasks.loop(hours=RETENTION_CHECK_HOURS)
    async def retention(self) -> None:
        days = self.bot.settings.message_retention_days
        cutoff = datetime.now(UTC) - timedelta(days=days)
        chat = self.chat
        try:
            if chat is not None:  # it holds recent history in memory, which must lose the messages too
                purged = await chat.purge_older_than(cutoff)
            else:
                async with self.bot.db.session() as session:
                    purged = await msg_repo.purge_older_than(session, cutoff)
            if purged:
                async with self.bot.db.session() as session:
                    await mod_repo.audit(session, None, None, "retention.purge", f"{days} days", messages=purged)
        except Exception:
            log.exception("message retention purge failed; will retry")
            return
        if purged:
            log.info("retention: deleted %d messages older than %d days", purged, days)

    @retention.before_loop
    async def _before_retention(self) -> None:
        await asyncio.sleep(0)


async def setup(bot: RPBot) -> None:
    await bot.add_cog(AdminCog(bot))
