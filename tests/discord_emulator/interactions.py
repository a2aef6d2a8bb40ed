"""Interactions: building INTERACTION_CREATE payloads from synced commands and components, and the handle a test
uses to see how the bot answered (callback type, original response, edits, follow-ups, modal, choices)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tests.discord_emulator import models as m

if TYPE_CHECKING:
    from tests.discord_emulator.emulator import DiscordEmulator

# Interaction types.
PING, APPLICATION_COMMAND, MESSAGE_COMPONENT, AUTOCOMPLETE, MODAL_SUBMIT = 1, 2, 3, 4, 5
# Callback types.
CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, DEFERRED_UPDATE_MESSAGE, UPDATE_MESSAGE = 4, 5, 6, 7
AUTOCOMPLETE_RESULT, MODAL = 8, 9
ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024

_OPTION_TYPE_NAMES = {
    1: "subcommand",
    2: "subcommand group",
    3: "string",
    4: "integer",
    5: "boolean",
    6: "user",
    7: "channel",
    8: "role",
    9: "mentionable",
    10: "number",
    11: "attachment",
}


@dataclass(eq=False)
class InteractionHandle:
    """One interaction the test started, and everything the bot did with it.

    ``original`` is the response message (for a deferral: the loading message, later edited; for a component
    interaction answered with type 6/7: the message the component is on). The first follow-up after a "thinking"
    deferral replaces the loading message, as on Discord, so then ``followups[0] is original``.
    """

    id: int
    token: str
    type: int
    payload: dict[str, Any]
    channel: m.Channel
    user: m.User
    member: m.Member | None
    created: float
    emulator: DiscordEmulator = field(repr=False)
    source_message: m.Message | None = None  # the message a component was on
    command_name: str | None = None
    callbacks: list[dict[str, Any]] = field(default_factory=list)  # raw callback bodies, in order
    original: m.Message | None = None
    followups: list[m.Message] = field(default_factory=list)
    modal: dict[str, Any] | None = None  # the modal's data (type 9 answer)
    choices: list[dict[str, Any]] | None = None  # the autocomplete choices (type 8 answer)
    original_edits: list[dict[str, Any]] = field(default_factory=list)  # PATCH @original bodies

    @property
    def acknowledged(self) -> bool:
        return bool(self.callbacks)

    @property
    def response_type(self) -> int | None:
        """The callback type the bot answered with (4 message, 5 deferred, 6 deferred update, 7 update, 8, 9)."""
        return self.callbacks[0]["type"] if self.callbacks else None

    @property
    def deferred(self) -> bool:
        return self.response_type in (DEFERRED_CHANNEL_MESSAGE, DEFERRED_UPDATE_MESSAGE)

    @property
    def ephemeral(self) -> bool:
        """Whether the response (message or deferral) is only visible to the user."""
        if self.original is not None and self.response_type in (CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE):
            return self.original.ephemeral
        return False

    @property
    def content(self) -> str | None:
        return None if self.original is None else self.original.content

    @property
    def embeds(self) -> list[dict[str, Any]]:
        return [] if self.original is None else self.original.embeds

    @property
    def components(self) -> list[dict[str, Any]]:
        return [] if self.original is None else self.original.components

    @property
    def attachments(self) -> list[m.Attachment]:
        return [] if self.original is None else self.original.attachments

    def messages(self) -> list[m.Message]:
        """The original response and the follow-ups, without duplicates."""
        out = [] if self.original is None else [self.original]
        return out + [f for f in self.followups if f is not self.original]

    def expired(self, now: float) -> bool:
        return now - self.created > self.emulator.token_lifetime

    async def wait_response(self, timeout: float | None = None) -> InteractionHandle:
        """Wait until the bot acknowledged the interaction (any callback)."""
        await self.emulator.wait_until(lambda: self.acknowledged, f"a response to interaction {self.label}", timeout)
        return self

    async def wait_content(
        self, predicate: Callable[[str], bool] | None = None, timeout: float | None = None
    ) -> m.Message:
        """Wait until the original response has content (not loading) that satisfies ``predicate``."""

        def ready() -> m.Message | None:
            msg = self.original
            if msg is None or msg.loading or (not msg.content and not msg.embeds and not msg.attachments):
                return None
            return msg if predicate is None or predicate(msg.content) else None

        return await self.emulator.wait_until(ready, f"the response content of {self.label}", timeout)

    async def wait_followup(self, count: int = 1, timeout: float | None = None) -> m.Message:
        """Wait for the ``count``-th follow-up and return it."""
        return await self.emulator.wait_until(
            lambda: self.followups[count - 1] if len(self.followups) >= count else None,
            f"follow-up #{count} of {self.label}",
            timeout,
        )

    @property
    def label(self) -> str:
        what = {APPLICATION_COMMAND: "command", MESSAGE_COMPONENT: "component", AUTOCOMPLETE: "autocomplete"}.get(
            self.type, "modal submit"
        )
        return f"{what} {self.command_name or self.payload.get('data', {}).get('custom_id', '')!r} ({self.id})"


class InteractionBuilder:
    """Builds INTERACTION_CREATE payloads with every field discord.py 2.7 reads, and dispatches them."""

    def __init__(self, emulator: DiscordEmulator) -> None:
        self.emu = emulator

    # ---- public entry points used by the emulator's driver methods --------------------------------------------

    async def slash_command(
        self,
        channel: m.Channel,
        actor: m.Member | m.User,
        name: str,
        options: dict[str, Any],
        *,
        subcommand: str | Sequence[str] = (),
        focused: str | None = None,
        locale: str = "en-US",
    ) -> InteractionHandle:
        guild = self.emu.guild_of(channel)
        command = self.emu.command(name, guild, type=1)
        path = subcommand.split() if isinstance(subcommand, str) else list(subcommand)
        resolved: dict[str, dict[str, Any]] = {}
        schema = command.options
        wrappers: list[tuple[int, str]] = []
        for part in path:
            found = next((o for o in schema if o.get("name") == part and o.get("type") in (1, 2)), None)
            if found is None:
                names = [o["name"] for o in schema if o.get("type") in (1, 2)]
                raise ValueError(f"/{name}: no subcommand (group) {part!r}; there are {names}")
            wrappers.append((found["type"], part))
            schema = list(found.get("options") or [])
        if any(o.get("type") in (1, 2) for o in schema):
            names = [o["name"] for o in schema if o.get("type") in (1, 2)]
            raise ValueError(f"/{name} {' '.join(path)}: pick a subcommand with subcommand=..., one of {names}")
        built = self._options(f"/{' '.join([name, *path])}", schema, options, channel, actor, resolved, focused)
        for opt_type, part in reversed(wrappers):
            built = [{"type": opt_type, "name": part, "options": built}]
        data: dict[str, Any] = {"id": str(command.id), "name": name, "type": 1}
        if built:
            data["options"] = built
        if resolved:
            data["resolved"] = resolved
        if command.guild_id is not None:
            data["guild_id"] = str(command.guild_id)
        itype = AUTOCOMPLETE if focused is not None else APPLICATION_COMMAND
        return await self._dispatch(itype, channel, actor, data, command_name=name, locale=locale)

    async def context_menu(
        self, channel: m.Channel, actor: m.Member | m.User, name: str, target: m.Message | m.Member | m.User
    ) -> InteractionHandle:
        guild = self.emu.guild_of(channel)
        if isinstance(target, m.Message):
            command = self.emu.command(name, guild, type=3)
            resolved: dict[str, Any] = {"messages": {str(target.id): target.payload()}}
            target_id = target.id
        else:
            command = self.emu.command(name, guild, type=2)
            resolved = {}
            self._resolve_user(target, channel, resolved)
            target_id = _user_of(target).id
        data: dict[str, Any] = {
            "id": str(command.id),
            "name": name,
            "type": command.type,
            "target_id": str(target_id),
            "resolved": resolved,
        }
        if command.guild_id is not None:
            data["guild_id"] = str(command.guild_id)
        return await self._dispatch(APPLICATION_COMMAND, channel, actor, data, command_name=name)

    async def component(
        self,
        message: m.Message,
        custom_id: str,
        actor: m.Member | m.User,
        *,
        values: list[str] | None = None,
    ) -> InteractionHandle:
        if message.deleted:
            raise ValueError(f"message {message.id} was deleted; its components cannot be used")
        comp = next((c for c in m.iter_components(message.components) if c.get("custom_id") == custom_id), None)
        if comp is None:
            raise ValueError(f"message {message.id} has no component {custom_id!r}; it has {message.custom_ids()}")
        if comp.get("disabled"):
            raise ValueError(f"component {custom_id!r} on message {message.id} is disabled")
        ctype = int(comp["type"])
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": ctype}
        if ctype == 2:
            if values is not None:
                raise ValueError(f"{custom_id!r} is a button; use click_button()")
        else:
            if values is None:
                raise ValueError(f"{custom_id!r} is a select menu; use select()")
            low, high = int(comp.get("min_values", 1)), int(comp.get("max_values", 1))
            if not low <= len(values) <= high:
                raise ValueError(f"select {custom_id!r} takes {low}..{high} values, not {len(values)}")
            if ctype == 3:
                allowed = [o["value"] for o in comp.get("options", [])]
                bad = [v for v in values if v not in allowed]
                if bad:
                    raise ValueError(f"select {custom_id!r} has no options {bad}; it has {allowed}")
            data["values"] = values
        channel = self.emu.channels[message.channel_id]
        return await self._dispatch(MESSAGE_COMPONENT, channel, actor, data, message=message)

    async def modal_submit(
        self,
        handle: InteractionHandle,
        values: dict[str, str | Sequence[str]],
        actor: m.Member | m.User | None,
    ) -> InteractionHandle:
        modal = handle.modal
        if modal is None:
            raise ValueError(f"the bot did not answer {handle.label} with a modal (it answered {handle.response_type})")
        unknown = set(values) - {c.get("custom_id") for c in m.iter_components(modal["components"])}
        if unknown:
            raise ValueError(f"modal {modal['custom_id']!r} has no inputs {sorted(unknown)}")
        components = [self._submitted(c, values) for c in modal["components"]]
        data = {"custom_id": modal["custom_id"], "components": components}
        who = actor if actor is not None else (handle.member or handle.user)
        return await self._dispatch(MODAL_SUBMIT, handle.channel, who, data, message=handle.source_message)

    # ---- payload building ---------------------------------------------------------------------------------------

    def _submitted(self, comp: dict[str, Any], values: dict[str, str | Sequence[str]]) -> dict[str, Any]:
        """What the Discord client sends back for one modal component."""
        ctype = comp.get("type")
        if ctype == 1:
            return {"type": 1, "components": [self._submitted(c, values) for c in comp.get("components", [])]}
        if ctype == 18:  # label
            out: dict[str, Any] = {"type": 18, "component": self._submitted(comp["component"], values)}
            if "id" in comp:
                out["id"] = comp["id"]
            return out
        custom_id = comp.get("custom_id")
        if ctype == 4:  # text input
            value = values.get(custom_id, comp.get("value") or "") if custom_id else ""
            if not isinstance(value, str):
                raise ValueError(f"text input {custom_id!r} takes a string")
            if comp.get("required", True) and not value:
                raise ValueError(f"text input {custom_id!r} is required")
            low, high = comp.get("min_length"), comp.get("max_length")
            if value and ((low is not None and len(value) < low) or (high is not None and len(value) > high)):
                raise ValueError(f"text input {custom_id!r} must be {low or 0}..{high or 4000} characters")
            return {"type": 4, "custom_id": custom_id, "value": value, "id": comp.get("id", 0)}
        if ctype in (3, 5, 6, 7, 8):
            chosen = values.get(custom_id, []) if custom_id else []
            return {"type": ctype, "custom_id": custom_id, "values": list(chosen), "id": comp.get("id", 0)}
        return dict(comp)

    def _options(
        self,
        where: str,
        schema: list[dict[str, Any]],
        values: dict[str, Any],
        channel: m.Channel,
        actor: m.Member | m.User,
        resolved: dict[str, dict[str, Any]],
        focused: str | None,
    ) -> list[dict[str, Any]]:
        by_name = {o["name"]: o for o in schema}
        unknown = [k for k in values if k not in by_name]
        if unknown:
            raise ValueError(f"{where}: unknown option(s) {unknown}; the command has {list(by_name)}")
        missing = [o["name"] for o in schema if o.get("required") and o["name"] not in values and o["name"] != focused]
        if missing and focused is None:
            raise ValueError(f"{where}: required option(s) {missing} not given")
        if focused is not None and focused not in values:
            raise ValueError(f"{where}: the focused option {focused!r} needs a (partial) value in options")
        out = []
        for name, value in values.items():
            opt = by_name[name]
            otype = int(opt["type"])
            if name == focused:
                if not opt.get("autocomplete"):
                    raise ValueError(f"{where}: option {name!r} has no autocomplete")
                out.append({"type": otype, "name": name, "value": str(value), "focused": True})
                continue
            out.append({"type": otype, "name": name, "value": self._value(where, opt, value, channel, actor, resolved)})
        return out

    def _value(
        self,
        where: str,
        opt: dict[str, Any],
        value: Any,
        channel: m.Channel,
        actor: m.Member | m.User,
        resolved: dict[str, dict[str, Any]],
    ) -> Any:
        otype, name = int(opt["type"]), opt["name"]
        kind = _OPTION_TYPE_NAMES.get(otype, str(otype))

        def wrong() -> ValueError:
            return ValueError(f"{where}: option {name!r} is a {kind}, not {type(value).__name__} {value!r}")

        if otype == 3:
            if not isinstance(value, str):
                raise wrong()
            self._check_choice(where, opt, value)
            low, high = opt.get("min_length"), opt.get("max_length")
            if (low is not None and len(value) < low) or (high is not None and len(value) > high):
                raise ValueError(f"{where}: option {name!r} must be {low or 0}..{high or 6000} characters long")
            return value
        if otype in (4, 10):
            if isinstance(value, bool) or not isinstance(value, int if otype == 4 else int | float):
                raise wrong()
            self._check_choice(where, opt, value)
            low, high = opt.get("min_value"), opt.get("max_value")
            if (low is not None and value < low) or (high is not None and value > high):
                raise ValueError(f"{where}: option {name!r} must be between {low} and {high}")
            return value
        if otype == 5:
            if not isinstance(value, bool):
                raise wrong()
            return value
        if otype in (6, 9) and isinstance(value, m.User | m.Member):
            self._resolve_user(value, channel, resolved)
            return str(_user_of(value).id)
        if otype in (8, 9) and isinstance(value, m.Role):
            resolved.setdefault("roles", {})[str(value.id)] = value.payload()
            return str(value.id)
        if otype == 7 and isinstance(value, m.Channel):
            types = opt.get("channel_types")
            if types and value.type not in types:
                raise ValueError(f"{where}: option {name!r} takes channel types {types}, not {value.type}")
            entry = value.payload()
            guild = self.emu.guild_of(value)
            member = self.emu.member(guild, _user_of(actor))
            # Discord sends the invoking member's permissions in the chosen channel.
            perms = guild.permissions_in(value, member) if guild is not None and member is not None else 0
            entry["permissions"] = str(perms)
            resolved.setdefault("channels", {})[str(value.id)] = entry
            return str(value.id)
        if otype == 11:
            if isinstance(value, m.Attachment):
                attachment = value
            elif isinstance(value, tuple | m.Upload):
                attachment = self.emu.make_attachment(channel.id, value, ephemeral=True)
            else:
                raise wrong()
            resolved.setdefault("attachments", {})[str(attachment.id)] = attachment.payload()
            return str(attachment.id)
        raise wrong()

    @staticmethod
    def _check_choice(where: str, opt: dict[str, Any], value: Any) -> None:
        choices = opt.get("choices")
        if choices and value not in [c["value"] for c in choices]:
            raise ValueError(f"{where}: option {opt['name']!r} must be one of {[c['value'] for c in choices]}")

    def _resolve_user(self, who: m.Member | m.User, channel: m.Channel, resolved: dict[str, dict[str, Any]]) -> None:
        user = _user_of(who)
        resolved.setdefault("users", {})[str(user.id)] = user.payload()
        guild = self.emu.guild_of(channel)
        member = self.emu.member(guild, user)
        if guild is not None and member is not None:
            perms = guild.permissions_in(channel, member)
            resolved.setdefault("members", {})[str(user.id)] = member.payload(with_user=False, permissions=perms)

    async def _dispatch(
        self,
        itype: int,
        channel: m.Channel,
        actor: m.Member | m.User,
        data: dict[str, Any],
        *,
        message: m.Message | None = None,
        command_name: str | None = None,
        locale: str = "en-US",
    ) -> InteractionHandle:
        emu = self.emu
        user = _user_of(actor)
        guild = emu.guild_of(channel)
        member = emu.member(guild, user)
        if guild is not None and member is None:
            raise ValueError(f"{user.username} is not a member of {guild.name!r}; add them with add_member()")
        interaction_id = emu.snowflakes.next()
        token = "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(64)
        channel_payload = channel.payload()
        payload: dict[str, Any] = {
            "id": str(interaction_id),
            "application_id": str(emu.application_id),
            "type": itype,
            "data": data,
            "channel_id": str(channel.id),
            "channel": channel_payload,
            "token": token,
            "version": 1,
            "locale": locale,
            "app_permissions": str(emu.bot_permissions(channel)),
            "entitlements": [],
            "entitlement_sku_ids": [],
            "attachment_size_limit": ATTACHMENT_SIZE_LIMIT,
        }
        if guild is not None and member is not None:
            perms = guild.permissions_in(channel, member)
            channel_payload["permissions"] = str(perms)
            payload.update(
                guild_id=str(guild.id),
                guild={"id": str(guild.id), "locale": guild.locale, "features": []},
                guild_locale=guild.locale,
                member=member.payload(permissions=perms),
                authorizing_integration_owners={"0": str(guild.id)},
                context=0,
            )
        else:
            payload.update(user=user.payload(), authorizing_integration_owners={"0": "0"}, context=1)
        if message is not None:
            payload["message"] = message.payload()
        handle = InteractionHandle(
            id=interaction_id,
            token=token,
            type=itype,
            payload=payload,
            channel=channel,
            user=user,
            member=member,
            created=asyncio.get_running_loop().time(),
            emulator=emu,
            source_message=message,
            command_name=command_name,
        )
        emu.interactions[interaction_id] = handle
        emu._set_mark(interaction_id)
        await emu.gateway.dispatch("INTERACTION_CREATE", payload, guild_id=channel.guild_id)
        emu.notify()
        return handle

    # ---- answers: messages made from callbacks and follow-ups ---------------------------------------------------

    def metadata(self, handle: InteractionHandle) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "id": str(handle.id),
            "type": handle.type,
            "user": handle.user.payload(),
            "authorizing_integration_owners": handle.payload["authorizing_integration_owners"],
        }
        if handle.type == APPLICATION_COMMAND and handle.command_name:
            meta["name"] = handle.command_name
            meta["command_type"] = int(handle.payload["data"].get("type", 1))
        if handle.source_message is not None:
            meta["interacted_message_id"] = str(handle.source_message.id)
        if handle.original is not None:
            meta["original_response_message_id"] = str(handle.original.id)
        return meta

    def message_type(self, handle: InteractionHandle) -> int:
        if handle.type == APPLICATION_COMMAND:
            return 23 if int(handle.payload["data"].get("type", 1)) != 1 else 20
        return 0


def _user_of(who: m.User | m.Member) -> m.User:
    return who.user if isinstance(who, m.Member) else who
