"""Card files -> :class:`ImportedCard`: PNG (``ccv3``/``chara`` text chunks), JSON, or CHARX (zip with card.json)."""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import re
import zipfile
from dataclasses import dataclass, field
from typing import Any

from bot.cards.errors import CardError
from bot.cards.images import avatar_from
from bot.cards.limits import (
    MAX_CARD_FILE_BYTES,
    MAX_CARD_JSON_BYTES,
    MAX_CHARX_ENTRIES,
    MAX_IMAGE_PIXELS,
    MAX_JSON_DEPTH,
    MiB,
)
from bot.cards.png import decode_text_chunk, encode_png, image_size, is_png, read_chunks, without_text
from bot.cards.schema import NormalizedCard, normalize_card

log = logging.getLogger(__name__)

CARD_KEYWORDS = ("ccv3", "chara")  # in order of preference
_ZIP_MAGIC = b"PK\x03\x04"
# JSON's \u escapes can spell what no database or Discord takes: lone UTF-16 surrogates (not encodable as UTF-8)
# and NUL (PostgreSQL refuses it in text).
_UNSTORABLE = re.compile("[\ud800-\udfff\x00]")
_ESCAPED_UNSTORABLE = re.compile(r"\\u(?:[dD][89abAB]|0000)")  # only \u escapes can put them in; skip the walk


@dataclass(slots=True)
class ImportedCard:
    """A parsed card: its normalised fields, where it came from, and the avatar the file carried (if any)."""

    spec: str  # "v1", "v2" or "v3"
    source: str  # "png", "json" or "charx"
    data: dict[str, Any]
    top_extra: dict[str, Any] = field(default_factory=dict)
    avatar: bytes | None = None
    avatar_mime: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.data["name"])

    @property
    def greeting(self) -> str:
        return str(self.data.get("first_mes") or "")

    @property
    def alternate_greetings(self) -> list[str]:
        return list(self.data.get("alternate_greetings") or [])

    @property
    def lorebook(self) -> dict[str, Any] | None:
        book = self.data.get("character_book")
        return book if isinstance(book, dict) else None


def parse_card(data: bytes, filename: str = "card") -> ImportedCard:
    """Read a card file. Raises :class:`CardError` whose message names the problem (and the file)."""
    try:
        return _parse(data, filename)
    except CardError as exc:
        message = str(exc)
        raise CardError(f"{filename}: {message[:1].upper()}{message[1:]}", exc.code) from None


def _parse(data: bytes, filename: str) -> ImportedCard:
    if len(data) > MAX_CARD_FILE_BYTES:
        raise CardError(
            f"the file is {len(data):,} bytes; cards are at most {MAX_CARD_FILE_BYTES // MiB} MiB "
            f"({MAX_CARD_FILE_BYTES:,} bytes).",
            "too_large",
        )
    if not data:
        raise CardError("the file is empty.", "empty")
    if is_png(data):
        return _from_png(data)
    if data.startswith(_ZIP_MAGIC):
        return _from_charx(data)
    head = data.lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith((b"{", b"[")) or filename.lower().endswith(".json"):
        card = normalize_card(_parse_json(data, "the file"))
        return ImportedCard(card.spec, "json", card.data, card.top_extra, warnings=card.warnings)
    kind = _sniff(data)
    raise CardError(
        f"this is {kind}, not a character card. Upload a PNG card, the card's JSON, or a .charx file.", "not_card_file"
    )


def _sniff(data: bytes) -> str:
    if data.startswith(b"\xff\xd8\xff"):
        return "a JPEG image (JPEG files cannot carry cards)"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "a WebP image (rpbot reads cards from PNG files)"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "a GIF image"
    return "not a PNG, JSON or CHARX file"


def _depth(value: Any) -> int:
    """Nesting depth, measured without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return deepest


def _parse_json(raw: bytes, what: str) -> Any:
    if len(raw) > MAX_CARD_JSON_BYTES:
        raise CardError(
            f"{what} holds {len(raw) / MiB:.1f} MiB of card JSON; "
            f"at most {MAX_CARD_JSON_BYTES // MiB} MiB are accepted.",
            "too_large",
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CardError(f"{what} is not UTF-8 text (invalid byte at position {exc.start}).", "not_utf8") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CardError(
            f"{what} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}.", "not_json"
        ) from None
    except RecursionError:
        raise CardError(f"{what} is JSON nested too deeply to be a card.", "not_json") from None
    except ValueError:  # Python refuses integers of over 4300 digits (a denial-of-service guard)
        raise CardError(f"{what} holds a number with thousands of digits; that is not a card.", "not_json") from None
    if _depth(obj) > MAX_JSON_DEPTH:
        raise CardError(f"{what} is JSON nested over {MAX_JSON_DEPTH} levels deep; that is not a card.", "not_json")
    return _storable(obj) if _ESCAPED_UNSTORABLE.search(text) else obj


def _storable(value: Any) -> Any:
    """``value`` with lone surrogates replaced (U+FFFD) and NUL characters removed from every string."""
    if isinstance(value, str):
        return _UNSTORABLE.sub(lambda m: "" if m.group() == "\x00" else "\ufffd", value)
    if isinstance(value, list):
        return [_storable(item) for item in value]
    if isinstance(value, dict):
        return {_storable(key): _storable(item) for key, item in value.items()}
    return value


def _decode_chunk_text(text: str, keyword: str) -> Any:
    what = f"the PNG's {keyword!r} chunk"
    compact = "".join(text.split())
    if compact.startswith("{"):
        # A few tools store the JSON itself instead of base64.
        return _parse_json(text.encode("latin-1", "replace"), what)
    try:
        raw = base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise CardError(f"{what} is not valid base64, so the card inside cannot be read.", "bad_base64") from None
    return _parse_json(raw, what)


def _from_png(data: bytes) -> ImportedCard:
    chunks = read_chunks(data)
    found: dict[str, str] = {}
    for chunk in chunks:
        decoded = decode_text_chunk(chunk)
        if decoded is None:
            continue
        keyword = decoded[0].lower()
        if keyword in CARD_KEYWORDS and keyword not in found:
            if not chunk.crc_ok:
                raise CardError(
                    f"the PNG's {decoded[0]!r} chunk is corrupted (checksum mismatch). Download the card again.",
                    "bad_crc",
                )
            found[keyword] = decoded[1]
    if not found:
        raise CardError(
            "the PNG has no character card in it (no 'chara' or 'ccv3' text chunk). It may be a plain image, or a "
            "site re-encoded it: download the card file itself, or import its JSON.",
            "no_card",
        )
    card: NormalizedCard | None = None
    first_error: CardError | None = None
    warnings: list[str] = []
    for keyword in CARD_KEYWORDS:
        if keyword not in found:
            continue
        try:
            card = normalize_card(_decode_chunk_text(found[keyword], keyword))
            break
        except CardError as exc:
            if first_error is None:
                first_error = exc
            warnings.append(f"the {keyword!r} chunk could not be read ({exc}); used the other one")
    if card is None:
        assert first_error is not None
        raise first_error
    avatar, mime = _png_avatar(chunks, warnings)
    return ImportedCard(card.spec, "png", card.data, card.top_extra, avatar, mime, [*warnings, *card.warnings])


def _png_avatar(chunks: list[Any], warnings: list[str]) -> tuple[bytes | None, str | None]:
    """The card image without its card chunks (no pixels decoded unless it must be scaled down)."""
    width, height = image_size(chunks)
    if width * height > MAX_IMAGE_PIXELS:
        warnings.append(f"the card image is {width}×{height} pixels, too large to use as the avatar")
        return None, None
    stripped = encode_png(without_text(chunks, set(CARD_KEYWORDS)))
    try:
        return avatar_from(stripped)
    except CardError as exc:
        warnings.append(f"the card image cannot be used as the avatar: {exc}")
        return None, None


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int, what: str) -> bytes:
    if info.file_size > limit:
        size = info.file_size / MiB
        raise CardError(f"{what} in the CHARX unpacks to {size:.1f} MiB (limit {limit // MiB} MiB).", "too_large")
    try:
        with archive.open(info) as member:
            raw = member.read(limit + 1)  # the header's size can lie; never read more than the limit
    except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError, EOFError) as exc:
        raise CardError(f"{what} in the CHARX cannot be unpacked ({exc}).", "bad_zip") from None
    if len(raw) > limit:
        raise CardError(f"{what} in the CHARX unpacks to more than {limit // MiB} MiB.", "too_large")
    return raw


def _from_charx(data: bytes) -> ImportedCard:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError):
        raise CardError("the file looks like a zip (CHARX) archive but is damaged.", "bad_zip") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_CHARX_ENTRIES:
            raise CardError(f"the CHARX archive has {len(infos)} files (at most {MAX_CHARX_ENTRIES}).", "too_large")
        by_name = {info.filename: info for info in infos}
        card_info = by_name.get("card.json")
        if card_info is None:
            raise CardError("the CHARX archive has no card.json at its root, so there is no card in it.", "no_card")
        raw = _read_member(archive, card_info, MAX_CARD_JSON_BYTES, "The card.json file")
        obj = _parse_json(raw, "the card.json file")
        icon = _charx_icon(obj)
        card = normalize_card(obj)
        warnings = list(card.warnings)
        avatar: bytes | None = None
        mime: str | None = None
        if icon is not None and icon in by_name:
            try:
                avatar, mime = avatar_from(_read_member(archive, by_name[icon], MAX_CARD_FILE_BYTES, icon))
            except CardError as exc:
                warnings.append(f"the avatar {icon!r} cannot be used: {exc}")
        elif icon is not None:
            warnings.append(f"the avatar {icon!r} named in card.json is not in the archive")
    return ImportedCard(card.spec, "charx", card.data, card.top_extra, avatar, mime, warnings)


def _charx_icon(obj: Any) -> str | None:
    """Path inside the archive of the main icon asset (``embeded://`` is the spec's own spelling)."""
    data = obj.get("data") if isinstance(obj, dict) else None
    assets = data.get("assets") if isinstance(data, dict) else None
    if not isinstance(assets, list):
        return None
    icons = [a for a in assets if isinstance(a, dict) and a.get("type") == "icon" and isinstance(a.get("uri"), str)]
    icons.sort(key=lambda a: a.get("name") != "main")
    for icon in icons:
        uri = icon["uri"]
        for prefix in ("embeded://", "embedded://"):
            if uri.lower().startswith(prefix):
                return str(uri[len(prefix) :])
    return None
