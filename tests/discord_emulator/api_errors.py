"""Discord's JSON error responses: the status, the numeric error code and the message discord.py shows."""

from __future__ import annotations

from typing import Any

# https://discord.com/developers/docs/topics/opcodes-and-status-codes#json
UNKNOWN_CHANNEL = 10003
UNKNOWN_GUILD = 10004
UNKNOWN_MEMBER = 10007
UNKNOWN_MESSAGE = 10008
UNKNOWN_WEBHOOK = 10015
UNKNOWN_USER = 10013
UNKNOWN_INTERACTION = 10062
UNKNOWN_COMMAND = 10063
MISSING_ACCESS = 50001
CANNOT_EDIT_OTHERS_MESSAGE = 50005
CANNOT_SEND_EMPTY_MESSAGE = 50006
INVALID_CHANNEL_TYPE = 50024
INVALID_WEBHOOK_TOKEN = 50027
INVALID_FORM_BODY = 50035
MISSING_PERMISSIONS = 50013
MAX_WEBHOOKS = 30007
ALREADY_ACKNOWLEDGED = 40060

_DEFAULT_MESSAGES = {
    UNKNOWN_CHANNEL: "Unknown Channel",
    UNKNOWN_GUILD: "Unknown Guild",
    UNKNOWN_MEMBER: "Unknown Member",
    UNKNOWN_MESSAGE: "Unknown Message",
    UNKNOWN_WEBHOOK: "Unknown Webhook",
    UNKNOWN_USER: "Unknown User",
    UNKNOWN_INTERACTION: "Unknown interaction",
    UNKNOWN_COMMAND: "Unknown application command",
    MISSING_ACCESS: "Missing Access",
    CANNOT_EDIT_OTHERS_MESSAGE: "Cannot edit a message authored by another user",
    CANNOT_SEND_EMPTY_MESSAGE: "Cannot send an empty message",
    INVALID_CHANNEL_TYPE: "Cannot execute action on this channel type",
    INVALID_WEBHOOK_TOKEN: "Invalid Webhook Token",
    INVALID_FORM_BODY: "Invalid Form Body",
    MISSING_PERMISSIONS: "Missing Permissions",
    MAX_WEBHOOKS: "Maximum number of webhooks reached (15)",
    ALREADY_ACKNOWLEDGED: "Interaction has already been acknowledged.",
}


class ApiError(Exception):
    """Raised inside a route handler; becomes the HTTP error response Discord would give."""

    def __init__(
        self,
        status: int,
        code: int = 0,
        message: str | None = None,
        *,
        errors: dict[str, Any] | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message or _DEFAULT_MESSAGES.get(code) or _status_text(status)
        self.errors = errors
        super().__init__(f"{status} {self.message} (code {code})")

    def body(self) -> dict[str, Any]:
        data: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors is not None:
            data["errors"] = self.errors
        return data


def _status_text(status: int) -> str:
    return {
        400: "400: Bad Request",
        401: "401: Unauthorized",
        403: "403: Forbidden",
        404: "404: Not Found",
        405: "405: Method Not Allowed",
        429: "You are being rate limited.",
        500: "500: Internal Server Error",
        502: "502: Bad Gateway",
    }.get(status, f"{status}: Error")


def not_found(code: int) -> ApiError:
    return ApiError(404, code)


def forbidden(code: int = MISSING_PERMISSIONS) -> ApiError:
    return ApiError(403, code)


class FormErrors:
    """Collects field errors into Discord's nested ``errors`` shape for a 50035 Invalid Form Body."""

    def __init__(self) -> None:
        self.errors: dict[str, Any] = {}

    def add(self, path: str, code: str, message: str) -> None:
        node = self.errors
        for part in path.split("."):
            node = node.setdefault(part, {})
        node.setdefault("_errors", []).append({"code": code, "message": message})

    def raise_if_any(self) -> None:
        if self.errors:
            raise ApiError(400, INVALID_FORM_BODY, errors=self.errors)


def default_error_body(status: int, path: str) -> dict[str, Any]:
    """The body a fault-injected error gets when the test gives none: the usual code for that route."""
    if status == 403:
        return ApiError(403, MISSING_PERMISSIONS).body()
    if status == 404:
        if path.startswith("/webhooks/"):
            code = UNKNOWN_WEBHOOK
        elif path.startswith("/interactions/"):
            code = UNKNOWN_INTERACTION
        elif "/messages/" in path:
            code = UNKNOWN_MESSAGE
        elif path.startswith("/channels/"):
            code = UNKNOWN_CHANNEL
        elif path.startswith("/guilds/"):
            code = UNKNOWN_GUILD
        else:
            return {"message": "404: Not Found", "code": 0}
        return ApiError(404, code).body()
    return ApiError(status).body()
