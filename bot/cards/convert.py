"""Cards <-> persona columns (:class:`bot.storage.models.Persona`), losslessly.

Fields rpbot has no column for (V3's ``source``, ``creation_date``, a tool's own keys, SillyTavern's top-level
``chat``/``create_date``...) go to ``card_extra`` and come back on export. rpbot's own ``nsfw`` flag travels in
``extensions.rpbot.nsfw`` (the spec's place for app data); cards without it are NSFW when tagged so.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from bot.cards.parse import ImportedCard
from bot.cards.schema import SPEC_V2, SPEC_V3, V1_FIELDS, V2_FIELDS, V3_ONLY_FIELDS

PERSONA_FIELDS = (
    "name",
    "nickname",
    "description",
    "personality",
    "scenario",
    "greeting",
    "alternate_greetings",
    "example_dialogue",
    "system_prompt",
    "post_history_instructions",
    "creator_notes",
    "creator",
    "character_version",
    "tags",
    "nsfw",
    "avatar",
    "avatar_mime",
    "lorebook",
    "extensions",
    "card_extra",
)
_MAPPED = {*V2_FIELDS, "nickname"}
_APP_KEY = "rpbot"


def card_to_persona_fields(card: ImportedCard) -> dict[str, Any]:
    """Keyword arguments for ``Persona(...)``/``create_persona``: exactly :data:`PERSONA_FIELDS`."""
    data = card.data
    extensions = copy.deepcopy(data.get("extensions") or {})
    nsfw: bool | None = None
    app = extensions.get(_APP_KEY)
    if isinstance(app, dict) and isinstance(app.get("nsfw"), bool):
        app = dict(app)
        nsfw = app.pop("nsfw")
        if app:
            extensions[_APP_KEY] = app
        else:
            del extensions[_APP_KEY]
    tags = list(data.get("tags") or [])
    if nsfw is None:
        nsfw = any(tag.strip().casefold() == "nsfw" for tag in tags)
    extra_data = {k: copy.deepcopy(v) for k, v in data.items() if k not in _MAPPED}
    if extra_data.get("group_only_greetings") == []:
        del extra_data["group_only_greetings"]  # the V3 default, written back on export
    card_extra: dict[str, Any] = {}
    if extra_data:
        card_extra["data"] = extra_data
    if card.top_extra:
        card_extra["top"] = copy.deepcopy(card.top_extra)
    return {
        "name": data["name"],
        "nickname": data.get("nickname") or None,
        "description": data.get("description", ""),
        "personality": data.get("personality", ""),
        "scenario": data.get("scenario", ""),
        "greeting": data.get("first_mes", ""),
        "alternate_greetings": list(data.get("alternate_greetings") or []),
        "example_dialogue": data.get("mes_example", ""),
        "system_prompt": data.get("system_prompt", ""),
        "post_history_instructions": data.get("post_history_instructions", ""),
        "creator_notes": data.get("creator_notes", ""),
        "creator": data.get("creator", ""),
        "character_version": data.get("character_version", ""),
        "tags": tags,
        "nsfw": nsfw,
        "avatar": card.avatar,
        "avatar_mime": card.avatar_mime,
        "lorebook": copy.deepcopy(data.get("character_book")) or None,
        "extensions": extensions,
        "card_extra": card_extra,
    }


def _getter(persona: Any) -> Any:
    if isinstance(persona, Mapping):
        return lambda name, default=None: persona.get(name, default)
    return lambda name, default=None: getattr(persona, name, default)


def persona_to_card(persona: Any) -> dict[str, Any]:
    """A V3 card (``chara_card_v3``) from persona columns: a ``Persona`` row or a mapping of its fields."""
    get = _getter(persona)
    extensions = copy.deepcopy(get("extensions") or {})
    app = dict(extensions.get(_APP_KEY) or {}) if isinstance(extensions.get(_APP_KEY), dict | None) else {}
    app["nsfw"] = bool(get("nsfw", False))
    extensions[_APP_KEY] = app
    data: dict[str, Any] = {
        "name": get("name") or "",
        "description": get("description") or "",
        "personality": get("personality") or "",
        "scenario": get("scenario") or "",
        "first_mes": get("greeting") or "",
        "mes_example": get("example_dialogue") or "",
        "creator_notes": get("creator_notes") or "",
        "system_prompt": get("system_prompt") or "",
        "post_history_instructions": get("post_history_instructions") or "",
        "alternate_greetings": list(get("alternate_greetings") or []),
        "character_book": copy.deepcopy(get("lorebook")),
        "tags": list(get("tags") or []),
        "creator": get("creator") or "",
        "character_version": get("character_version") or "",
        "extensions": extensions,
    }
    if data["character_book"] is None:
        del data["character_book"]
    nickname = get("nickname")
    if nickname:
        data["nickname"] = nickname
    extra = get("card_extra") or {}
    for key, value in (extra.get("data") or {}).items():
        data.setdefault(key, copy.deepcopy(value))
    data.setdefault("group_only_greetings", [])
    card: dict[str, Any] = {"spec": SPEC_V3, "spec_version": "3.0", "data": data}
    for key, value in (extra.get("top") or {}).items():
        card.setdefault(key, copy.deepcopy(value))
    return card


def as_v3(card: Mapping[str, Any]) -> dict[str, Any]:
    """A V3 card from a V2 or V3 one (V2 cards gain the V3-required ``group_only_greetings``)."""
    out = copy.deepcopy(dict(card))
    data = out.setdefault("data", {})
    data.setdefault("group_only_greetings", [])
    out["spec"], out["spec_version"] = SPEC_V3, "3.0"
    return out


def card_v2(card: Mapping[str, Any]) -> dict[str, Any]:
    """The V2 view of a card, for the PNG's ``chara`` chunk: V2 data, V1 fields copied to the top (as SillyTavern
    writes them, for old readers), unknown top-level keys kept."""
    data = card.get("data") or {}
    v2_data = {k: copy.deepcopy(v) for k, v in data.items() if k not in V3_ONLY_FIELDS}
    out: dict[str, Any] = {"spec": SPEC_V2, "spec_version": "2.0", "data": v2_data}
    for key in V1_FIELDS:
        out[key] = copy.deepcopy(data.get(key, ""))
    for key, value in card.items():
        if key not in ("spec", "spec_version", "data"):
            out.setdefault(key, copy.deepcopy(value))
    return out
