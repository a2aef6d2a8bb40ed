"""Discord's limits on what a bot sends, enforced the way the API does (400 Invalid Form Body, 50006 empty)."""

from __future__ import annotations

from typing import Any

from tests.discord_emulator.api_errors import CANNOT_SEND_EMPTY_MESSAGE, ApiError, FormErrors
from tests.discord_emulator.models import iter_components

MAX_CONTENT = 2000
MAX_EMBEDS = 10
MAX_EMBED_TOTAL = 6000
MAX_CUSTOM_ID = 100
MAX_BUTTON_LABEL = 80
MAX_ROWS = 5
MAX_PER_ROW = 5
MAX_CHOICES = 25

_EMBED_LIMITS = {"title": 256, "description": 4096}


def _too_long(errors: FormErrors, path: str, limit: int) -> None:
    errors.add(path, "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length.")


def check_username(errors: FormErrors, username: Any, path: str = "username") -> None:
    """Webhook names and username overrides: 1-80 characters, no "clyde" or "discord"."""
    if not isinstance(username, str):
        errors.add(path, "BASE_TYPE_STRING", "Must be a string.")
        return
    if not 1 <= len(username) <= 80:
        errors.add(path, "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 80 in length.")
    lowered = username.lower()
    for word in ("clyde", "discord"):
        if word in lowered:
            errors.add(path, "USERNAME_INVALID_CONTAINS", f'Username cannot contain "{word}"')


def check_message(
    payload: dict[str, Any],
    *,
    new_files: int = 0,
    creating: bool = True,
    webhook: bool = False,
    keeps_attachments: bool = False,
) -> None:
    """Raise the ApiError Discord would return for this create/edit body, if any."""
    errors = FormErrors()
    content = payload.get("content")
    if content is not None:
        if not isinstance(content, str):
            errors.add("content", "BASE_TYPE_STRING", "Must be a string.")
        elif len(content) > MAX_CONTENT:
            _too_long(errors, "content", MAX_CONTENT)

    embeds = payload.get("embeds") or []
    if len(embeds) > MAX_EMBEDS:
        errors.add("embeds", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_EMBEDS} or fewer in length.")
    total = 0
    for i, embed in enumerate(embeds):
        for key, limit in _EMBED_LIMITS.items():
            value = embed.get(key)
            if isinstance(value, str):
                total += len(value)
                if len(value) > limit:
                    _too_long(errors, f"embeds.{i}.{key}", limit)
        for j, fld in enumerate(embed.get("fields") or []):
            name, value = str(fld.get("name", "")), str(fld.get("value", ""))
            total += len(name) + len(value)
            if len(name) > 256:
                _too_long(errors, f"embeds.{i}.fields.{j}.name", 256)
            if len(value) > 1024:
                _too_long(errors, f"embeds.{i}.fields.{j}.value", 1024)
        footer = (embed.get("footer") or {}).get("text")
        if isinstance(footer, str):
            total += len(footer)
            if len(footer) > 2048:
                _too_long(errors, f"embeds.{i}.footer.text", 2048)
        author = (embed.get("author") or {}).get("name")
        if isinstance(author, str):
            total += len(author)
            if len(author) > 256:
                _too_long(errors, f"embeds.{i}.author.name", 256)
    if total > MAX_EMBED_TOTAL:
        errors.add("embeds", "MAX_EMBED_SIZE_EXCEEDED", f"Embed size exceeds maximum size of {MAX_EMBED_TOTAL}")

    components = payload.get("components") or []
    flags = int(payload.get("flags") or 0)
    if not flags & (1 << 15):  # components v2 have their own layout rules; only check classic action rows
        if len(components) > MAX_ROWS:
            errors.add("components", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_ROWS} or fewer in length.")
        for i, row in enumerate(components):
            if row.get("type") != 1:
                errors.add(f"components.{i}", "UNION_TYPE_CHOICES", 'Value of field "type" must be one of (1,).')
                continue
            children = row.get("components") or []
            if not children or len(children) > MAX_PER_ROW:
                errors.add(f"components.{i}.components", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 5 in length.")
            for j, comp in enumerate(children):
                _check_component(errors, comp, f"components.{i}.components.{j}")
    seen: set[str] = set()
    for comp in iter_components(components):
        cid = comp.get("custom_id")
        if cid is None:
            continue
        if cid in seen:
            errors.add("components", "COMPONENT_CUSTOM_ID_DUPLICATED", f"Component custom id {cid!r} is duplicated")
        seen.add(cid)

    if webhook and "username" in payload and payload["username"] is not None:
        check_username(errors, payload["username"])
    errors.raise_if_any()

    if creating:
        has_content = isinstance(content, str) and content.strip() != ""
        has_other = bool(embeds or components or new_files or keeps_attachments or payload.get("sticker_ids"))
        if not (has_content or has_other or payload.get("poll")):
            raise ApiError(400, CANNOT_SEND_EMPTY_MESSAGE)


def _check_component(errors: FormErrors, comp: dict[str, Any], path: str) -> None:
    ctype = comp.get("type")
    cid = comp.get("custom_id")
    if isinstance(cid, str) and len(cid) > MAX_CUSTOM_ID:
        _too_long(errors, f"{path}.custom_id", MAX_CUSTOM_ID)
    if ctype == 2:  # button
        label = comp.get("label")
        if isinstance(label, str) and len(label) > MAX_BUTTON_LABEL:
            _too_long(errors, f"{path}.label", MAX_BUTTON_LABEL)
        style = comp.get("style")
        if style == 5:
            if not comp.get("url"):
                errors.add(f"{path}.url", "BASE_TYPE_REQUIRED", "This field is required")
        elif style != 6 and not cid:
            errors.add(f"{path}.custom_id", "BASE_TYPE_REQUIRED", "This field is required")
    elif ctype in (3, 5, 6, 7, 8) and not cid:
        errors.add(f"{path}.custom_id", "BASE_TYPE_REQUIRED", "This field is required")


def check_choices(data: dict[str, Any]) -> None:
    choices = data.get("choices")
    errors = FormErrors()
    if not isinstance(choices, list):
        errors.add("data.choices", "BASE_TYPE_REQUIRED", "This field is required")
    elif len(choices) > MAX_CHOICES:
        errors.add("data.choices", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_CHOICES} or fewer in length.")
    else:
        for i, choice in enumerate(choices):
            name = choice.get("name")
            if not isinstance(name, str) or not 1 <= len(name) <= 100:
                errors.add(f"data.choices.{i}.name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length.")
    errors.raise_if_any()


def check_modal(data: dict[str, Any]) -> None:
    errors = FormErrors()
    for key in ("custom_id", "title", "components"):
        if not data.get(key):
            errors.add(f"data.{key}", "BASE_TYPE_REQUIRED", "This field is required")
    title = data.get("title")
    if isinstance(title, str) and len(title) > 45:
        _too_long(errors, "data.title", 45)
    errors.raise_if_any()
