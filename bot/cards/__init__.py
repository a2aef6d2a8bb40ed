"""Character cards (V1/V2/V3 JSON, PNG, CHARX): import into persona fields and export back, losslessly."""

from __future__ import annotations

from bot.cards.convert import PERSONA_FIELDS, card_to_persona_fields, card_v2, persona_to_card
from bot.cards.errors import CardError
from bot.cards.export import export_json, export_png
from bot.cards.images import avatar_from, placeholder_png, to_png
from bot.cards.parse import ImportedCard, parse_card

__all__ = [
    "PERSONA_FIELDS",
    "CardError",
    "ImportedCard",
    "avatar_from",
    "card_to_persona_fields",
    "card_v2",
    "export_json",
    "export_png",
    "parse_card",
    "persona_to_card",
    "placeholder_png",
    "to_png",
]
