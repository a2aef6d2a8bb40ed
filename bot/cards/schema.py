"""Card JSON -> one normalised shape, whatever the spec (V1 flat, V2 ``data``, V3 ``data``).

The result keeps every field, unknown ones included, so an export gives back what was imported. Only what the spec
makes required is filled in; optional fields are type-checked when present and otherwise left alone, which makes
normalising idempotent. Wrong types and oversized fields are errors that name the field.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bot.cards.errors import CardError
from bot.cards.limits import (
    MAX_LIST_ITEMS,
    MAX_LORE_CONTENT_CHARS,
    MAX_LORE_ENTRIES,
    MAX_LORE_KEY_CHARS,
    MAX_LORE_KEYS,
    MAX_NAME_CHARS,
    MAX_SHORT_FIELD_CHARS,
    MAX_TAG_CHARS,
    MAX_TEXT_FIELD_CHARS,
)
from bot.prompt.lorebook import UnsafePattern, compile_key_pattern

SPEC_V2 = "chara_card_v2"
SPEC_V3 = "chara_card_v3"
V1_FIELDS = ("name", "description", "personality", "scenario", "first_mes", "mes_example")
V2_FIELDS = (
    *V1_FIELDS,
    "creator_notes",
    "system_prompt",
    "post_history_instructions",
    "alternate_greetings",
    "character_book",
    "tags",
    "creator",
    "character_version",
    "extensions",
)
V3_ONLY_FIELDS = (
    "nickname",
    "creator_notes_multilingual",
    "source",
    "group_only_greetings",
    "creation_date",
    "modification_date",
    "assets",
)
_LONG_TEXT = (
    "description",
    "personality",
    "scenario",
    "first_mes",
    "mes_example",
    "creator_notes",
    "system_prompt",
    "post_history_instructions",
)


@dataclass(slots=True)
class NormalizedCard:
    spec: str  # "v1", "v2" or "v3": what the file was
    data: dict[str, Any]  # every V2 field, V3 fields where present, unknown fields as they were
    top_extra: dict[str, Any] = field(default_factory=dict)  # unknown top-level keys (e.g. SillyTavern's "chat")
    warnings: list[str] = field(default_factory=list)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _bad(where: str, expected: str, value: Any) -> CardError:
    return CardError(f"The card's {where} must be {expected}, but it is {_type_name(value)}.", "bad_field")


def _too_long(where: str, size: int, limit: int, unit: str = "characters") -> CardError:
    return CardError(
        f"The card's {where} is {size:,} {unit} long; at most {limit:,} are accepted. Shorten it and import again.",
        "field_too_long",
    )


def _text(value: Any, where: str, limit: int, *, numbers: bool = False) -> str:
    if value is None:
        return ""
    if numbers and isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise _bad(where, "text", value)
    if len(value) > limit:
        raise _too_long(where, len(value), limit)
    return value


def _text_list(value: Any, where: str, item_limit: int, *, split_commas: bool = False) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str) and split_commas:
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list):
        raise _bad(where, "a list of text", value)
    if len(value) > MAX_LIST_ITEMS:
        raise _too_long(where, len(value), MAX_LIST_ITEMS, "items")
    out: list[str] = []
    for index, item in enumerate(value):
        out.append(_text(item, f"{where}[{index + 1}]", item_limit))
    return out


def _bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise _bad(where, "true or false", value)


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise _bad(where, "a whole number", value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise _bad(where, "a whole number", value)


def _object(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(where, "an object", value)
    return copy.deepcopy(value)


def normalize_card(obj: Any) -> NormalizedCard:
    """Check a decoded card and bring it to the normalised shape. Raises :class:`CardError`."""
    if not isinstance(obj, dict):
        what = _type_name(obj)
        raise CardError(f"The card JSON is {what}, not an object; this is not a character card.", "not_object")
    spec = obj.get("spec")
    warnings: list[str] = []
    if spec is None:
        if isinstance(obj.get("data"), dict) and "name" in obj["data"]:
            version, raw, top = "v2", obj["data"], _top_extra(obj)
            warnings.append("the card has no 'spec' field; it was read as a V2 card")
        elif "name" in obj:
            version = "v1"
            raw = {k: obj[k] for k in V1_FIELDS if k in obj}
            top = {k: copy.deepcopy(v) for k, v in obj.items() if k not in V1_FIELDS}
        else:
            raise CardError(
                "The JSON has neither a 'spec' nor a 'name' field, so it is not a character card (V1, V2 or V3).",
                "wrong_spec",
            )
    elif spec in (SPEC_V2, SPEC_V3):
        version = "v2" if spec == SPEC_V2 else "v3"
        raw = obj.get("data")
        if not isinstance(raw, dict):
            raise CardError(
                f"The card says it is {spec} but has no 'data' object holding its fields; the file is malformed.",
                "wrong_spec",
            )
        expected = "2." if version == "v2" else "3."
        if not str(obj.get("spec_version", "")).startswith(expected):
            warnings.append(f"spec_version {obj.get('spec_version')!r} does not match {spec}; read as {spec}")
        top = _top_extra(obj)
    elif isinstance(spec, str) and "lorebook" in spec:
        raise CardError(f"This is a lorebook ({spec}), not a character card; import a character card.", "wrong_spec")
    else:
        raise CardError(
            f"Unknown card spec {spec!r}: rpbot reads chara_card_v2 and chara_card_v3 cards (and V1 cards without "
            "a spec).",
            "wrong_spec",
        )
    data = _normalize_data(raw, warnings)
    return NormalizedCard(spec=version, data=data, top_extra=top, warnings=warnings)


def _top_extra(obj: Mapping[str, Any]) -> dict[str, Any]:
    # V1 fields at the top of a V2/V3 card are a compatibility copy of data; they are rewritten on export.
    skip = {"spec", "spec_version", "data", *V1_FIELDS}
    return {k: copy.deepcopy(v) for k, v in obj.items() if k not in skip}


def _normalize_data(raw: Mapping[str, Any], warnings: list[str]) -> dict[str, Any]:
    data: dict[str, Any] = {k: copy.deepcopy(v) for k, v in raw.items()}
    name = _text(raw.get("name"), "name", MAX_TEXT_FIELD_CHARS).strip()
    if not name:
        raise CardError("The card has no name; give the character a name and export it again.", "bad_field")
    if len(name) > MAX_NAME_CHARS:
        raise _too_long("name", len(name), MAX_NAME_CHARS)
    data["name"] = name
    for key in _LONG_TEXT:
        data[key] = _text(raw.get(key), key, MAX_TEXT_FIELD_CHARS)
    data["creator"] = _text(raw.get("creator"), "creator", MAX_SHORT_FIELD_CHARS, numbers=True)
    data["character_version"] = _text(
        raw.get("character_version"), "character_version", MAX_SHORT_FIELD_CHARS, numbers=True
    )
    greetings = raw.get("alternate_greetings")
    data["alternate_greetings"] = _text_list(greetings, "alternate_greetings", MAX_TEXT_FIELD_CHARS)
    data["tags"] = _text_list(raw.get("tags"), "tags", MAX_TAG_CHARS, split_commas=True)
    data["extensions"] = _object(raw.get("extensions"), "extensions")
    book = raw.get("character_book")
    data["character_book"] = None if book is None else normalize_book(book, warnings)
    if "nickname" in raw:
        nickname = _text(raw.get("nickname"), "nickname", MAX_NAME_CHARS).strip()
        data["nickname"] = nickname or None
    if "group_only_greetings" in raw:
        data["group_only_greetings"] = _text_list(
            raw.get("group_only_greetings"), "group_only_greetings", MAX_TEXT_FIELD_CHARS
        )
    if "assets" in raw:
        data["assets"] = _assets(raw.get("assets"), warnings)
    return data


def _assets(value: Any, warnings: list[str]) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad("assets", "a list", value)
    kept: list[Any] = []
    dropped = 0
    for asset in value:
        uri = asset.get("uri") if isinstance(asset, dict) else None
        # Files inside a CHARX cannot be kept (only the avatar is); their entries would point at nothing.
        if isinstance(uri, str) and uri.lower().startswith(("embeded://", "embedded://", "__asset:")):
            dropped += 1
            continue
        kept.append(copy.deepcopy(asset))
    if dropped:
        warnings.append(f"{dropped} embedded asset(s) besides the avatar were not kept")
    return kept


def normalize_book(book: Any, warnings: list[str]) -> dict[str, Any]:
    """A checked ``character_book``: required fields filled in, optional ones type-checked, unknown ones kept."""
    if not isinstance(book, dict):
        raise _bad("character_book (lorebook)", "an object", book)
    out: dict[str, Any] = copy.deepcopy(book)
    out["extensions"] = _object(book.get("extensions"), "lorebook extensions")
    for key in ("name", "description"):
        if key in book and book[key] is not None:
            out[key] = _text(book[key], f"lorebook {key}", MAX_TEXT_FIELD_CHARS)
    for key in ("scan_depth", "token_budget"):
        if key in book and book[key] is not None:
            out[key] = _int(book[key], f"lorebook {key}")
    if "recursive_scanning" in book and book["recursive_scanning"] is not None:
        out["recursive_scanning"] = _bool(book["recursive_scanning"], "lorebook recursive_scanning")
    entries = book.get("entries")
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise _bad("lorebook entries", "a list", entries)
    if len(entries) > MAX_LORE_ENTRIES:
        raise _too_long("lorebook", len(entries), MAX_LORE_ENTRIES, "entries")
    out["entries"] = [_normalize_entry(entry, index, warnings) for index, entry in enumerate(entries)]
    return out


def _normalize_entry(entry: Any, index: int, warnings: list[str]) -> dict[str, Any]:
    where = f"lorebook entry {index + 1}"
    if not isinstance(entry, dict):
        raise _bad(where, "an object", entry)
    label = entry.get("name") or entry.get("comment")
    if isinstance(label, str) and label.strip():
        where += f" ({label.strip()[:40]!r})"
    out: dict[str, Any] = copy.deepcopy(entry)
    out["keys"] = _keys(entry.get("keys"), f"{where} keys")
    out["content"] = _text(entry.get("content"), f"{where} content", MAX_LORE_CONTENT_CHARS)
    out["extensions"] = _object(entry.get("extensions"), f"{where} extensions")
    out["enabled"] = True if entry.get("enabled") is None else _bool(entry.get("enabled"), f"{where} enabled")
    order = entry.get("insertion_order")
    out["insertion_order"] = 100 if order is None else _int(order, f"{where} insertion_order")
    for key in ("case_sensitive", "selective", "constant", "use_regex"):
        if entry.get(key) is not None:
            out[key] = _bool(entry[key], f"{where} {key}")
    for key in ("name", "comment"):
        if entry.get(key) is not None:
            out[key] = _text(entry[key], f"{where} {key}", MAX_SHORT_FIELD_CHARS * 5)
    if entry.get("priority") is not None:
        out["priority"] = _int(entry["priority"], f"{where} priority")
    if entry.get("secondary_keys") is not None:
        out["secondary_keys"] = _keys(entry["secondary_keys"], f"{where} secondary_keys")
    if entry.get("id") is not None:
        value = entry["id"]
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise _bad(f"{where} id", "a number or text", value)
    position = entry.get("position")
    if position is not None and position not in ("before_char", "after_char"):
        warnings.append(f"{where}: unknown position {position!r}, treated as before_char")
    for key in (*out["keys"], *out.get("secondary_keys", [])):
        regex_key = out.get("use_regex") or (len(key) > 2 and key.startswith("/") and key.rfind("/") > 0)
        if regex_key:
            pattern = key[1 : key.rfind("/")] if key.startswith("/") and key.rfind("/") > 0 else key
            try:
                compile_key_pattern(pattern, ignore_case=True)
            except UnsafePattern as exc:
                warnings.append(f"{where}: regex key {key[:60]!r} will be ignored: {exc}")
    return out


def _keys(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise _bad(where, "a list of text", value)
    if len(value) > MAX_LORE_KEYS:
        raise _too_long(where, len(value), MAX_LORE_KEYS, "keys")
    return [_text(key, where, MAX_LORE_KEY_CHARS) for key in value]
