"""Cards out: a PNG carrying the card in both chunks (``chara`` V2, ``ccv3`` V3), or the V3 JSON."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

from bot.cards.convert import as_v3, card_v2
from bot.cards.errors import CardError
from bot.cards.images import placeholder_png, to_png
from bot.cards.parse import CARD_KEYWORDS
from bot.cards.png import encode_png, is_png, read_chunks, with_text, without_text


def _b64(card: Mapping[str, Any]) -> str:
    payload = json.dumps(card, ensure_ascii=False, separators=(",", ":"))
    return base64.b64encode(payload.encode("utf-8")).decode("ascii")


def export_png(card: Mapping[str, Any], image: bytes | None = None) -> bytes:
    """``image`` (any format Pillow reads; a placeholder when None) with the card in ``chara`` and ``ccv3`` chunks.

    Old card chunks in the image are removed first, as SillyTavern does, so a re-export never carries two cards.
    """
    v3 = as_v3(card)
    name = str(v3.get("data", {}).get("name") or "?")
    if image is None:
        png = placeholder_png(name)
    elif is_png(image):
        png = image
    else:
        png = to_png(image)
    try:
        chunks = read_chunks(png)
    except CardError:
        png = to_png(image) if image is not None else placeholder_png(name)  # a damaged PNG: re-encode what decodes
        chunks = read_chunks(png)
    chunks = without_text(chunks, set(CARD_KEYWORDS))
    return encode_png(with_text(chunks, [("chara", _b64(card_v2(v3))), ("ccv3", _b64(v3))]))


def export_json(card: Mapping[str, Any]) -> bytes:
    """The V3 card as UTF-8 JSON."""
    return json.dumps(as_v3(card), ensure_ascii=False, indent=2).encode("utf-8")
