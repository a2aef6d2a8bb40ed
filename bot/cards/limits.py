"""Size caps for card files. Cards come from strangers, so every size is bounded before anything is decoded."""

from __future__ import annotations

from bot.storage.models import PERSONA_NAME_MAX

MiB = 1024 * 1024

MAX_CARD_FILE_BYTES = 20 * MiB  # a PNG card with a large avatar, or a CHARX with a few assets
MAX_CARD_JSON_BYTES = 5 * MiB  # the card JSON itself, lorebook included
MAX_TEXT_CHUNK_BYTES = MAX_CARD_JSON_BYTES * 4 // 3 + 16  # base64 of the largest JSON
MAX_PNG_CHUNKS = 100_000
MAX_JSON_DEPTH = 64

MAX_NAME_CHARS = PERSONA_NAME_MAX
MAX_TEXT_FIELD_CHARS = 100_000  # description, first_mes, ...: far beyond any context, yet bounded
MAX_SHORT_FIELD_CHARS = 200  # creator, character_version
MAX_LIST_ITEMS = 200  # alternate greetings, tags
MAX_TAG_CHARS = 100
MAX_LORE_ENTRIES = 2000
MAX_LORE_CONTENT_CHARS = 50_000
MAX_LORE_KEYS = 200
MAX_LORE_KEY_CHARS = 500

MAX_AVATAR_BYTES = 8 * MiB  # Discord's limit for webhook avatars is 10 MiB
MAX_AVATAR_SIDE = 1024  # larger avatars are scaled down (Discord shows them at 128 px at most)
MAX_IMAGE_PIXELS = 40_000_000  # refuse to decode anything larger (decompression bombs)
MAX_CHARX_ENTRIES = 1000
