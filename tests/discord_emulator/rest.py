"""The REST API under ``/api/v10``: every request is recorded, fault rules are applied, then the route answers.

Responses use ``Content-Type: application/json`` exactly (discord.py only parses JSON with that exact header).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import BodyPartReader, web

from tests.discord_emulator import api_errors as E
from tests.discord_emulator import models as m
from tests.discord_emulator.api_errors import ApiError, FormErrors
from tests.discord_emulator.interactions import (
    APPLICATION_COMMAND,
    AUTOCOMPLETE,
    AUTOCOMPLETE_RESULT,
    CHANNEL_MESSAGE,
    DEFERRED_CHANNEL_MESSAGE,
    DEFERRED_UPDATE_MESSAGE,
    MESSAGE_COMPONENT,
    MODAL,
    MODAL_SUBMIT,
    UPDATE_MESSAGE,
    InteractionHandle,
)
from tests.discord_emulator.recording import Part, RecordedRequest
from tests.discord_emulator.validation import check_choices, check_message, check_modal, check_username

if TYPE_CHECKING:
    from tests.discord_emulator.emulator import DiscordEmulator

log = logging.getLogger(__name__)

MAX_WEBHOOKS_PER_CHANNEL = 15
_FILE_FIELD = re.compile(r"files\[(\d+)\]")
_COMMAND_NAME = re.compile(r"^[-_'\w]{1,32}$")
_ALLOWED_RESPONSES = {
    APPLICATION_COMMAND: {CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, MODAL},
    MESSAGE_COMPONENT: {CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, DEFERRED_UPDATE_MESSAGE, UPDATE_MESSAGE, MODAL},
    AUTOCOMPLETE: {AUTOCOMPLETE_RESULT},
    MODAL_SUBMIT: {CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, DEFERRED_UPDATE_MESSAGE, UPDATE_MESSAGE},
}


@dataclass
class Call:
    """One request as a route handler sees it."""

    params: dict[str, str]
    query: dict[str, str]
    json: Any
    files: list[Part]
    record: RecordedRequest

    def id(self, name: str) -> int:
        try:
            return int(self.params[name])
        except ValueError:
            raise ApiError(400, E.INVALID_FORM_BODY, f"{name}: Value {self.params[name]!r} is not snowflake.") from None

    def flag(self, name: str) -> bool:
        return self.query.get(name, "").lower() in ("1", "true")

    def body(self) -> dict[str, Any]:
        if self.json is None:
            return {}
        if not isinstance(self.json, dict):
            raise ApiError(400, E.INVALID_FORM_BODY, "the body must be a JSON object")
        return self.json


Handler = Callable[[Call], Awaitable[web.Response]]


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def no_content() -> web.Response:
    return web.Response(status=204)


class RestApi:
    def __init__(self, emulator: DiscordEmulator) -> None:
        self.emu = emulator
        self._routes: list[tuple[str, re.Pattern[str], str, Handler, bool]] = []
        r = self._route
        r("GET", "/users/@me", self.get_me)
        r("POST", "/users/@me/channels", self.open_dm)
        r("GET", "/users/{user_id}", self.get_user)
        r("GET", "/oauth2/applications/@me", self.get_application)
        r("GET", "/applications/@me", self.get_application)
        r("GET", "/gateway/bot", self.get_gateway_bot)
        r("GET", "/gateway", self.get_gateway, auth=False)
        r("GET", "/channels/{channel_id}", self.get_channel)
        r("GET", "/channels/{channel_id}/messages", self.list_messages)
        r("POST", "/channels/{channel_id}/messages", self.create_message)
        r("POST", "/channels/{channel_id}/messages/bulk-delete", self.bulk_delete)
        r("GET", "/channels/{channel_id}/messages/{message_id}", self.get_message)
        r("PATCH", "/channels/{channel_id}/messages/{message_id}", self.edit_message)
        r("DELETE", "/channels/{channel_id}/messages/{message_id}", self.delete_message)
        r("PUT", "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me", self.add_reaction)
        r("DELETE", "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me", self.remove_reaction)
        r("POST", "/channels/{channel_id}/messages/{message_id}/threads", self.thread_from_message)
        r("POST", "/channels/{channel_id}/threads", self.create_thread)
        r("POST", "/channels/{channel_id}/typing", self.typing)
        r("GET", "/channels/{channel_id}/webhooks", self.channel_webhooks)
        r("POST", "/channels/{channel_id}/webhooks", self.create_webhook)
        r("GET", "/guilds/{guild_id}", self.get_guild)
        r("GET", "/guilds/{guild_id}/channels", self.guild_channels)
        r("GET", "/guilds/{guild_id}/roles", self.guild_roles)
        r("GET", "/guilds/{guild_id}/members/{user_id}", self.get_member)
        r("GET", "/guilds/{guild_id}/webhooks", self.guild_webhooks)
        for prefix in ("/applications/{app_id}", "/applications/{app_id}/guilds/{guild_id}"):
            r("GET", prefix + "/commands", self.list_commands)
            r("PUT", prefix + "/commands", self.bulk_commands)
            r("POST", prefix + "/commands", self.upsert_command)
            r("GET", prefix + "/commands/{command_id}", self.get_command)
            r("PATCH", prefix + "/commands/{command_id}", self.edit_command)
            r("DELETE", prefix + "/commands/{command_id}", self.delete_command)
        r("POST", "/interactions/{interaction_id}/{token}/callback", self.interaction_callback, auth=False)
        r("GET", "/webhooks/{webhook_id}/{token}/messages/{message_id}", self.get_webhook_message, auth=False)
        r("PATCH", "/webhooks/{webhook_id}/{token}/messages/{message_id}", self.edit_webhook_message, auth=False)
        r("DELETE", "/webhooks/{webhook_id}/{token}/messages/{message_id}", self.delete_webhook_message, auth=False)
        r("POST", "/webhooks/{webhook_id}/{token}", self.execute_webhook, auth=False)
        r("GET", "/webhooks/{webhook_id}/{token}", self.get_webhook_with_token, auth=False)
        r("PATCH", "/webhooks/{webhook_id}/{token}", self.edit_webhook_with_token, auth=False)
        r("DELETE", "/webhooks/{webhook_id}/{token}", self.delete_webhook_with_token, auth=False)
        r("GET", "/webhooks/{webhook_id}", self.get_webhook)
        r("PATCH", "/webhooks/{webhook_id}", self.edit_webhook)
        r("DELETE", "/webhooks/{webhook_id}", self.delete_webhook)

    def _route(self, method: str, template: str, handler: Handler, *, auth: bool = True) -> None:
        regex = re.escape(template).replace(r"\{", "{").replace(r"\}", "}")
        regex = re.sub(r"{(\w+)}", r"(?P<\1>[^/]+)", regex)
        self._routes.append((method, re.compile(regex), template, handler, auth))

    # ---- dispatching ---------------------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        emu = self.emu
        path = "/" + request.match_info["tail"]
        body, parts = await _read_body(request)
        record = RecordedRequest(
            method=request.method,
            path=path,
            query=dict(request.query),
            json=body,
            parts=parts,
            time=asyncio.get_running_loop().time(),
        )
        emu.requests.append(record)
        try:
            response = await self._answer(request, record)
        except ApiError as exc:
            response = json_response(exc.body(), exc.status)
        except Exception:
            # A bug in the emulator: answer 400 so discord.py fails fast instead of retrying a 500 for 25 s.
            trace = traceback.format_exc()
            emu.internal_errors.append(f"{request.method} {path} crashed the emulator:\n{trace}")
            log.error("emulator route %s %s crashed:\n%s", request.method, path, trace)
            response = json_response({"message": "emulator internal error (see the test failure)", "code": 0}, 400)
        record.status = response.status
        emu.notify()
        return response

    async def _answer(self, request: web.Request, record: RecordedRequest) -> web.Response:
        for rule in self.emu.faults:
            if rule.matches(record.method, record.path):
                rule.remaining -= 1
                rule.hits += 1
                record.injected = True
                body, headers = rule.response(record.path)
                return json_response(body, rule.status, headers)
        for method, regex, template, handler, auth in self._routes:
            if method != record.method:
                continue
            match = regex.fullmatch(record.path)
            if match is None:
                continue
            if auth and request.headers.get("Authorization") != f"Bot {self.emu.token}":
                raise ApiError(401, 0, "401: Unauthorized")
            files = sorted((p for p in record.parts if _file_index(p) is not None), key=lambda p: _file_index(p) or 0)
            call = Call(match.groupdict(), record.query, record.json, files, record)
            response = await handler(call)
            response.headers.update(_ratelimit_headers(template, match.groupdict()))
            return response
        self.emu.internal_errors.append(f"the emulator has no route for {record.method} {record.path}")
        raise ApiError(404, 0, "404: Not Found")

    async def serve_attachment(self, request: web.Request) -> web.StreamResponse:
        """The CDN: uploaded files by URL, so the bot can download what users attached. Recorded like REST calls
        (with the absolute path, /attachments/...)."""
        record = RecordedRequest(request.method, request.path, dict(request.query), None)
        record.time = asyncio.get_running_loop().time()
        self.emu.requests.append(record)
        try:
            attachment = self.emu.files[int(request.match_info["attachment_id"])]
        except (KeyError, ValueError):
            record.status = 404
            return web.Response(status=404, text="Not Found")
        record.status = 200
        self.emu.notify()
        return web.Response(body=attachment.data, content_type=attachment.content_type or "application/octet-stream")

    # ---- lookups with Discord's errors --------------------------------------------------------------------------

    def _channel(self, call: Call) -> m.Channel:
        channel = self.emu.channels.get(call.id("channel_id"))
        if channel is None:
            raise ApiError(404, E.UNKNOWN_CHANNEL)
        return channel

    def _message(self, channel: m.Channel, message_id: int) -> m.Message:
        msg = self.emu.messages.get(message_id)
        if msg is None or msg.deleted or msg.channel_id != channel.id or msg.ephemeral:
            raise ApiError(404, E.UNKNOWN_MESSAGE)
        return msg

    def _guild(self, call: Call) -> m.Guild:
        guild = self.emu.guilds.get(call.id("guild_id"))
        if guild is None:
            raise ApiError(404, E.UNKNOWN_GUILD)
        return guild

    def _require(self, channel: m.Channel, *needed: int) -> None:
        """403 like Discord when the bot lacks a permission in the channel (Missing Access without View Channel)."""
        perms = self.emu.bot_permissions(channel)
        if not perms & m.VIEW_CHANNEL:
            raise ApiError(403, E.MISSING_ACCESS)
        for bit in needed:
            if not perms & bit:
                raise ApiError(403, E.MISSING_PERMISSIONS)

    # ---- users, application, gateway ----------------------------------------------------------------------------

    async def get_me(self, call: Call) -> web.Response:
        return json_response(self.emu.bot_user.payload() | {"verified": True, "mfa_enabled": False, "flags": 0})

    async def get_user(self, call: Call) -> web.Response:
        user = self.emu.users.get(call.id("user_id"))
        if user is None:
            raise ApiError(404, E.UNKNOWN_USER)
        return json_response(user.payload())

    async def open_dm(self, call: Call) -> web.Response:
        user = self.emu.users.get(int(call.body().get("recipient_id") or 0))
        if user is None:
            raise ApiError(404, E.UNKNOWN_USER)
        return json_response(self.emu.create_dm(user).payload())

    async def get_application(self, call: Call) -> web.Response:
        emu = self.emu
        return json_response(
            {
                "id": str(emu.application_id),
                "name": emu.bot_user.username,
                "icon": None,
                "description": "rpbot under test",
                "summary": "",
                "type": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "verify_key": "0" * 64,
                "owner": emu.app_owner.payload(),
                "team": None,
                "flags": emu.application_flags,
                "bot": emu.bot_user.payload(),
                "redirect_uris": [],
                "interactions_endpoint_url": None,
                "install_params": {"scopes": ["bot", "applications.commands"], "permissions": "0"},
                "integration_types_config": {"0": {}},
            }
        )

    async def get_gateway_bot(self, call: Call) -> web.Response:
        return json_response(
            {
                "url": self.emu.gateway_url,
                "shards": self.emu.recommended_shards,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 999,
                    "reset_after": 14_400_000,
                    "max_concurrency": 1,
                },
            }
        )

    async def get_gateway(self, call: Call) -> web.Response:
        return json_response({"url": self.emu.gateway_url})

    # ---- channels and messages ----------------------------------------------------------------------------------

    async def get_channel(self, call: Call) -> web.Response:
        channel = self._channel(call)
        if channel.guild_id is not None:
            self._require(channel)
        return json_response(channel.payload())

    async def list_messages(self, call: Call) -> web.Response:
        channel = self._channel(call)
        if channel.guild_id is not None:
            self._require(channel, m.READ_MESSAGE_HISTORY)
        try:
            limit = int(call.query.get("limit", "50"))
        except ValueError:
            raise ApiError(400, E.INVALID_FORM_BODY, "limit: Value is not int.") from None
        if not 1 <= limit <= 100:
            raise ApiError(400, E.INVALID_FORM_BODY, "limit: int value should be between 1 and 100.")
        msgs = self.emu.messages_in(channel)  # oldest first
        if "after" in call.query:
            after = int(call.query["after"])
            msgs = [x for x in msgs if x.id > after][:limit]
        elif "around" in call.query:
            around = int(call.query["around"])
            older = [x for x in msgs if x.id <= around][-(limit // 2 + limit % 2) :]
            newer = [x for x in msgs if x.id > around][: limit // 2]
            msgs = older + newer
        else:
            if "before" in call.query:
                before = int(call.query["before"])
                msgs = [x for x in msgs if x.id < before]
            msgs = msgs[-limit:]
        return json_response([x.payload() for x in reversed(msgs)])  # newest first, as Discord returns them

    async def get_message(self, call: Call) -> web.Response:
        channel = self._channel(call)
        if channel.guild_id is not None:
            self._require(channel, m.READ_MESSAGE_HISTORY)
        return json_response(self._message(channel, call.id("message_id")).payload())

    async def create_message(self, call: Call) -> web.Response:
        channel = self._channel(call)
        body = call.body()
        if channel.guild_id is not None:
            self._require(channel, m.SEND_MESSAGES_IN_THREADS if channel.is_thread else m.SEND_MESSAGES)
            if call.files:
                self._require(channel, m.ATTACH_FILES)
        check_message(body, new_files=len(call.files))
        fields = self._message_fields(channel, body, call.files, existing=None)
        fields["flags"] &= ~m.FLAG_EPHEMERAL  # only interaction responses can be ephemeral
        ref = body.get("message_reference")
        if ref:
            target = self.emu.messages.get(int(ref.get("message_id") or 0))
            if target is None or target.deleted or target.channel_id != int(ref.get("channel_id") or channel.id):
                if ref.get("fail_if_not_exists", True):
                    errors = FormErrors()
                    errors.add("message_reference", "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "Unknown message")
                    errors.raise_if_any()
            else:
                fields.update(type=19, message_reference=_reference(target), referenced_message_id=target.id)
                users, roles, everyone = self.emu.resolve_mentions(
                    str(body.get("content") or ""), body.get("allowed_mentions"), reply_to=target
                )
                fields.update(mention_ids=users, mention_role_ids=roles, mention_everyone=everyone)
        msg = self.emu.new_message(channel, self.emu.bot_user, str(body.get("content") or ""), "bot", **fields)
        if body.get("nonce") is not None:
            msg.nonce = body["nonce"]
        await self.emu.store_message(msg)
        return json_response(msg.payload())

    async def edit_message(self, call: Call) -> web.Response:
        channel = self._channel(call)
        msg = self._message(channel, call.id("message_id"))
        body = call.body()
        if msg.author.id != self.emu.bot_user.id:
            only_flags = set(body) <= {"flags"}
            if not only_flags:
                raise ApiError(403, E.CANNOT_EDIT_OTHERS_MESSAGE)
            self._require(channel, m.MANAGE_MESSAGES)
        await self._apply_edit(msg, body, call.files)
        return json_response(msg.payload())

    async def delete_message(self, call: Call) -> web.Response:
        channel = self._channel(call)
        msg = self._message(channel, call.id("message_id"))
        if msg.author.id != self.emu.bot_user.id and channel.guild_id is not None:
            self._require(channel, m.MANAGE_MESSAGES)
        await self.emu.remove_message(msg)
        return no_content()

    async def bulk_delete(self, call: Call) -> web.Response:
        channel = self._channel(call)
        self._require(channel, m.MANAGE_MESSAGES)
        ids = [int(x) for x in call.body().get("messages") or []]
        if not 2 <= len(ids) <= 100:
            raise ApiError(400, E.INVALID_FORM_BODY, "messages: must be between 2 and 100 in length.")
        msgs = [self._message(channel, i) for i in ids]
        await self.emu.bulk_delete(channel, msgs)
        return no_content()

    async def add_reaction(self, call: Call) -> web.Response:
        channel = self._channel(call)
        msg = self._message(channel, call.id("message_id"))
        if channel.guild_id is not None:
            self._require(channel, m.READ_MESSAGE_HISTORY, m.ADD_REACTIONS)
        emoji = call.params["emoji"]
        if emoji not in msg.reactions:
            msg.reactions.append(emoji)
        return no_content()

    async def remove_reaction(self, call: Call) -> web.Response:
        channel = self._channel(call)
        msg = self._message(channel, call.id("message_id"))
        if call.params["emoji"] in msg.reactions:
            msg.reactions.remove(call.params["emoji"])
        return no_content()

    async def typing(self, call: Call) -> web.Response:
        channel = self._channel(call)
        if channel.guild_id is not None:
            self._require(channel, m.SEND_MESSAGES_IN_THREADS if channel.is_thread else m.SEND_MESSAGES)
        return no_content()

    async def create_thread(self, call: Call) -> web.Response:
        channel = self._channel(call)
        body = call.body()
        private = int(body.get("type") or m.PRIVATE_THREAD) == m.PRIVATE_THREAD
        self._require(channel, m.CREATE_PRIVATE_THREADS if private else m.CREATE_PUBLIC_THREADS)
        thread = await self._new_thread(channel, body, private=private, starter=None)
        return json_response(thread.payload(), 201)

    async def thread_from_message(self, call: Call) -> web.Response:
        channel = self._channel(call)
        msg = self._message(channel, call.id("message_id"))
        self._require(channel, m.CREATE_PUBLIC_THREADS)
        if msg.id in self.emu.channels:
            raise ApiError(400, 160004, "A thread has already been created for this message")
        thread = await self._new_thread(channel, call.body(), private=False, starter=msg)
        return json_response(thread.payload(), 201)

    async def _new_thread(
        self, channel: m.Channel, body: dict[str, Any], *, private: bool, starter: m.Message | None
    ) -> m.Channel:
        if channel.is_thread or channel.guild_id is None:
            raise ApiError(400, E.INVALID_CHANNEL_TYPE)
        name = body.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= 100:
            errors = FormErrors()
            errors.add("name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
            errors.raise_if_any()
        thread = await self.emu.create_thread(channel, str(name), private=private, starter=starter)
        thread.auto_archive_duration = int(body.get("auto_archive_duration") or 1440)
        return thread

    # ---- webhooks -----------------------------------------------------------------------------------------------

    async def channel_webhooks(self, call: Call) -> web.Response:
        channel = self._channel(call)
        if channel.guild_id is None or channel.is_thread:
            raise ApiError(400, E.INVALID_CHANNEL_TYPE)
        self._require(channel, m.MANAGE_WEBHOOKS)
        return json_response([w.payload() for w in self.emu.webhooks_in(channel)])

    async def create_webhook(self, call: Call) -> web.Response:
        channel = self._channel(call)
        if channel.guild_id is None or channel.is_thread:
            raise ApiError(400, E.INVALID_CHANNEL_TYPE)
        self._require(channel, m.MANAGE_WEBHOOKS)
        body = call.body()
        errors = FormErrors()
        check_username(errors, body.get("name"), "name")
        avatar = body.get("avatar")
        if avatar is not None and not (isinstance(avatar, str) and avatar.startswith("data:image/")):
            errors.add("avatar", "IMAGE_INVALID", "Invalid image data")
        errors.raise_if_any()
        if len(self.emu.webhooks_in(channel)) >= MAX_WEBHOOKS_PER_CHANNEL:
            raise ApiError(400, E.MAX_WEBHOOKS)
        webhook = self.emu._new_webhook(
            channel,
            body["name"],
            creator=self.emu.bot_user,
            application_id=self.emu.application_id,
            avatar=avatar,
        )
        self.emu.notify()
        return json_response(webhook.payload())

    async def guild_webhooks(self, call: Call) -> web.Response:
        guild = self._guild(call)
        if not guild.base_permissions(guild.members[self.emu.bot_user.id]) & m.MANAGE_WEBHOOKS:
            raise ApiError(403, E.MISSING_PERMISSIONS)
        hooks = [w for w in self.emu.webhooks.values() if w.guild_id == guild.id and not w.deleted]
        return json_response([w.payload() for w in hooks])

    def _webhook(self, call: Call, *, token: bool) -> m.Webhook:
        webhook = self.emu.webhooks.get(call.id("webhook_id"))
        if webhook is None or webhook.deleted:
            raise ApiError(404, E.UNKNOWN_WEBHOOK)
        if token and call.params["token"] != webhook.token:
            raise ApiError(401, E.INVALID_WEBHOOK_TOKEN)
        if not token:
            channel = self.emu.channels[webhook.channel_id]
            self._require(channel, m.MANAGE_WEBHOOKS)
        return webhook

    async def get_webhook(self, call: Call) -> web.Response:
        return json_response(self._webhook(call, token=False).payload())

    async def get_webhook_with_token(self, call: Call) -> web.Response:
        return json_response(self._webhook(call, token=True).payload(with_user=False))

    async def edit_webhook(self, call: Call) -> web.Response:
        webhook = self._webhook(call, token=False)
        body = call.body()
        if "channel_id" in body:
            target = self.emu.channels.get(int(body["channel_id"]))
            if target is None or target.guild_id != webhook.guild_id or target.is_thread:
                raise ApiError(400, E.INVALID_FORM_BODY, "channel_id: Unknown channel")
            self._require(target, m.MANAGE_WEBHOOKS)
            webhook.channel_id = target.id
        await self._edit_webhook(webhook, body)
        return json_response(webhook.payload())

    async def edit_webhook_with_token(self, call: Call) -> web.Response:
        webhook = self._webhook(call, token=True)
        await self._edit_webhook(webhook, call.body())
        return json_response(webhook.payload(with_user=False))

    async def _edit_webhook(self, webhook: m.Webhook, body: dict[str, Any]) -> None:
        errors = FormErrors()
        if "name" in body:
            check_username(errors, body["name"], "name")
        if "avatar" in body and body["avatar"] is not None and not str(body["avatar"]).startswith("data:image/"):
            errors.add("avatar", "IMAGE_INVALID", "Invalid image data")
        errors.raise_if_any()
        if "name" in body:
            webhook.name = body["name"]
        if "avatar" in body:
            webhook.avatar_data = body["avatar"]
        self.emu.notify()

    async def delete_webhook(self, call: Call) -> web.Response:
        await self.emu.delete_webhook(self._webhook(call, token=False))
        return no_content()

    async def delete_webhook_with_token(self, call: Call) -> web.Response:
        await self.emu.delete_webhook(self._webhook(call, token=True))
        return no_content()

    def _interaction_for_webhook(self, call: Call) -> InteractionHandle | None:
        """Interaction tokens act as webhooks of the application: /webhooks/{application_id}/{token}."""
        if call.params["webhook_id"] != str(self.emu.application_id):
            return None
        for handle in self.emu.interactions.values():
            if handle.token == call.params["token"]:
                if handle.expired(asyncio.get_running_loop().time()):
                    raise ApiError(401, E.INVALID_WEBHOOK_TOKEN)
                return handle
        raise ApiError(401, E.INVALID_WEBHOOK_TOKEN)

    async def execute_webhook(self, call: Call) -> web.Response:
        handle = self._interaction_for_webhook(call)
        if handle is not None:
            return await self._followup(handle, call)
        webhook = self._webhook(call, token=True)
        body = call.body()
        channel = self.emu.channels[webhook.channel_id]
        if "thread_id" in call.query:
            thread = self.emu.channels.get(int(call.query["thread_id"]))
            if thread is None or thread.parent_id != webhook.channel_id:
                raise ApiError(400, E.UNKNOWN_CHANNEL, "Unknown Channel")
            if thread.archived and thread.locked:
                raise ApiError(400, 50083, "Thread is archived")
            channel = thread
        check_message(body, new_files=len(call.files), webhook=True)
        interactive = [
            c
            for c in m.iter_components(body.get("components") or [])
            if c.get("type") in (3, 5, 6, 7, 8) or (c.get("type") == 2 and c.get("style") != 5)
        ]
        if interactive and webhook.application_id is None:
            raise ApiError(400, E.INVALID_FORM_BODY, "Interactive components need an application-owned webhook")
        if body.get("components") and webhook.application_id is None and not call.flag("with_components"):
            raise ApiError(400, E.INVALID_FORM_BODY, "components: with_components=true is required for this webhook")
        fields = self._message_fields(channel, body, call.files, existing=None)
        fields["flags"] &= ~m.FLAG_EPHEMERAL
        username = body.get("username")
        avatar_url = body.get("avatar_url")
        author = m.User(
            webhook.id,
            username or webhook.name,
            bot=True,
            discriminator="0000",
            avatar=m.avatar_hash(avatar_url) if avatar_url else webhook.avatar,
        )
        fields.update(
            webhook_id=webhook.id,
            application_id=webhook.application_id,
            username=username,
            avatar_url=avatar_url,
        )
        msg = self.emu.new_message(channel, author, str(body.get("content") or ""), "webhook", **fields)
        msg.author_member = None
        await self.emu.store_message(msg)
        return json_response(msg.payload()) if call.flag("wait") else no_content()

    def _webhook_message(self, call: Call) -> tuple[m.Message, InteractionHandle | None]:
        handle = self._interaction_for_webhook(call)
        if handle is not None:
            if call.params["message_id"] == "@original":
                if handle.original is None or handle.original.deleted:
                    raise ApiError(404, E.UNKNOWN_MESSAGE)
                return handle.original, handle
            wanted = call.id("message_id")
            for msg in handle.messages():
                if msg.id == wanted and not msg.deleted:
                    return msg, handle
            raise ApiError(404, E.UNKNOWN_MESSAGE)
        webhook = self._webhook(call, token=True)
        found = self.emu.messages.get(call.id("message_id"))
        expected_channel = int(call.query.get("thread_id") or webhook.channel_id)
        # A message in a thread is only found with ?thread_id=, as on Discord.
        if found is None or found.deleted or found.webhook_id != webhook.id or found.channel_id != expected_channel:
            raise ApiError(404, E.UNKNOWN_MESSAGE)
        return found, None

    async def get_webhook_message(self, call: Call) -> web.Response:
        msg, _ = self._webhook_message(call)
        return json_response(msg.payload())

    async def edit_webhook_message(self, call: Call) -> web.Response:
        msg, handle = self._webhook_message(call)
        body = call.body()
        if handle is not None and msg is handle.original:
            handle.original_edits.append(body)
        await self._apply_edit(msg, body, call.files, webhook=handle is None)
        return json_response(msg.payload())

    async def delete_webhook_message(self, call: Call) -> web.Response:
        msg, _ = self._webhook_message(call)
        await self.emu.remove_message(msg)
        return no_content()

    # ---- interactions ------------------------------------------------------------------------------------------

    async def interaction_callback(self, call: Call) -> web.Response:
        emu = self.emu
        handle = emu.interactions.get(call.id("interaction_id"))
        if handle is None or handle.token != call.params["token"]:
            raise ApiError(404, E.UNKNOWN_INTERACTION)
        now = asyncio.get_running_loop().time()
        if emu.interaction_deadline is not None and now - handle.created > emu.interaction_deadline:
            raise ApiError(404, E.UNKNOWN_INTERACTION)
        if handle.acknowledged:
            raise ApiError(400, E.ALREADY_ACKNOWLEDGED)
        body = call.body()
        rtype = body.get("type")
        data = body.get("data") or {}
        if rtype not in _ALLOWED_RESPONSES.get(handle.type, set()) or (
            rtype in (DEFERRED_UPDATE_MESSAGE, UPDATE_MESSAGE) and handle.source_message is None
        ):
            raise ApiError(400, E.INVALID_FORM_BODY, f"Interaction response type {rtype} is not valid here")
        if rtype == CHANNEL_MESSAGE:
            check_message(data, new_files=len(call.files))
            fields = self._message_fields(handle.channel, data, call.files, existing=None)
            handle.original = await self._interaction_message(handle, data, fields, "interaction")
        elif rtype == DEFERRED_CHANNEL_MESSAGE:
            flags = m.FLAG_LOADING | (int(data.get("flags") or 0) & m.FLAG_EPHEMERAL)
            handle.original = await self._interaction_message(handle, {}, {"flags": flags}, "interaction")
        elif rtype == DEFERRED_UPDATE_MESSAGE:
            handle.original = handle.source_message
        elif rtype == UPDATE_MESSAGE:
            assert handle.source_message is not None
            check_message(data, new_files=len(call.files), creating=False)
            await self._apply_edit(handle.source_message, data, call.files)
            handle.original = handle.source_message
        elif rtype == AUTOCOMPLETE_RESULT:
            check_choices(data)
            handle.choices = list(data["choices"])
        elif rtype == MODAL:
            check_modal(data)
            handle.modal = data
        handle.callbacks.append(body)
        emu.notify()
        if not call.flag("with_response"):
            return no_content()
        info: dict[str, Any] = {"id": str(handle.id), "type": handle.type}
        resource: dict[str, Any] = {"type": rtype}
        if handle.original is not None and rtype in (CHANNEL_MESSAGE, DEFERRED_CHANNEL_MESSAGE, UPDATE_MESSAGE):
            info.update(
                response_message_id=str(handle.original.id),
                response_message_loading=handle.original.loading,
                response_message_ephemeral=handle.original.ephemeral,
            )
            resource["message"] = handle.original.payload()
        return json_response({"interaction": info, "resource": resource})

    async def _interaction_message(
        self, handle: InteractionHandle, data: dict[str, Any], fields: dict[str, Any], source: str
    ) -> m.Message:
        emu = self.emu
        fields.setdefault("flags", 0)
        msg = emu.new_message(
            handle.channel,
            emu.bot_user,
            str(data.get("content") or ""),
            source,
            type=emu.interaction_builder.message_type(handle),
            webhook_id=emu.application_id,
            application_id=emu.application_id,
            interaction_metadata=emu.interaction_builder.metadata(handle),
            **fields,
        )
        return await emu.store_message(msg)

    async def _followup(self, handle: InteractionHandle, call: Call) -> web.Response:
        if not handle.acknowledged or handle.response_type in (AUTOCOMPLETE_RESULT,):
            raise ApiError(404, E.UNKNOWN_WEBHOOK)
        body = call.body()
        check_message(body, new_files=len(call.files), webhook=True)
        original = handle.original
        if original is not None and original.loading and handle.response_type == DEFERRED_CHANNEL_MESSAGE:
            # After a "thinking" deferral the first follow-up replaces the loading message (keeping its visibility).
            await self._apply_edit(original, body, call.files)
            handle.followups.append(original)
            self.emu.notify()
            return json_response(original.payload())
        fields = self._message_fields(handle.channel, body, call.files, existing=None)
        allowed_flags = m.FLAG_EPHEMERAL | m.FLAG_SUPPRESS_EMBEDS | m.FLAG_COMPONENTS_V2
        fields["flags"] = int(body.get("flags") or 0) & allowed_flags
        msg = await self._interaction_message(handle, body, fields, "followup")
        handle.followups.append(msg)
        self.emu.notify()
        return json_response(msg.payload())

    # ---- application commands -----------------------------------------------------------------------------------

    def _command_scope(self, call: Call) -> int | None:
        if call.params["app_id"] != str(self.emu.application_id):
            raise ApiError(403, E.MISSING_ACCESS)
        if "guild_id" not in call.params:
            return None
        guild = self.emu.guilds.get(call.id("guild_id"))
        if guild is None:
            raise ApiError(403, E.MISSING_ACCESS)  # what Discord says when the app is not in that guild
        return guild.id

    def _check_command(self, errors: FormErrors, index: int, data: Any) -> None:
        where = f"{index}"
        if not isinstance(data, dict):
            errors.add(where, "DICT_TYPE_CONVERT", "Only dictionaries may be used in a DictType")
            return
        ctype = int(data.get("type") or 1)
        name = data.get("name")
        if not isinstance(name, str) or not (1 <= len(name) <= 32):
            errors.add(f"{where}.name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 32 in length.")
        elif ctype == 1 and (not _COMMAND_NAME.match(name) or name != name.lower()):
            errors.add(f"{where}.name", "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid")
        description = data.get("description") or ""
        if ctype == 1 and not 1 <= len(description) <= 100:
            errors.add(f"{where}.description", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
        if len(data.get("options") or []) > 25:
            errors.add(f"{where}.options", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")

    def _store_command(self, scope: int | None, data: dict[str, Any]) -> m.AppCommand:
        emu = self.emu
        commands = emu.commands.setdefault(scope, {})
        key = (str(data["name"]), int(data.get("type") or 1))
        existing = commands.get(key)
        command = m.AppCommand(
            existing.id if existing else emu.snowflakes.next(),
            emu.application_id,
            scope,
            emu.snowflakes.next(),
            dict(data),
        )
        commands[key] = command
        return command

    async def bulk_commands(self, call: Call) -> web.Response:
        scope = self._command_scope(call)
        items = call.json
        if not isinstance(items, list):
            raise ApiError(400, E.INVALID_FORM_BODY, "the body must be a list of commands")
        errors = FormErrors()
        for i, data in enumerate(items):
            self._check_command(errors, i, data)
        keys = [(d.get("name"), int(d.get("type") or 1)) for d in items]
        if len(set(keys)) != len(keys):
            errors.add("_", "APPLICATION_COMMANDS_DUPLICATE_NAME", "Application command names must be unique")
        errors.raise_if_any()
        old = self.emu.commands.get(scope, {})
        self.emu.commands[scope] = {k: v for k, v in old.items() if k in set(keys)}
        stored = [self._store_command(scope, d) for d in items]
        self.emu.command_syncs.append((scope, asyncio.get_running_loop().time()))
        return json_response([c.payload() for c in stored])

    async def list_commands(self, call: Call) -> web.Response:
        scope = self._command_scope(call)
        return json_response([c.payload() for c in self.emu.commands.get(scope, {}).values()])

    async def upsert_command(self, call: Call) -> web.Response:
        scope = self._command_scope(call)
        errors = FormErrors()
        self._check_command(errors, 0, call.json)
        errors.raise_if_any()
        return json_response(self._store_command(scope, call.body()).payload(), 201)

    def _find_command(self, call: Call) -> tuple[int | None, m.AppCommand]:
        scope = self._command_scope(call)
        wanted = call.id("command_id")
        for command in self.emu.commands.get(scope, {}).values():
            if command.id == wanted:
                return scope, command
        raise ApiError(404, E.UNKNOWN_COMMAND)

    async def get_command(self, call: Call) -> web.Response:
        return json_response(self._find_command(call)[1].payload())

    async def edit_command(self, call: Call) -> web.Response:
        scope, command = self._find_command(call)
        data = command.data | call.body()
        return json_response(self._store_command(scope, data).payload())

    async def delete_command(self, call: Call) -> web.Response:
        scope, command = self._find_command(call)
        self.emu.commands[scope].pop((command.name, command.type), None)
        return no_content()

    # ---- guilds -------------------------------------------------------------------------------------------------

    async def get_guild(self, call: Call) -> web.Response:
        guild = self._guild(call)
        data = guild.payload(members=[])
        for key in ("channels", "threads", "members", "voice_states", "presences", "joined_at", "large", "unavailable"):
            data.pop(key, None)
        return json_response(data)

    async def guild_channels(self, call: Call) -> web.Response:
        guild = self._guild(call)
        return json_response([c.payload() for c in guild.channels.values() if not c.is_thread])

    async def guild_roles(self, call: Call) -> web.Response:
        return json_response([r.payload() for r in self._guild(call).roles.values()])

    async def get_member(self, call: Call) -> web.Response:
        guild = self._guild(call)
        member = guild.members.get(call.id("user_id"))
        if member is None:
            raise ApiError(404, E.UNKNOWN_MEMBER)
        return json_response(member.payload())

    # ---- shared message building --------------------------------------------------------------------------------

    def _components(self, components: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Components as Discord returns them: numbered depth first where the sender gave no id."""
        out = json.loads(json.dumps(components))
        used = {c["id"] for c in m.iter_components(out) if isinstance(c.get("id"), int)}
        counter = 1
        for comp in m.iter_components(out):
            if "id" not in comp:
                while counter in used:
                    counter += 1
                comp["id"] = counter
                used.add(counter)
        return out

    def _attachments(
        self, channel: m.Channel, body: dict[str, Any], files: list[Part], existing: m.Message | None
    ) -> list[m.Attachment] | None:
        """New attachment list, or None to keep the current one. ``attachments`` entries with an existing id keep
        that attachment; numeric ids refer to files[n] uploaded with this request."""
        uploads = {_file_index(part): part for part in files}
        wanted = body.get("attachments")
        if wanted is None:
            if not uploads:
                return None
            kept = [] if existing is None else list(existing.attachments)
            return kept + [self._upload(channel, part, None) for _, part in sorted(uploads.items())]
        result: list[m.Attachment] = []
        current = {a.id: a for a in (existing.attachments if existing is not None else [])}
        for entry in wanted:
            ident = int(entry.get("id"))
            if ident in current:
                result.append(current[ident])
            elif ident in uploads:
                result.append(self._upload(channel, uploads[ident], entry))
            else:
                errors = FormErrors()
                errors.add("attachments", "ATTACHMENT_NOT_FOUND", f"Attachment {ident} not found")
                errors.raise_if_any()
        return result

    def _upload(self, channel: m.Channel, part: Part, entry: dict[str, Any] | None) -> m.Attachment:
        content_type = part.content_type if part.content_type not in (None, "application/octet-stream") else None
        upload = m.Upload(
            (entry or {}).get("filename") or part.filename or "file",
            part.data,
            content_type,
            (entry or {}).get("description"),
        )
        return self.emu.make_attachment(channel.id, upload)

    def _message_fields(
        self, channel: m.Channel, body: dict[str, Any], files: list[Part], *, existing: m.Message | None
    ) -> dict[str, Any]:
        content = str(body.get("content") or "")
        allowed = body.get("allowed_mentions")
        users, roles, everyone = self.emu.resolve_mentions(content, allowed)
        fields: dict[str, Any] = {
            "embeds": [dict(e, type=e.get("type", "rich")) for e in body.get("embeds") or []],
            "components": self._components(body.get("components") or []),
            "allowed_mentions": allowed,
            "mention_ids": users,
            "mention_role_ids": roles,
            "mention_everyone": everyone,
            "flags": int(body.get("flags") or 0)
            & (m.FLAG_SUPPRESS_EMBEDS | m.FLAG_SUPPRESS_NOTIFICATIONS | m.FLAG_COMPONENTS_V2 | m.FLAG_EPHEMERAL),
            "tts": bool(body.get("tts", False)),
        }
        attachments = self._attachments(channel, body, files, existing)
        fields["attachments"] = attachments or []
        return fields

    async def _apply_edit(
        self, msg: m.Message, body: dict[str, Any], files: list[Part], *, webhook: bool = False
    ) -> None:
        check_message(body, new_files=len(files), creating=False, webhook=webhook)
        changes: dict[str, Any] = {}
        if "content" in body:
            changes["content"] = str(body["content"] or "")
        if "embeds" in body:
            changes["embeds"] = [dict(e, type=e.get("type", "rich")) for e in body["embeds"] or []]
        if "components" in body:
            changes["components"] = self._components(body["components"] or [])
        if "allowed_mentions" in body:
            changes["allowed_mentions"] = body["allowed_mentions"]
        if "flags" in body and body["flags"] is not None:
            keep = msg.flags & m.FLAG_EPHEMERAL
            changes["flags"] = keep | (int(body["flags"]) & (m.FLAG_SUPPRESS_EMBEDS | m.FLAG_COMPONENTS_V2))
        attachments = self._attachments(self.emu.channels[msg.channel_id], body, files, msg)
        if attachments is not None:
            changes["attachments"] = attachments
        if msg.loading:
            changes["flags"] = changes.get("flags", msg.flags) & ~m.FLAG_LOADING
        content = changes.get("content", msg.content)
        allowed = changes.get("allowed_mentions", msg.allowed_mentions)
        users, roles, everyone = self.emu.resolve_mentions(content, allowed)
        if msg.source != "user":
            changes.update(mention_ids=users, mention_role_ids=roles, mention_everyone=everyone)
        has_body = content.strip() or changes.get("embeds", msg.embeds) or changes.get("attachments", msg.attachments)
        if not has_body and not changes.get("components", msg.components):
            raise ApiError(400, E.CANNOT_SEND_EMPTY_MESSAGE)
        await self.emu.update_message(msg, changes, record=body)


def _file_index(part: Part) -> int | None:
    """n for a ``files[n]`` part with a file name; None for anything else."""
    match = _FILE_FIELD.fullmatch(part.name)
    return int(match.group(1)) if match is not None and part.filename is not None else None


def _reference(message: m.Message) -> dict[str, Any]:
    ref: dict[str, Any] = {"type": 0, "message_id": str(message.id), "channel_id": str(message.channel_id)}
    if message.guild_id is not None:
        ref["guild_id"] = str(message.guild_id)
    return ref


def _ratelimit_headers(template: str, params: dict[str, str]) -> dict[str, str]:
    """Generous rate-limit headers, so discord.py's bucket logic runs without ever pausing."""
    major = params.get("channel_id") or params.get("guild_id") or params.get("webhook_id") or ""
    bucket = hashlib.sha1(f"{template}:{major}".encode(), usedforsecurity=False).hexdigest()[:32]
    return {
        "X-RateLimit-Bucket": bucket,
        "X-RateLimit-Limit": "50",
        "X-RateLimit-Remaining": "49",
        "X-RateLimit-Reset-After": "1.000",
    }


async def _read_body(request: web.Request) -> tuple[Any, list[Part]]:
    if not request.can_read_body:
        return None, []
    ctype = request.content_type
    if ctype.startswith("multipart/"):
        parts: list[Part] = []
        payload: Any = None
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, BodyPartReader):
                continue  # nested multipart: Discord does not use it
            data = await part.read(decode=False)
            name = part.name or ""
            parts.append(Part(name, part.filename, part.headers.get("Content-Type"), bytes(data)))
            if name == "payload_json":
                payload = json.loads(data)
        return payload, parts
    raw = await request.read()
    if not raw:
        return None, []
    if ctype == "application/json":
        return json.loads(raw), []
    return raw.decode("utf-8", "replace"), []
