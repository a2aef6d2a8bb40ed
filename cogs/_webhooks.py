"""The one place that posts, edits and deletes persona messages in Discord.

Persona messages go through a channel webhook owned by the bot, so each persona speaks under its own name and
avatar. The avatar is stored as image bytes (attachment URLs expire), so the webhook itself carries the active
persona's avatar and is updated when another persona speaks in that channel. Without Manage Webhooks the poster
falls back to plain bot messages with the persona's name in bold, and tells the channel's admins once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import discord

from bot.chat.names import webhook_username
from bot.storage import channels as channel_repo
from bot.storage import guilds as guild_repo

if TYPE_CHECKING:
    from bot.client import RPBot

log = logging.getLogger(__name__)

WEBHOOK_NAME = "rpbot"
NO_MENTIONS = discord.AllowedMentions.none()
FALLBACK_NOTICE = (
    "I need the **Manage Webhooks** permission in this channel to speak as personas with their own name and "
    "avatar. Until then they speak through me, with their name in bold. (Server admins: grant it in the "
    "channel's or my role's permissions.)"
)


class MessageGone(Exception):
    """A persona message can no longer be edited (deleted, or its webhook was)."""


@dataclass(slots=True)
class Speaker:
    """Who a persona message is posted as."""

    persona_id: int
    name: str
    avatar: bytes | None = None


@dataclass(slots=True)
class Posted:
    """A message the poster sent: enough to edit or delete it later, also after a restart."""

    id: int
    channel_id: int  # the channel or thread it is in
    via_webhook: bool
    author_id: int


def _parent(channel: discord.abc.Messageable) -> discord.TextChannel | discord.ForumChannel | None:
    if isinstance(channel, discord.Thread):
        return channel.parent  # type: ignore[return-value]
    if isinstance(channel, discord.TextChannel):
        return channel
    return None


class PersonaPoster:
    def __init__(self, bot: RPBot) -> None:
        self.bot = bot
        self._webhooks: dict[int, discord.Webhook] = {}  # parent channel id -> webhook
        self._webhook_persona: dict[int, int | None] = {}  # webhook id -> persona whose avatar it carries
        self.own_webhook_ids: set[int] = set()

    async def load_known_webhooks(self) -> None:
        async with self.bot.db.session() as session:
            for row in await channel_repo.channels_with_webhook(session):
                if row.webhook_id is not None:
                    self.own_webhook_ids.add(row.webhook_id)

    async def forget_persona(self, persona_id: int) -> None:
        """The persona's avatar changed, or it was deleted and its id may be reused: webhooks dressed as it are
        dressed again before it next speaks."""
        for hook_id, dressed_as in list(self._webhook_persona.items()):
            if dressed_as == persona_id:
                self._webhook_persona[hook_id] = None
        async with self.bot.db.session() as session:
            await channel_repo.forget_webhook_persona(session, persona_id)

    def is_own_webhook(self, webhook_id: int | None) -> bool:
        return webhook_id is not None and webhook_id in self.own_webhook_ids

    # ---- webhooks ---------------------------------------------------------------------------------------------

    async def _webhook(self, channel: discord.abc.Messageable) -> discord.Webhook | None:
        """The bot's webhook for this channel (the parent, for threads); None without permission."""
        parent = _parent(channel)
        if parent is None:
            return None
        hook = self._webhooks.get(parent.id)
        if hook is not None:
            return hook
        async with self.bot.db.session() as session:
            row = await channel_repo.get_channel(session, parent.id)
            if row is not None and row.webhook_id and row.webhook_token:
                hook = discord.Webhook.partial(row.webhook_id, row.webhook_token, client=self.bot)
                self._webhook_persona[row.webhook_id] = row.webhook_persona_id
        if hook is None:
            hook = await self._create_webhook(parent)
        if hook is not None:
            self._webhooks[parent.id] = hook
            self.own_webhook_ids.add(hook.id)
        return hook

    async def _create_webhook(self, parent: discord.TextChannel | discord.ForumChannel) -> discord.Webhook | None:
        try:
            existing = [w for w in await parent.webhooks() if w.user and w.user.id == self.bot.user.id and w.token]
            hook = existing[0] if existing else await parent.create_webhook(name=WEBHOOK_NAME, reason="rpbot personas")
        except discord.Forbidden:
            return None
        async with self.bot.db.session() as session:
            await channel_repo.update_channel(
                session,
                parent.guild.id,
                parent.id,
                webhook_id=hook.id,
                webhook_token=hook.token,
                webhook_persona_id=None,
            )
        self._webhook_persona[hook.id] = None
        log.info("created webhook %s in channel %s", hook.id, parent.id)
        return hook

    async def _forget_webhook(self, channel: discord.abc.Messageable) -> None:
        parent = _parent(channel)
        if parent is None:
            return
        hook = self._webhooks.pop(parent.id, None)
        if hook is not None:
            self._webhook_persona.pop(hook.id, None)
        async with self.bot.db.session() as session:
            await channel_repo.update_channel(
                session, parent.guild.id, parent.id, webhook_id=None, webhook_token=None, webhook_persona_id=None
            )

    async def _dress(self, hook: discord.Webhook, channel: discord.abc.Messageable, speaker: Speaker) -> None:
        """Give the webhook the speaker's avatar when another persona spoke last through it."""
        if self._webhook_persona.get(hook.id) == speaker.persona_id:
            return
        try:
            await hook.edit(avatar=speaker.avatar, reason="persona avatar")
        except discord.HTTPException as exc:
            log.warning("could not set the webhook avatar for persona %s: %s", speaker.persona_id, exc)
            return
        self._webhook_persona[hook.id] = speaker.persona_id
        parent = _parent(channel)
        if parent is not None:
            async with self.bot.db.session() as session:
                await channel_repo.update_channel(
                    session, parent.guild.id, parent.id, webhook_persona_id=speaker.persona_id
                )

    # ---- sending ----------------------------------------------------------------------------------------------

    async def send(
        self, channel: discord.abc.Messageable, speaker: Speaker, content: str, *, view: discord.ui.View | None = None
    ) -> Posted:
        thread = channel if isinstance(channel, discord.Thread) else discord.utils.MISSING
        for _attempt in range(2):
            hook = await self._webhook(channel)
            if hook is None:
                break
            try:
                await self._dress(hook, channel, speaker)
                kwargs = {"view": view} if view is not None else {}
                msg = await hook.send(
                    content,
                    username=webhook_username(speaker.name),
                    allowed_mentions=NO_MENTIONS,
                    wait=True,
                    thread=thread,
                    **kwargs,
                )
                return Posted(msg.id, msg.channel.id if msg.channel else channel.id, True, hook.id)
            except discord.NotFound:
                log.warning("the webhook for channel %s was deleted; creating a new one", channel.id)
                await self._forget_webhook(channel)
            except discord.Forbidden:
                await self._forget_webhook(channel)
                break
        return await self._send_fallback(channel, speaker, content, view)

    async def _send_fallback(
        self, channel: discord.abc.Messageable, speaker: Speaker, content: str, view: discord.ui.View | None
    ) -> Posted:
        await self._notice_once(channel)
        text = f"**{discord.utils.escape_markdown(speaker.name)}**: {content}"[:2000]
        kwargs = {"view": view} if view is not None else {}
        msg = await channel.send(text, allowed_mentions=NO_MENTIONS, **kwargs)
        return Posted(msg.id, channel.id, False, self.bot.user.id)

    async def _notice_once(self, channel: discord.abc.Messageable) -> None:
        guild = getattr(channel, "guild", None)
        if guild is None:
            return
        async with self.bot.db.session() as session:
            settings = await guild_repo.get_guild(session, guild.id)
            if settings.webhook_notice_sent:
                return
            settings.webhook_notice_sent = True
        log.warning("no Manage Webhooks permission in guild %s channel %s; using plain messages", guild.id, channel.id)
        try:
            await channel.send(FALLBACK_NOTICE, allowed_mentions=NO_MENTIONS)
        except discord.HTTPException as exc:
            log.warning("could not post the webhook permission notice: %s", exc)

    async def edit(
        self,
        channel: discord.abc.Messageable,
        posted: Posted,
        speaker: Speaker,
        content: str,
        *,
        view: discord.ui.View | object | None = discord.utils.MISSING,
    ) -> None:
        kwargs = {} if view is discord.utils.MISSING else {"view": view}
        if posted.via_webhook:
            hook = await self._webhook(channel)
            if hook is None or hook.id != posted.author_id:
                raise MessageGone(f"the webhook that posted message {posted.id} is gone")
            thread = channel if isinstance(channel, discord.Thread) else discord.utils.MISSING
            try:
                await hook.edit_message(
                    posted.id, content=content, allowed_mentions=NO_MENTIONS, thread=thread, **kwargs
                )
            except discord.NotFound:
                raise MessageGone(f"message {posted.id} or its webhook was deleted") from None
        else:
            text = f"**{discord.utils.escape_markdown(speaker.name)}**: {content}"[:2000]
            try:
                await channel.get_partial_message(posted.id).edit(content=text, allowed_mentions=NO_MENTIONS, **kwargs)
            except discord.NotFound:
                raise MessageGone(f"message {posted.id} was deleted") from None

    async def delete(self, channel: discord.abc.Messageable, posted: Posted) -> None:
        try:
            if posted.via_webhook:
                hook = await self._webhook(channel)
                if hook is not None and hook.id == posted.author_id:
                    thread = channel if isinstance(channel, discord.Thread) else discord.utils.MISSING
                    await hook.delete_message(posted.id, thread=thread)
                    return
            await channel.get_partial_message(posted.id).delete()
        except discord.NotFound:
            pass
