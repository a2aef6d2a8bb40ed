"""The in-process Discord API emulator: world state, gateway and REST on one aiohttp server, and the test driver.

The real discord.py client (our ``RPBot``) connects to it through ``Settings.discord_api_url`` and
``discord_gateway_url``. Tests build a world with the factories (``create_guild``, ``create_user``...), act as users
with the driver (``user_message``, ``slash_command``, ``click_button``...) and look at what the bot did
(``wait_for_message``, ``sent_messages``, ``requests``). See README.md in this folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import mimetypes
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

from aiohttp import web

from tests.discord_emulator import models as m
from tests.discord_emulator.faults import FaultRule
from tests.discord_emulator.gateway import (
    INTENT_DIRECT_MESSAGES,
    INTENT_GUILD_MEMBERS,
    INTENT_GUILD_MESSAGES,
    INTENT_GUILDS,
    INTENT_MESSAGE_CONTENT,
    Gateway,
    GatewayEvent,
    GatewaySession,
)
from tests.discord_emulator.interactions import InteractionBuilder, InteractionHandle
from tests.discord_emulator.recording import RecordedRequest
from tests.discord_emulator.rest import RestApi
from tests.discord_emulator.snowflake import SnowflakeFactory, iso, utcnow

T = TypeVar("T")

_USER_MENTION = re.compile(r"<@!?(\d+)>")
_ROLE_MENTION = re.compile(r"<@&(\d+)>")
POLL_INTERVAL = 0.01
_BREAKS = ("server_disconnect", "disconnected", "invalidated", "reconnect_requested", "closed")
DM_APP_PERMISSIONS = (
    m.VIEW_CHANNEL | m.SEND_MESSAGES | m.EMBED_LINKS | m.ATTACH_FILES | m.READ_MESSAGE_HISTORY | m.ADD_REACTIONS
)


Upload = m.Upload
UploadLike = m.Upload | tuple[str, bytes]


class DiscordEmulator:
    """Discord's REST API and gateway for one application and its bot user, on ``127.0.0.1`` and a free port.

    Use ``await emu.start()`` / ``await emu.stop()`` (the ``emulator`` fixture does both).
    """

    def __init__(
        self,
        *,
        token: str = "emulator-bot-token",
        bot_name: str = "RPBot",
        recommended_shards: int = 1,
        heartbeat_interval_ms: int = 41_250,
        default_timeout: float = 5.0,
    ) -> None:
        self.snowflakes = SnowflakeFactory()
        self.token = token
        self.default_timeout = default_timeout
        self.recommended_shards = recommended_shards
        self.bot_user = m.User(self.snowflakes.next(), bot_name, bot=True, discriminator="0001")
        self.application_id = self.bot_user.id  # modern applications share the bot user's id
        self.application_flags = 1 << 19  # GATEWAY_MESSAGE_CONTENT_LIMITED: the intent is allowed
        self.app_owner = m.User(self.snowflakes.next(), "app-owner")

        self.users: dict[int, m.User] = {u.id: u for u in (self.bot_user, self.app_owner)}
        self.guilds: dict[int, m.Guild] = {}
        self.channels: dict[int, m.Channel] = {}
        self.messages: dict[int, m.Message] = {}
        self.channel_messages: dict[int, list[m.Message]] = {}
        self.webhooks: dict[int, m.Webhook] = {}
        self.commands: dict[int | None, dict[tuple[str, int], m.AppCommand]] = {}
        self.command_syncs: list[tuple[int | None, float]] = []
        self.interactions: dict[int, InteractionHandle] = {}
        self.files: dict[int, m.Attachment] = {}
        self.requests: list[RecordedRequest] = []
        self.faults: list[FaultRule] = []
        self.internal_errors: list[str] = []
        # Interactions: Discord drops a response later than 3 s (set a number to enforce it) and the token after 15 min.
        self.interaction_deadline: float | None = None
        self.token_lifetime: float = 900.0

        self.gateway = Gateway(self, heartbeat_interval_ms=heartbeat_interval_ms)
        self.rest = RestApi(self)
        self.interaction_builder = InteractionBuilder(self)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self._changed = asyncio.Event()
        self._mark = 0  # id of the latest driver action; waits look at what came after it

    # ---- server lifecycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self.gateway.handle)
        app.router.add_get("/gateway/resume", self.gateway.handle)
        app.router.add_get("/attachments/{channel_id}/{attachment_id}/{filename}", self.rest.serve_attachment)
        app.router.add_route("*", r"/api/v{version:\d+}/{tail:.*}", self.rest.handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        await self.gateway.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> DiscordEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the emulator is not started; await emu.start() first")
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        """For ``Settings.discord_api_url``."""
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        """For ``Settings.discord_gateway_url``."""
        return f"ws://127.0.0.1:{self.port}/gateway"

    # ---- change notification and waiting ------------------------------------------------------------------------

    def notify(self) -> None:
        """Wake everything waiting in wait_until (called after every state change)."""
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def wait_until(self, predicate: Callable[[], T | None], what: str, timeout: float | None = None) -> T:
        """Wait until ``predicate()`` is truthy and return its value; TimeoutError says what was awaited."""
        timeout = self.default_timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}\n{self.describe()}")
            # Wake on emulator changes at once, and poll often for predicates about the bot's own state.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, POLL_INTERVAL))

    def describe(self, last: int = 12) -> str:
        """A short account of recent activity, for failure messages."""
        lines = ["recent REST requests:"]
        lines += [f"  {r!r}" for r in self.requests[-last:]] or ["  (none)"]
        lines.append("recent messages:")
        recent = sorted(self.messages.values(), key=lambda msg: msg.id)[-last:]
        lines += [f"  {msg!r}" for msg in recent] or ["  (none)"]
        if self.internal_errors:
            lines.append("emulator errors:")
            lines += [f"  {e.splitlines()[0]}" for e in self.internal_errors]
        return "\n".join(lines)

    def _set_mark(self, snowflake: int) -> None:
        self._mark = snowflake

    # ---- factories ----------------------------------------------------------------------------------------------

    def create_user(self, username: str, *, global_name: str | None = None, bot: bool = False) -> m.User:
        user = m.User(self.snowflakes.next(), username, global_name=global_name, bot=bot)
        self.users[user.id] = user
        return user

    async def create_guild(
        self,
        name: str = "Test Guild",
        *,
        channels: Sequence[str] = ("general",),
        owner: m.User | None = None,
        everyone_permissions: Any = m.DEFAULT_EVERYONE_PERMISSIONS,
        bot_permissions: Any = m.DEFAULT_BOT_PERMISSIONS,
        locale: str = "en-US",
    ) -> m.Guild:
        """A guild the bot is in, with @everyone, the bot's managed role, the bot member and text channels.

        Created while the bot is connected, it arrives as GUILD_CREATE (the bot joined).
        """
        owner = owner or self.create_user(f"{name.lower().replace(' ', '-')}-owner")
        guild = m.Guild(self.snowflakes.next(), name, owner.id, locale=locale)
        guild.roles[guild.id] = m.Role(guild.id, guild.id, "@everyone", m.permission_value(everyone_permissions))
        bot_role = m.Role(
            self.snowflakes.next(),
            guild.id,
            self.bot_user.username,
            m.permission_value(bot_permissions),
            position=1,
            managed=True,
            bot_id=self.bot_user.id,
        )
        guild.roles[bot_role.id] = bot_role
        guild.members[owner.id] = m.Member(guild.id, owner)
        guild.members[self.bot_user.id] = m.Member(guild.id, self.bot_user, role_ids=[bot_role.id])
        self.guilds[guild.id] = guild
        for position, channel_name in enumerate(channels):
            channel = m.Channel(self.snowflakes.next(), m.GUILD_TEXT, channel_name, guild.id, position=position)
            self._add_channel(guild, channel)
        await self._dispatch_guild_create(guild)
        return guild

    async def remove_guild(self, guild: m.Guild) -> None:
        """The bot is kicked from (or leaves) a guild: GUILD_DELETE, and the guild is gone from the emulator."""
        await self.gateway.dispatch("GUILD_DELETE", {"id": str(guild.id)}, guild_id=guild.id, intent=INTENT_GUILDS)
        self.guilds.pop(guild.id, None)
        for channel_id in guild.channels:
            self.channels.pop(channel_id, None)
        self.notify()

    def _add_channel(self, guild: m.Guild, channel: m.Channel) -> m.Channel:
        guild.channels[channel.id] = channel
        self.channels[channel.id] = channel
        self.channel_messages.setdefault(channel.id, [])
        return channel

    async def create_channel(
        self,
        guild: m.Guild,
        name: str,
        *,
        nsfw: bool = False,
        topic: str | None = None,
        category: m.Channel | None = None,
    ) -> m.Channel:
        """A text channel (CHANNEL_CREATE when the bot is connected)."""
        channel = m.Channel(
            self.snowflakes.next(),
            m.GUILD_TEXT,
            name,
            guild.id,
            nsfw=nsfw,
            topic=topic,
            position=len(guild.text_channels),
            parent_id=None if category is None else category.id,
        )
        self._add_channel(guild, channel)
        await self._dispatch_channel("CHANNEL_CREATE", channel)
        return channel

    async def create_thread(
        self,
        parent: m.Channel,
        name: str,
        *,
        owner: m.User | m.Member | None = None,
        private: bool = False,
        starter: m.Message | None = None,
    ) -> m.Channel:
        """A thread in ``parent`` (type 11 public, 12 private), announced with THREAD_CREATE.

        With ``starter`` it is started from that message and shares its id, as on Discord.
        """
        if parent.guild_id is None or parent.is_thread:
            raise ValueError(f"threads live in guild text channels, not in {parent.name!r}")
        guild = self.guilds[parent.guild_id]
        owner_user = _user_of(owner) if owner is not None else self.bot_user
        thread_id = starter.id if starter is not None else self.snowflakes.next()
        thread = m.Channel(
            thread_id,
            m.PRIVATE_THREAD if private else m.PUBLIC_THREAD,
            name,
            guild.id,
            nsfw=parent.nsfw,
            parent_id=parent.id,
            owner_id=owner_user.id,
        )
        self._add_channel(guild, thread)
        payload = thread.payload()
        payload["newly_created"] = True
        await self.gateway.dispatch("THREAD_CREATE", payload, guild_id=guild.id, intent=INTENT_GUILDS)
        self.notify()
        return thread

    async def create_role(
        self, guild: m.Guild, name: str, permissions: Any = 0, *, mentionable: bool = False
    ) -> m.Role:
        """A role (GUILD_ROLE_CREATE when the bot is connected)."""
        role = m.Role(
            self.snowflakes.next(),
            guild.id,
            name,
            m.permission_value(permissions),
            position=len(guild.roles),
            mentionable=mentionable,
        )
        guild.roles[role.id] = role
        await self._dispatch_role("GUILD_ROLE_CREATE", role)
        return role

    async def set_role_permissions(self, role: m.Role, permissions: Any) -> None:
        """Change a role's permission bits (GUILD_ROLE_UPDATE). The bot's own role is
        ``guild.role(emu.bot_user.username)``; @everyone is ``guild.everyone``."""
        role.permissions = m.permission_value(permissions)
        await self._dispatch_role("GUILD_ROLE_UPDATE", role)

    async def _dispatch_role(self, event: str, role: m.Role) -> None:
        data = {"guild_id": str(role.guild_id), "role": role.payload()}
        await self.gateway.dispatch(event, data, guild_id=role.guild_id, intent=INTENT_GUILDS)
        self.notify()

    async def add_member(
        self,
        guild: m.Guild,
        user: m.User | str,
        *,
        nick: str | None = None,
        permissions: Any = None,
        roles: Iterable[m.Role] = (),
        admin: bool = False,
    ) -> m.Member:
        """Add a member (a user, or a new user of that name). ``permissions`` gives them a role of their own with
        those permission bits on top of @everyone; ``admin`` gives Administrator."""
        if isinstance(user, str):
            user = self.create_user(user)
        role_ids = [r.id for r in roles]
        bits = 0 if permissions is None else m.permission_value(permissions)
        if admin:
            bits |= m.ADMINISTRATOR
        if bits:
            role_ids.append((await self.create_role(guild, f"{user.username} permissions", bits)).id)
        member = m.Member(guild.id, user, nick=nick, role_ids=role_ids)
        guild.members[user.id] = member
        for session in self.gateway.sessions_for_guild(guild.id):
            if session.has_intent(INTENT_GUILD_MEMBERS):
                payload = member.payload()
                payload["guild_id"] = str(guild.id)
                await session.dispatch("GUILD_MEMBER_ADD", payload)
        return member

    async def set_permissions(
        self,
        channel: m.Channel,
        target: m.Role | m.Member | m.User,
        *,
        allow: Any = 0,
        deny: Any = 0,
    ) -> None:
        """Set a channel permission overwrite for a role or member (CHANNEL_UPDATE to the bot)."""
        if channel.is_thread or channel.guild_id is None:
            raise ValueError("overwrites belong to guild channels; threads use their parent's")
        kind = 0 if isinstance(target, m.Role) else 1
        target_id = target.id
        allow_bits, deny_bits = m.permission_value(allow), m.permission_value(deny)
        if allow_bits or deny_bits:
            channel.overwrites[target_id] = m.Overwrite(target_id, kind, allow_bits, deny_bits)
        else:
            channel.overwrites.pop(target_id, None)
        await self._dispatch_channel("CHANNEL_UPDATE", channel)

    async def deny_bot_manage_webhooks(self, channel: m.Channel, denied: bool = True) -> None:
        """The "bot lacks Manage Webhooks here" switch: a member overwrite on the channel (the bot sees it too);
        creating or listing webhooks there then gets 403 Missing Permissions (50013)."""
        target = channel
        if channel.is_thread and channel.parent_id is not None:
            target = self.channels[channel.parent_id]
        current = target.overwrites.get(self.bot_user.id)
        allow = 0 if current is None else current.allow & ~m.MANAGE_WEBHOOKS
        deny = 0 if current is None else current.deny & ~m.MANAGE_WEBHOOKS
        if denied:
            deny |= m.MANAGE_WEBHOOKS
        await self.set_permissions(target, self.bot_user, allow=allow, deny=deny)

    async def set_nsfw(self, channel: m.Channel, nsfw: bool) -> None:
        channel.nsfw = nsfw
        await self._dispatch_channel("CHANNEL_UPDATE", channel)

    def create_dm(self, user: m.User | m.Member) -> m.Channel:
        """The DM channel between ``user`` and the bot (made once per user)."""
        user = _user_of(user)
        for channel in self.channels.values():
            if channel.type == m.DM and channel.recipients and channel.recipients[0].id == user.id:
                return channel
        channel = m.Channel(self.snowflakes.next(), m.DM, None, recipients=[user])
        self.channels[channel.id] = channel
        self.channel_messages[channel.id] = []
        return channel

    def create_webhook(self, channel: m.Channel, name: str = "Other Bot", *, owner: m.User | None = None) -> m.Webhook:
        """A webhook someone else made (not owned by our application), e.g. another bot's proxy webhook."""
        return self._new_webhook(channel, name, creator=owner or self.app_owner, application_id=None)

    def _new_webhook(
        self, channel: m.Channel, name: str, *, creator: m.User, application_id: int | None, avatar: str | None = None
    ) -> m.Webhook:
        assert channel.guild_id is not None
        webhook = m.Webhook(
            self.snowflakes.next(),
            secrets.token_urlsafe(48),
            channel.id,
            channel.guild_id,
            name,
            creator,
            application_id,
            avatar_data=avatar,
        )
        self.webhooks[webhook.id] = webhook
        return webhook

    # ---- lookups ------------------------------------------------------------------------------------------------

    def guild_of(self, channel: m.Channel) -> m.Guild | None:
        return None if channel.guild_id is None else self.guilds.get(channel.guild_id)

    def member(self, guild: m.Guild | None, user: m.User) -> m.Member | None:
        return None if guild is None else guild.members.get(user.id)

    def bot_permissions(self, channel: m.Channel) -> int:
        guild = self.guild_of(channel)
        if guild is None:
            return DM_APP_PERMISSIONS
        return guild.permissions_in(channel, guild.members[self.bot_user.id])

    def guilds_for_shard(self, shard_id: int, shard_count: int) -> list[m.Guild]:
        return [g for g in self.guilds.values() if (g.id >> 22) % shard_count == shard_id]

    def messages_in(self, channel: m.Channel, *, include_deleted: bool = False) -> list[m.Message]:
        """A channel's messages, oldest first (ephemeral ones are not in channels)."""
        return [msg for msg in self.channel_messages.get(channel.id, []) if include_deleted or not msg.deleted]

    def sent_messages(
        self,
        channel: m.Channel | None = None,
        *,
        source: str | Sequence[str] | None = None,
        include_deleted: bool = False,
        include_ephemeral: bool = True,
    ) -> list[m.Message]:
        """What the bot sent, oldest first: REST messages ("bot"), its webhooks' ("webhook"), interaction
        responses ("interaction") and follow-ups ("followup"). Filter by channel and source."""
        sources = {"bot", "webhook", "interaction", "followup"}
        if source is not None:
            sources = {source} if isinstance(source, str) else set(source)
        out = []
        for msg in sorted(self.messages.values(), key=lambda x: x.id):
            if msg.source not in sources or (channel is not None and msg.channel_id != channel.id):
                continue
            if (msg.deleted and not include_deleted) or (msg.ephemeral and not include_ephemeral):
                continue
            out.append(msg)
        return out

    def webhooks_in(self, channel: m.Channel) -> list[m.Webhook]:
        return [w for w in self.webhooks.values() if w.channel_id == channel.id and not w.deleted]

    def requests_matching(self, method: str | None = None, path: str | None = None) -> list[RecordedRequest]:
        """Recorded REST requests; ``path`` is a regex for the whole path, e.g. r"/channels/\\d+/typing"."""
        return [r for r in self.requests if r.matches(method, path)]

    def command(self, name: str, guild: m.Guild | None = None, *, type: int = 1) -> m.AppCommand:
        """A synced command by name: the guild's own first, then the global ones."""
        for scope in ([guild.id] if guild is not None else []) + [None]:
            found = self.commands.get(scope, {}).get((name, type))
            if found is not None:
                return found
        synced = sorted(f"{c.name} (type {c.type})" for scope in self.commands.values() for c in scope.values())
        raise LookupError(f"no synced command {name!r} of type {type}; synced: {synced or 'none (did the bot sync?)'}")

    def all_commands(self, guild: m.Guild | None = None) -> list[m.AppCommand]:
        return list(self.commands.get(None if guild is None else guild.id, {}).values())

    @property
    def gateway_events(self) -> list[GatewayEvent]:
        return self.gateway.events

    # ---- gateway payloads ---------------------------------------------------------------------------------------

    def ready_payload(self, session: GatewaySession) -> dict[str, Any]:
        return {
            "v": 10,
            "user": self.bot_user.payload() | {"verified": True, "mfa_enabled": False, "flags": 0},
            "guilds": [
                {"id": str(g.id), "unavailable": True}
                for g in self.guilds_for_shard(session.shard_id, session.shard_count)
            ],
            "session_id": session.session_id,
            "session_type": "normal",
            "resume_gateway_url": f"ws://127.0.0.1:{self.port}/gateway/resume",
            "shard": [session.shard_id, session.shard_count],
            "application": {"id": str(self.application_id), "flags": self.application_flags},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": ["local"],
            "user_settings": {},
            "auth": {},
            "_trace": ['["discord-emulator",{"micros":0}]'],
        }

    def guild_create_payload(self, guild: m.Guild, session: GatewaySession) -> dict[str, Any]:
        # Without the members intent Discord sends only the bot's own member.
        members = list(guild.members.values())
        if not session.has_intent(INTENT_GUILD_MEMBERS):
            members = [guild.members[self.bot_user.id]]
        return guild.payload(members=members)

    async def _dispatch_guild_create(self, guild: m.Guild) -> None:
        for session in self.gateway.sessions_for_guild(guild.id):
            if session.has_intent(INTENT_GUILDS):
                await session.dispatch("GUILD_CREATE", self.guild_create_payload(guild, session))
        self.notify()

    async def _dispatch_channel(self, event: str, channel: m.Channel) -> None:
        if channel.guild_id is not None:
            await self.gateway.dispatch(event, channel.payload(), guild_id=channel.guild_id, intent=INTENT_GUILDS)
        self.notify()

    def _message_intent(self, message: m.Message) -> int:
        return INTENT_GUILD_MESSAGES if message.guild_id is not None else INTENT_DIRECT_MESSAGES

    def _content_filter(self, message: m.Message) -> Callable[[GatewaySession, dict[str, Any]], dict[str, Any]]:
        """Without MESSAGE_CONTENT, guild messages arrive without content unless they mention the bot or are its own."""

        def transform(session: GatewaySession, data: dict[str, Any]) -> dict[str, Any]:
            if session.has_intent(INTENT_MESSAGE_CONTENT) or message.guild_id is None:
                return data
            if message.author.id == self.bot_user.id or self.bot_user.id in message.mention_ids:
                return data
            return data | {"content": "", "embeds": [], "attachments": [], "components": []}

        return transform

    async def _dispatch_message(self, event: str, message: m.Message) -> None:
        if message.ephemeral:
            return  # bots never see ephemeral messages over the gateway
        await self.gateway.dispatch(
            event,
            message.payload(),
            guild_id=message.guild_id,
            intent=self._message_intent(message),
            transform=self._content_filter(message),
        )

    # ---- messages: the operations REST and the driver share ----------------------------------------------------

    def render_message(self, message: m.Message, *, with_reference: bool = True) -> dict[str, Any]:
        guild = self.guilds.get(message.guild_id) if message.guild_id is not None else None
        mentions = []
        for uid in message.mention_ids:
            user = self.users.get(uid)
            if user is None:
                continue
            entry = user.payload()
            member = self.member(guild, user)
            if member is not None:
                entry["member"] = member.payload(with_user=False)
            mentions.append(entry)
        data: dict[str, Any] = {
            "id": str(message.id),
            "channel_id": str(message.channel_id),
            "type": message.type,
            "content": message.content,
            "author": message.author.payload(),
            "timestamp": iso(message.timestamp),
            "edited_timestamp": None if message.edited_timestamp is None else iso(message.edited_timestamp),
            "tts": message.tts,
            "mention_everyone": message.mention_everyone,
            "mentions": mentions,
            "mention_roles": [str(r) for r in message.mention_role_ids],
            "attachments": [a.payload() for a in message.attachments],
            "embeds": message.embeds,
            "components": message.components,
            "pinned": False,
            "flags": message.flags,
        }
        if message.guild_id is not None:
            data["guild_id"] = str(message.guild_id)
            if message.author_member is not None and message.webhook_id is None:
                data["member"] = message.author_member.payload(with_user=False)
        if message.webhook_id is not None:
            data["webhook_id"] = str(message.webhook_id)
        if message.application_id is not None:
            data["application_id"] = str(message.application_id)
        if message.nonce is not None:
            data["nonce"] = message.nonce
        if message.interaction_metadata is not None:
            data["interaction_metadata"] = message.interaction_metadata
        if message.reactions:
            data["reactions"] = [_reaction_payload(e) for e in dict.fromkeys(message.reactions)]
        if message.message_reference is not None:
            data["message_reference"] = message.message_reference
            if with_reference and message.referenced_message_id is not None:
                ref = self.messages.get(message.referenced_message_id)
                data["referenced_message"] = (
                    None if ref is None or ref.deleted else self.render_message(ref, with_reference=False)
                )
        return data

    def new_message(self, channel: m.Channel, author: m.User, content: str, source: str, **fields: Any) -> m.Message:
        guild = self.guild_of(channel)
        msg = m.Message(
            id=self.snowflakes.next(),
            channel_id=channel.id,
            guild_id=channel.guild_id,
            author=author,
            content=content,
            source=source,
            author_member=self.member(guild, author),
            renderer=self.render_message,
            **fields,
        )
        return msg

    async def store_message(self, message: m.Message) -> m.Message:
        """Keep a new message (in its channel unless ephemeral) and dispatch MESSAGE_CREATE."""
        self.messages[message.id] = message
        if not message.ephemeral:
            self.channel_messages.setdefault(message.channel_id, []).append(message)
            channel = self.channels.get(message.channel_id)
            if channel is not None:
                channel.last_message_id = message.id
                if channel.is_thread:
                    channel.message_count += 1
        await self._dispatch_message("MESSAGE_CREATE", message)
        self.notify()
        return message

    async def update_message(self, message: m.Message, changes: dict[str, Any], *, record: dict[str, Any]) -> None:
        """Apply changed fields, stamp the edit, dispatch MESSAGE_UPDATE (a full message, as Discord now sends)."""
        if "content" in changes and changes["content"] != message.content:
            message.content_history.append(message.content)
        for key, value in changes.items():
            setattr(message, key, value)
        message.edited_timestamp = utcnow()
        message.edits.append(record)
        await self._dispatch_message("MESSAGE_UPDATE", message)
        self.notify()

    async def remove_message(self, message: m.Message) -> None:
        message.deleted = True
        channel_list = self.channel_messages.get(message.channel_id, [])
        if message in channel_list:
            channel_list.remove(message)
        if not message.ephemeral:
            data: dict[str, Any] = {"id": str(message.id), "channel_id": str(message.channel_id)}
            if message.guild_id is not None:
                data["guild_id"] = str(message.guild_id)
            await self.gateway.dispatch(
                "MESSAGE_DELETE", data, guild_id=message.guild_id, intent=self._message_intent(message)
            )
        self.notify()

    def resolve_mentions(
        self,
        content: str,
        allowed: dict[str, Any] | None,
        *,
        reply_to: m.Message | None = None,
        ping_reply: bool | None = None,
        extra_user_ids: Iterable[int] = (),
    ) -> tuple[list[int], list[int], bool]:
        """Who a message really pings: (user ids, role ids, @everyone), after ``allowed_mentions``.

        No allowed_mentions means everything in the content pings, and a reply pings its author.
        """
        if allowed is None:
            parse = {"users", "roles", "everyone"}
            allowed_users: set[int] = set()
            allowed_roles: set[int] = set()
            replied = True if ping_reply is None else ping_reply
        else:
            parse = set(allowed.get("parse") or [])
            allowed_users = {int(u) for u in allowed.get("users") or []}
            allowed_roles = {int(r) for r in allowed.get("roles") or []}
            replied = bool(allowed.get("replied_user", False))
        users = [
            int(u) for u in dict.fromkeys(_USER_MENTION.findall(content)) if "users" in parse or int(u) in allowed_users
        ]
        roles = [
            int(r) for r in dict.fromkeys(_ROLE_MENTION.findall(content)) if "roles" in parse or int(r) in allowed_roles
        ]
        everyone = ("@everyone" in content or "@here" in content) and "everyone" in parse
        if reply_to is not None and replied and reply_to.webhook_id is None and reply_to.author.id not in users:
            users.append(reply_to.author.id)
        for uid in extra_user_ids:
            if uid not in users:
                users.append(uid)
        return [u for u in users if u in self.users], roles, everyone

    def make_attachment(self, channel_id: int, upload: UploadLike, *, ephemeral: bool = False) -> m.Attachment:
        if isinstance(upload, tuple):
            upload = Upload(*upload)
        attachment_id = self.snowflakes.next()
        content_type = upload.content_type or mimetypes.guess_type(upload.filename)[0]
        width = height = None
        if upload.data.startswith(b"\x89PNG\r\n\x1a\n") and len(upload.data) >= 24:
            width = int.from_bytes(upload.data[16:20], "big")
            height = int.from_bytes(upload.data[20:24], "big")
        attachment = m.Attachment(
            attachment_id,
            upload.filename,
            upload.data,
            content_type,
            f"{self.base_url}/attachments/{channel_id}/{attachment_id}/{quote(upload.filename)}",
            description=upload.description,
            width=width,
            height=height,
            ephemeral=ephemeral,
        )
        self.files[attachment_id] = attachment
        return attachment

    # ---- driver: acting as users --------------------------------------------------------------------------------

    async def user_message(
        self,
        channel: m.Channel,
        author: m.Member | m.User,
        content: str = "",
        *,
        attachments: Sequence[UploadLike] = (),
        reply_to: m.Message | None = None,
        mention_reply: bool = True,
        mentions: Iterable[m.User | m.Member] = (),
        embeds: Sequence[dict[str, Any]] = (),
    ) -> m.Message:
        """A user posts in ``channel``: stored and dispatched as MESSAGE_CREATE with ``mentions``,
        ``mention_roles`` and (for replies) ``message_reference`` + ``referenced_message``."""
        user = _user_of(author)
        guild = self.guild_of(channel)
        if guild is not None and user.id not in guild.members:
            raise ValueError(f"{user.username} is not a member of {guild.name!r}; add them with add_member()")
        user_ids, role_ids, everyone = self.resolve_mentions(
            content,
            None,
            reply_to=reply_to,
            ping_reply=mention_reply,
            extra_user_ids=[_user_of(u).id for u in mentions],
        )
        fields: dict[str, Any] = {
            "mention_ids": user_ids,
            "mention_role_ids": [r for r in role_ids if guild is not None and r in guild.roles],
            "mention_everyone": everyone,
            "embeds": list(embeds),
        }
        if reply_to is not None:
            fields["type"] = 19
            fields["message_reference"] = _reference(reply_to)
            fields["referenced_message_id"] = reply_to.id
        msg = self.new_message(channel, user, content, "user", **fields)
        msg.attachments = [self.make_attachment(channel.id, up) for up in attachments]
        self._set_mark(msg.id)
        return await self.store_message(msg)

    async def webhook_message(
        self,
        webhook: m.Webhook,
        content: str,
        *,
        username: str | None = None,
        avatar_url: str | None = None,
        thread: m.Channel | None = None,
    ) -> m.Message:
        """A message from someone else's webhook (e.g. another bot's proxy), as the bot would see it."""
        channel = thread or self.channels[webhook.channel_id]
        author = m.User(
            webhook.id,
            username or webhook.name,
            bot=True,
            discriminator="0000",
            avatar=m.avatar_hash(avatar_url) if avatar_url else webhook.avatar,
        )
        msg = self.new_message(
            channel,
            author,
            content,
            "user_webhook",
            webhook_id=webhook.id,
            application_id=webhook.application_id,
            username=username,
            avatar_url=avatar_url,
        )
        msg.author_member = None
        self._set_mark(msg.id)
        return await self.store_message(msg)

    async def edit_message(self, message: m.Message, content: str) -> m.Message:
        """A user edits their message (MESSAGE_UPDATE)."""
        user_ids, role_ids, everyone = self.resolve_mentions(content, None)
        await self.update_message(
            message,
            {"content": content, "mention_ids": user_ids, "mention_role_ids": role_ids, "mention_everyone": everyone},
            record={"content": content},
        )
        self._set_mark(self.snowflakes.next())
        return message

    async def delete_message(self, message: m.Message) -> None:
        """Someone deletes a message (MESSAGE_DELETE)."""
        await self.remove_message(message)
        self._set_mark(self.snowflakes.next())

    async def bulk_delete(self, channel: m.Channel, messages: Sequence[m.Message]) -> None:
        """A moderator purges messages (MESSAGE_DELETE_BULK)."""
        for msg in messages:
            msg.deleted = True
            if msg in self.channel_messages.get(channel.id, []):
                self.channel_messages[channel.id].remove(msg)
        data: dict[str, Any] = {"ids": [str(msg.id) for msg in messages], "channel_id": str(channel.id)}
        if channel.guild_id is not None:
            data["guild_id"] = str(channel.guild_id)
        await self.gateway.dispatch(
            "MESSAGE_DELETE_BULK",
            data,
            guild_id=channel.guild_id,
            intent=INTENT_GUILD_MESSAGES if channel.guild_id else INTENT_DIRECT_MESSAGES,
        )
        self._set_mark(self.snowflakes.next())
        self.notify()

    async def slash_command(
        self,
        channel: m.Channel,
        member: m.Member | m.User,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        subcommand: str | Sequence[str] = (),
        locale: str = "en-US",
    ) -> InteractionHandle:
        """Invoke ``/name [subcommand...] options`` as ``member`` in ``channel``.

        The command must have been synced by the bot; options are checked against its synced schema (names, types,
        choices, required) and converted. Users/members/channels/roles are passed as emulator objects, attachments
        as ``Upload`` or ``(filename, bytes)``.
        """
        return await self.interaction_builder.slash_command(
            channel, member, name, options or {}, subcommand=subcommand, locale=locale
        )

    async def autocomplete(
        self,
        channel: m.Channel,
        member: m.Member | m.User,
        name: str,
        options: dict[str, Any],
        focused: str,
        *,
        subcommand: str | Sequence[str] = (),
    ) -> InteractionHandle:
        """The user is typing option ``focused`` (its value in ``options`` is the partial text); the handle's
        ``choices`` holds the bot's suggestions."""
        return await self.interaction_builder.slash_command(
            channel, member, name, options, subcommand=subcommand, focused=focused
        )

    async def message_command(
        self, channel: m.Channel, member: m.Member | m.User, name: str, target: m.Message
    ) -> InteractionHandle:
        """A message context-menu command (Apps > name) on ``target``."""
        return await self.interaction_builder.context_menu(channel, member, name, target)

    async def user_command(
        self, channel: m.Channel, member: m.Member | m.User, name: str, target: m.Member | m.User
    ) -> InteractionHandle:
        """A user context-menu command on ``target``."""
        return await self.interaction_builder.context_menu(channel, member, name, target)

    async def click_button(self, message: m.Message, custom_id: str, member: m.Member | m.User) -> InteractionHandle:
        """Click the button ``custom_id`` on ``message`` (which must carry that enabled button)."""
        return await self.interaction_builder.component(message, custom_id, member)

    async def select(
        self, message: m.Message, custom_id: str, values: Sequence[str], member: m.Member | m.User
    ) -> InteractionHandle:
        """Choose ``values`` in the select menu ``custom_id`` on ``message``."""
        return await self.interaction_builder.component(message, custom_id, member, values=list(values))

    async def submit_modal(
        self,
        handle: InteractionHandle,
        values: dict[str, str | Sequence[str]],
        member: m.Member | m.User | None = None,
    ) -> InteractionHandle:
        """Fill in and submit the modal the bot answered ``handle`` with (``values`` by component custom_id)."""
        return await self.interaction_builder.modal_submit(handle, values, member)

    # ---- driver: waiting and looking ----------------------------------------------------------------------------

    async def wait_for_message(
        self,
        channel: m.Channel | None = None,
        predicate: Callable[[m.Message], bool] | None = None,
        *,
        source: str | Sequence[str] | None = None,
        after: m.Message | int | None = None,
        timeout: float | None = None,
    ) -> m.Message:
        """The first message the bot sent (see ``sent_messages`` for ``source``) matching ``predicate``, newer than
        ``after`` (a message or snowflake; default: your last driver action, so the bot's answer to it)."""
        after_id = self._mark if after is None else (after if isinstance(after, int) else after.id)

        def find() -> m.Message | None:
            for msg in self.sent_messages(channel, source=source):
                if msg.id > after_id and (predicate is None or predicate(msg)):
                    return msg
            return None

        where = f" in #{channel.name}" if channel is not None and channel.name else ""
        return await self.wait_until(find, f"a bot message{where} (source={source})", timeout)

    async def wait_for_webhook_message(
        self,
        channel: m.Channel | None = None,
        predicate: Callable[[m.Message], bool] | None = None,
        *,
        after: m.Message | int | None = None,
        timeout: float | None = None,
    ) -> m.Message:
        """The next message the bot sent through a webhook in ``channel`` (a thread is its own channel)."""
        return await self.wait_for_message(channel, predicate, source="webhook", after=after, timeout=timeout)

    async def wait_for_request(
        self,
        method: str | None,
        path: str,
        *,
        count: int = 1,
        since: float | None = None,
        timeout: float | None = None,
    ) -> RecordedRequest:
        """Wait until ``count`` requests matched (method, path regex) since loop time ``since``; returns the last."""

        def find() -> RecordedRequest | None:
            hits = [r for r in self.requests_matching(method, path) if since is None or r.time >= since]
            return hits[count - 1] if len(hits) >= count else None

        return await self.wait_until(find, f"{count} request(s) {method} {path}", timeout)

    def _after_last_break(self, shard_id: int) -> int:
        """Index just past the shard's latest disconnect, invalidation or reconnect request."""
        for index in range(len(self.gateway.events) - 1, -1, -1):
            event = self.gateway.events[index]
            if event.shard_id == shard_id and event.kind in _BREAKS:
                return index + 1
        return 0

    def _event_since(self, kind: str, shard_id: int, start: int) -> GatewayEvent | None:
        return next((e for e in self.gateway.events[start:] if e.kind == kind and e.shard_id == shard_id), None)

    async def wait_for_resume(self, shard_id: int = 0, *, timeout: float | None = None) -> GatewayEvent:
        """Wait for the RESUME that follows the shard's latest disconnect; returns the event, whose
        ``detail["replayed"]`` says how many missed dispatches were replayed."""
        start = self._after_last_break(shard_id)
        return await self.wait_until(
            lambda: self._event_since("resume", shard_id, start), f"shard {shard_id} to RESUME", timeout
        )

    async def wait_for_identify(self, shard_id: int = 0, *, timeout: float | None = None) -> GatewayEvent:
        """Wait for the fresh IDENTIFY (and READY) that follows the shard's latest disconnect or invalidation."""
        start = self._after_last_break(shard_id)
        return await self.wait_until(
            lambda: self._event_since("ready", shard_id, start), f"shard {shard_id} to IDENTIFY", timeout
        )

    async def dispatch(self, event: str, data: dict[str, Any], *, guild: m.Guild | None = None) -> int:
        """Send any gateway event as-is to the shard(s) that own ``guild`` (shard 0 without one); returns how many
        sessions got it. For events the emulator has no helper for."""
        sent = await self.gateway.dispatch(event, data, guild_id=None if guild is None else guild.id)
        self.notify()
        return sent

    # ---- faults -------------------------------------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        path_pattern: str,
        status: int,
        count: int = 1,
        retry_after: float | None = None,
        body: dict[str, Any] | None = None,
        *,
        is_global: bool = False,
    ) -> FaultRule:
        """The next ``count`` requests matching ``method`` ("*" for any) and ``path_pattern`` (a regex for the whole
        path under /api/v10, e.g. r"/webhooks/\\d+/[^/]+") get ``status`` instead of their answer.

        429 comes with Discord's rate-limit headers and JSON ``retry_after`` (default 0.05 s), so discord.py waits
        and retries; 403 defaults to Missing Permissions (50013); 404 to the route's Unknown X (webhooks: 10015);
        ``body`` replaces the JSON body.
        """
        rule = FaultRule(method.upper(), re.compile(path_pattern), status, count, retry_after, body, is_global)
        self.faults.append(rule)
        return rule

    async def delete_webhook(self, webhook: m.Webhook | int) -> None:
        """Someone deletes a webhook: its URL 404s (Unknown Webhook) from now on (WEBHOOKS_UPDATE to the bot)."""
        wh = self.webhooks[webhook if isinstance(webhook, int) else webhook.id]
        wh.deleted = True
        await self.gateway.dispatch(
            "WEBHOOKS_UPDATE",
            {"guild_id": str(wh.guild_id), "channel_id": str(wh.channel_id)},
            guild_id=wh.guild_id,
            intent=1 << 5,
        )
        self.notify()

    async def disconnect(self, shard_id: int = 0, code: int = 4000) -> None:
        """Drop the shard's socket (server side). With a resumable code (4000 default) the client RESUMEs and gets
        the dispatches it missed; 4004/4010-4014 are fatal for discord.py."""
        await self.gateway.disconnect(shard_id, code)

    async def invalidate_session(self, shard_id: int = 0, *, resumable: bool = False) -> None:
        """INVALID_SESSION: unless resumable, the client must IDENTIFY again (new READY and GUILD_CREATEs)."""
        await self.gateway.invalidate_session(shard_id, resumable=resumable)

    async def request_reconnect(self, shard_id: int = 0) -> None:
        """RECONNECT (op 7): the client reconnects and RESUMEs."""
        await self.gateway.request_reconnect(shard_id)


def _user_of(who: m.User | m.Member) -> m.User:
    return who.user if isinstance(who, m.Member) else who


def _reference(message: m.Message) -> dict[str, Any]:
    ref: dict[str, Any] = {"type": 0, "message_id": str(message.id), "channel_id": str(message.channel_id)}
    if message.guild_id is not None:
        ref["guild_id"] = str(message.guild_id)
    return ref


def _reaction_payload(emoji: str) -> dict[str, Any]:
    if ":" in emoji:
        name, _, emoji_id = emoji.partition(":")
        emoji_data: dict[str, Any] = {"id": emoji_id, "name": name}
    else:
        emoji_data = {"id": None, "name": emoji}
    return {
        "emoji": emoji_data,
        "count": 1,
        "count_details": {"burst": 0, "normal": 1},
        "me": True,
        "me_burst": False,
        "burst_me": False,
        "burst_count": 0,
        "burst_colors": [],
    }
