"""The emulator's world: users, guilds, roles, channels, members, messages, webhooks, commands.

Each object renders the JSON payload Discord would send for it. Optional keys are left out rather than sent as
``null`` where discord.py treats a missing key and a null differently.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.discord_emulator.snowflake import iso, snowflake_time, utcnow

# Permission bits (https://discord.com/developers/docs/topics/permissions).
CREATE_INSTANT_INVITE = 1 << 0
KICK_MEMBERS = 1 << 1
BAN_MEMBERS = 1 << 2
ADMINISTRATOR = 1 << 3
MANAGE_CHANNELS = 1 << 4
MANAGE_GUILD = 1 << 5
ADD_REACTIONS = 1 << 6
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
MANAGE_MESSAGES = 1 << 13
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
MENTION_EVERYONE = 1 << 17
USE_EXTERNAL_EMOJIS = 1 << 18
CHANGE_NICKNAME = 1 << 26
MANAGE_ROLES = 1 << 28
MANAGE_WEBHOOKS = 1 << 29
USE_APPLICATION_COMMANDS = 1 << 31
MANAGE_THREADS = 1 << 34
CREATE_PUBLIC_THREADS = 1 << 35
CREATE_PRIVATE_THREADS = 1 << 36
SEND_MESSAGES_IN_THREADS = 1 << 38
MODERATE_MEMBERS = 1 << 40
ALL_PERMISSIONS = (1 << 51) - 1

# What @everyone gets in a new guild (text-related subset of Discord's default).
DEFAULT_EVERYONE_PERMISSIONS = (
    CREATE_INSTANT_INVITE
    | ADD_REACTIONS
    | VIEW_CHANNEL
    | SEND_MESSAGES
    | EMBED_LINKS
    | ATTACH_FILES
    | READ_MESSAGE_HISTORY
    | USE_EXTERNAL_EMOJIS
    | CHANGE_NICKNAME
    | USE_APPLICATION_COMMANDS
    | CREATE_PUBLIC_THREADS
    | SEND_MESSAGES_IN_THREADS
)
# What the bot's managed role gets: what an RP bot's invite link asks for.
DEFAULT_BOT_PERMISSIONS = (
    VIEW_CHANNEL
    | SEND_MESSAGES
    | SEND_MESSAGES_IN_THREADS
    | MANAGE_WEBHOOKS
    | MANAGE_MESSAGES
    | READ_MESSAGE_HISTORY
    | EMBED_LINKS
    | ATTACH_FILES
    | ADD_REACTIONS
    | USE_EXTERNAL_EMOJIS
    | CREATE_PUBLIC_THREADS
)

# Channel types.
GUILD_TEXT = 0
DM = 1
GUILD_CATEGORY = 4
PUBLIC_THREAD = 11
PRIVATE_THREAD = 12
THREAD_TYPES = (10, PUBLIC_THREAD, PRIVATE_THREAD)

# Message flags.
FLAG_SUPPRESS_EMBEDS = 1 << 2
FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7
FLAG_SUPPRESS_NOTIFICATIONS = 1 << 12
FLAG_COMPONENTS_V2 = 1 << 15


def permission_value(value: Any) -> int:
    """An int from an int or anything with ``.value`` (e.g. ``discord.Permissions``)."""
    if isinstance(value, int):
        return value
    inner = getattr(value, "value", None)
    if isinstance(inner, int):
        return inner
    raise TypeError(f"permissions must be an int or have an int .value, not {type(value).__name__}")


def avatar_hash(source: str) -> str:
    """A stable fake image hash for an avatar URL or data URI (Discord stores a hash, not the image)."""
    return hashlib.md5(source.encode(), usedforsecurity=False).hexdigest()


@dataclass(eq=False)
class User:
    id: int
    username: str
    global_name: str | None = None
    bot: bool = False
    avatar: str | None = None
    discriminator: str = "0"

    @property
    def display_name(self) -> str:
        return self.global_name or self.username

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "username": self.username,
            "discriminator": self.discriminator,
            "global_name": self.global_name,
            "avatar": self.avatar,
            "public_flags": 0,
        }
        if self.bot:
            data["bot"] = True
        return data


@dataclass(eq=False)
class Role:
    id: int
    guild_id: int
    name: str
    permissions: int
    position: int = 0
    managed: bool = False
    mentionable: bool = False
    bot_id: int | None = None

    @property
    def mention(self) -> str:
        return f"<@&{self.id}>"

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "name": self.name,
            "permissions": str(self.permissions),
            "position": self.position,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "managed": self.managed,
            "mentionable": self.mentionable,
            "flags": 0,
            "icon": None,
            "unicode_emoji": None,
        }
        if self.bot_id is not None:
            data["tags"] = {"bot_id": str(self.bot_id)}
        return data


@dataclass
class Overwrite:
    """A channel permission overwrite for a role (type 0) or a member (type 1)."""

    id: int
    type: int
    allow: int = 0
    deny: int = 0

    def payload(self) -> dict[str, Any]:
        return {"id": str(self.id), "type": self.type, "allow": str(self.allow), "deny": str(self.deny)}


@dataclass(eq=False)
class Channel:
    id: int
    type: int
    name: str | None
    guild_id: int | None = None
    nsfw: bool = False
    topic: str | None = None
    position: int = 0
    parent_id: int | None = None
    overwrites: dict[int, Overwrite] = field(default_factory=dict)
    rate_limit_per_user: int = 0
    last_message_id: int | None = None
    # Threads.
    owner_id: int | None = None
    archived: bool = False
    locked: bool = False
    auto_archive_duration: int = 1440
    message_count: int = 0
    # DMs.
    recipients: list[User] = field(default_factory=list)

    @property
    def is_thread(self) -> bool:
        return self.type in THREAD_TYPES

    @property
    def mention(self) -> str:
        return f"<#{self.id}>"

    def payload(self) -> dict[str, Any]:
        if self.type == DM:
            return {
                "id": str(self.id),
                "type": DM,
                "last_message_id": _opt_id(self.last_message_id),
                "recipients": [user.payload() for user in self.recipients],
                "flags": 0,
            }
        data: dict[str, Any] = {
            "id": str(self.id),
            "type": self.type,
            "guild_id": str(self.guild_id),
            "name": self.name,
            "nsfw": self.nsfw,
            "rate_limit_per_user": self.rate_limit_per_user,
            "last_message_id": _opt_id(self.last_message_id),
            "flags": 0,
        }
        if self.parent_id is not None:
            data["parent_id"] = str(self.parent_id)
        if self.is_thread:
            created = snowflake_time(self.id)
            data.update(
                owner_id=str(self.owner_id),
                message_count=self.message_count,
                total_message_sent=self.message_count,
                member_count=1,
                thread_metadata={
                    "archived": self.archived,
                    "auto_archive_duration": self.auto_archive_duration,
                    "archive_timestamp": iso(created),
                    "locked": self.locked,
                    "create_timestamp": iso(created),
                },
            )
        else:
            data["position"] = self.position
            data["permission_overwrites"] = [ow.payload() for ow in self.overwrites.values()]
            if self.topic is not None:
                data["topic"] = self.topic
        return data


@dataclass(eq=False)
class Member:
    guild_id: int
    user: User
    nick: str | None = None
    role_ids: list[int] = field(default_factory=list)
    joined_at: datetime.datetime = field(default_factory=utcnow)

    @property
    def id(self) -> int:
        return self.user.id

    @property
    def display_name(self) -> str:
        return self.nick or self.user.display_name

    @property
    def mention(self) -> str:
        return f"<@{self.user.id}>"

    def payload(self, *, with_user: bool = True, permissions: int | None = None) -> dict[str, Any]:
        """The member object; without ``user`` it is the partial member messages carry."""
        data: dict[str, Any] = {
            "roles": [str(r) for r in self.role_ids],
            "joined_at": iso(self.joined_at),
            "deaf": False,
            "mute": False,
            "pending": False,
            "flags": 0,
        }
        if self.nick is not None:
            data["nick"] = self.nick
        if with_user:
            data["user"] = self.user.payload()
        if permissions is not None:
            data["permissions"] = str(permissions)
        return data


@dataclass(eq=False)
class Guild:
    id: int
    name: str
    owner_id: int
    roles: dict[int, Role] = field(default_factory=dict)
    channels: dict[int, Channel] = field(default_factory=dict)
    members: dict[int, Member] = field(default_factory=dict)
    joined_at: datetime.datetime = field(default_factory=utcnow)
    locale: str = "en-US"

    @property
    def everyone(self) -> Role:
        return self.roles[self.id]

    def channel(self, name: str) -> Channel:
        """The channel or thread called ``name`` (raises KeyError naming what exists)."""
        for channel in self.channels.values():
            if channel.name == name:
                return channel
        names = [c.name for c in self.channels.values()]
        raise KeyError(f"guild {self.name!r} has no channel {name!r}; it has {names}")

    def member(self, name: str) -> Member:
        """The member whose username or display name is ``name``."""
        for member in self.members.values():
            if name in (member.user.username, member.display_name):
                return member
        raise KeyError(f"guild {self.name!r} has no member {name!r}")

    def role(self, name: str) -> Role:
        for role in self.roles.values():
            if role.name == name:
                return role
        raise KeyError(f"guild {self.name!r} has no role {name!r}")

    @property
    def text_channels(self) -> list[Channel]:
        return [c for c in self.channels.values() if c.type == GUILD_TEXT]

    @property
    def threads(self) -> list[Channel]:
        return [c for c in self.channels.values() if c.is_thread]

    def base_permissions(self, member: Member) -> int:
        if member.id == self.owner_id:
            return ALL_PERMISSIONS
        perms = self.everyone.permissions
        for role_id in member.role_ids:
            role = self.roles.get(role_id)
            if role is not None:
                perms |= role.permissions
        return ALL_PERMISSIONS if perms & ADMINISTRATOR else perms

    def permissions_in(self, channel: Channel, member: Member) -> int:
        """Discord's permission algorithm: base role permissions, then @everyone, role and member overwrites.

        Threads use their parent's overwrites.
        """
        perms = self.base_permissions(member)
        if perms & ADMINISTRATOR:
            return ALL_PERMISSIONS
        source = self.channels.get(channel.parent_id) if channel.is_thread and channel.parent_id else channel
        overwrites = source.overwrites if source is not None else {}
        everyone = overwrites.get(self.id)
        if everyone is not None:
            perms = (perms & ~everyone.deny) | everyone.allow
        allow = deny = 0
        for role_id in member.role_ids:
            ow = overwrites.get(role_id)
            if ow is not None and ow.type == 0:
                allow |= ow.allow
                deny |= ow.deny
        perms = (perms & ~deny) | allow
        own = overwrites.get(member.id)
        if own is not None and own.type == 1:
            perms = (perms & ~own.deny) | own.allow
        if not perms & VIEW_CHANNEL:
            return 0
        return perms

    def payload(self, *, members: list[Member]) -> dict[str, Any]:
        """The full GUILD_CREATE payload."""
        regular = [c for c in self.channels.values() if not c.is_thread]
        threads = [c for c in self.channels.values() if c.is_thread and not c.archived]
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "owner_id": str(self.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 1,
            "explicit_content_filter": 0,
            "roles": [role.payload() for role in self.roles.values()],
            "emojis": [],
            "stickers": [],
            "features": [],
            "mfa_level": 0,
            "application_id": None,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "vanity_url_code": None,
            "description": None,
            "banner": None,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": self.locale,
            "public_updates_channel_id": None,
            "nsfw_level": 0,
            "premium_progress_bar_enabled": False,
            "safety_alerts_channel_id": None,
            "joined_at": iso(self.joined_at),
            "large": False,
            "unavailable": False,
            "member_count": len(self.members),
            "voice_states": [],
            "members": [m.payload() for m in members],
            "channels": [c.payload() for c in regular],
            "threads": [c.payload() for c in threads],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }


@dataclass
class Upload:
    """A file a user attaches (to a message or a slash command option)."""

    filename: str
    data: bytes
    content_type: str | None = None
    description: str | None = None


@dataclass(eq=False)
class Attachment:
    id: int
    filename: str
    data: bytes
    content_type: str | None
    url: str
    description: str | None = None
    width: int | None = None
    height: int | None = None
    ephemeral: bool = False

    @property
    def size(self) -> int:
        return len(self.data)

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": self.url,
            "proxy_url": self.url,
        }
        if self.content_type is not None:
            data["content_type"] = self.content_type
        if self.description is not None:
            data["description"] = self.description
        if self.width is not None and self.height is not None:
            data["width"], data["height"] = self.width, self.height
        if self.ephemeral:
            data["ephemeral"] = True
        return data


@dataclass(eq=False)
class Webhook:
    id: int
    token: str
    channel_id: int
    guild_id: int
    name: str
    creator: User
    application_id: int | None
    avatar_data: str | None = None  # the data URI it was given, kept so tests can check it
    deleted: bool = False

    @property
    def avatar(self) -> str | None:
        return None if self.avatar_data is None else avatar_hash(self.avatar_data)

    def payload(self, *, with_user: bool = True, with_token: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "type": 1,
            "guild_id": str(self.guild_id),
            "channel_id": str(self.channel_id),
            "name": self.name,
            "avatar": self.avatar,
            "application_id": _opt_id(self.application_id),
        }
        if with_token:
            data["token"] = self.token
        if with_user:
            data["user"] = self.creator.payload()
        return data


@dataclass(eq=False)
class Message:
    """A message as the emulator stores it. Fields mirror Discord's; extras record what the sender asked for.

    ``message["key"]`` reads the rendered payload, so a Message can be used like the message dict Discord sends.
    """

    id: int
    channel_id: int
    guild_id: int | None
    author: User
    content: str
    source: str  # "user", "bot" (REST), "webhook", "interaction", "followup"
    type: int = 0
    author_member: Member | None = None
    webhook_id: int | None = None
    application_id: int | None = None
    username: str | None = None  # webhook username override, as sent
    avatar_url: str | None = None  # webhook avatar_url override, as sent
    embeds: list[dict[str, Any]] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    allowed_mentions: dict[str, Any] | None = None  # as sent by the bot; None when it sent none
    mention_ids: list[int] = field(default_factory=list)  # users actually pinged
    mention_role_ids: list[int] = field(default_factory=list)
    mention_everyone: bool = False
    message_reference: dict[str, Any] | None = None
    referenced_message_id: int | None = None
    flags: int = 0
    tts: bool = False
    nonce: str | int | None = None
    interaction_metadata: dict[str, Any] | None = None
    timestamp: datetime.datetime = field(default_factory=utcnow)
    edited_timestamp: datetime.datetime | None = None
    reactions: list[str] = field(default_factory=list)  # emoji the bot added
    edits: list[dict[str, Any]] = field(default_factory=list)  # every PATCH body applied, in order
    content_history: list[str] = field(default_factory=list)  # the content before each edit
    deleted: bool = False
    # Renders the payload; set by the emulator (it needs the world to resolve mentions and replies).
    renderer: Callable[[Message], dict[str, Any]] | None = field(default=None, repr=False)

    def payload(self) -> dict[str, Any]:
        """The message object exactly as the emulator sends it to the bot."""
        if self.renderer is None:
            raise RuntimeError("this message was not created by an emulator")
        return self.renderer(self)

    # Mapping-style reads of the rendered payload, so a Message also serves as "the message dict".
    def __getitem__(self, key: str) -> Any:
        return self.payload()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.payload()

    def __iter__(self) -> Iterator[str]:
        return iter(self.payload())

    def get(self, key: str, default: Any = None) -> Any:
        return self.payload().get(key, default)

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & FLAG_EPHEMERAL)

    @property
    def loading(self) -> bool:
        return bool(self.flags & FLAG_LOADING)

    @property
    def display_author(self) -> str:
        """The name people see: the webhook username override, the nickname, or the user name."""
        if self.username is not None:
            return self.username
        if self.author_member is not None:
            return self.author_member.display_name
        return self.author.display_name

    def custom_ids(self) -> list[str]:
        """Every custom_id in the message's components (nested ones included)."""
        return [c["custom_id"] for c in iter_components(self.components) if "custom_id" in c]

    def __repr__(self) -> str:
        return (
            f"<Message id={self.id} channel={self.channel_id} source={self.source} "
            f"author={self.display_author!r} content={self.content[:60]!r}>"
        )


def iter_components(components: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All components, depth first (action rows, containers, sections and labels included)."""
    out: list[dict[str, Any]] = []
    for comp in components:
        out.append(comp)
        children = list(comp.get("components") or [])
        for key in ("component", "accessory"):
            if isinstance(comp.get(key), dict):
                children.append(comp[key])
        out.extend(iter_components(children))
    return out


@dataclass(eq=False)
class AppCommand:
    """A registered application command: exactly the payload the bot sent, plus the ids Discord adds."""

    id: int
    application_id: int
    guild_id: int | None
    version: int
    data: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.data["name"])

    @property
    def type(self) -> int:
        return int(self.data.get("type", 1))

    @property
    def options(self) -> list[dict[str, Any]]:
        return list(self.data.get("options") or [])

    @property
    def default_member_permissions(self) -> str | None:
        """As Discord returns it: the permission bits as a decimal string, or None (everyone may use it)."""
        value = self.data.get("default_member_permissions")
        return None if value is None else str(value)

    def payload(self) -> dict[str, Any]:
        data = dict(self.data)
        data.setdefault("type", 1)
        data.setdefault("description", "")
        data.setdefault("options", [])
        data["default_member_permissions"] = self.default_member_permissions
        data.setdefault("nsfw", False)
        data.update(
            id=str(self.id),
            application_id=str(self.application_id),
            version=str(self.version),
        )
        if self.guild_id is not None:
            data["guild_id"] = str(self.guild_id)
        else:
            data.setdefault("contexts", None)
            data.setdefault("integration_types", [0])
        return data


def _opt_id(value: int | None) -> str | None:
    return None if value is None else str(value)
