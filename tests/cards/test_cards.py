"""Character cards: the real Seraphina card, every format, round trips, and hostile files."""

from __future__ import annotations

import base64
import io
import json
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from bot.cards import (
    PERSONA_FIELDS,
    CardError,
    card_to_persona_fields,
    export_json,
    export_png,
    parse_card,
    persona_to_card,
)
from bot.cards.limits import MAX_AVATAR_SIDE, MAX_CARD_FILE_BYTES, MAX_TEXT_CHUNK_BYTES
from bot.cards.png import Chunk, encode_png, read_chunks
from bot.prompt import PersonaSpec, PromptBuilder
from bot.storage.models import Persona
from tests.prompt.helpers import human
from tests.support.tokenizer import WordTokenizer

SERAPHINA = Path(__file__).parent.parent / "fixtures" / "cards" / "default_Seraphina.png"


def b64(obj: Any) -> str:
    return base64.b64encode(json.dumps(obj).encode("utf-8")).decode("ascii")


def png_with(texts: dict[str, str] | None = None, size: tuple[int, int] = (8, 8), fmt: str = "PNG") -> bytes:
    """A small image carrying ``texts`` as tEXt chunks (written by Pillow, not by the code under test)."""
    info = PngImagePlugin.PngInfo()
    for key, value in (texts or {}).items():
        info.add_text(key, value)
    out = io.BytesIO()
    Image.new("RGB", size, (200, 40, 90)).save(out, format=fmt, pnginfo=info if fmt == "PNG" else None)
    return out.getvalue()


def v2(name: str = "Nova", **data: Any) -> dict[str, Any]:
    return {"spec": "chara_card_v2", "spec_version": "2.0", "data": {"name": name, **data}}


V3_CARD: dict[str, Any] = {
    "spec": "chara_card_v3",
    "spec_version": "3.0",
    "data": {
        "name": "Nova",
        "nickname": "Novie",
        "description": "A starship AI.",
        "personality": "dry",
        "scenario": "On the bridge.",
        "first_mes": "Systems online.",
        "mes_example": "<START>\n{{user}}: Status?\n{{char}}: Nominal.",
        "creator_notes": "for humans",
        "system_prompt": "{{original}}",
        "post_history_instructions": "",
        "alternate_greetings": ["Good morning, crew.", "Alert: intruder."],
        "group_only_greetings": ["Hello, everyone."],
        "tags": ["sci-fi", "NSFW"],
        "creator": "someone",
        "character_version": "2",
        "extensions": {"depth_prompt": {"prompt": "x", "depth": 4}, "custom": {"nested": [1, 2, {"a": None}]}},
        "character_book": {
            "name": "Ship",
            "extensions": {},
            "entries": [
                {
                    "keys": ["/warp(s)?/i"],
                    "content": "Warp drives bend space.",
                    "extensions": {"position": 1},
                    "enabled": True,
                    "insertion_order": 10,
                    "use_regex": True,
                    "id": "warp",
                    "unknown_entry_field": 7,
                }
            ],
        },
        "assets": [{"type": "icon", "uri": "ccdefault:", "name": "main", "ext": "png"}],
        "source": ["https://example.invalid/nova"],
        "creation_date": 1700000000,
        "modification_date": 1700000500,
        "a_tool_field": {"kept": True},
    },
}


# ---- the real card ---------------------------------------------------------------------------------------------


def test_seraphina_imports() -> None:
    card = parse_card(SERAPHINA.read_bytes(), SERAPHINA.name)
    assert card.spec == "v2" and card.source == "png" and card.warnings == []
    assert card.name == "Seraphina"
    assert card.greeting.startswith("*You wake with a start")
    assert card.alternate_greetings == []  # this card has none
    assert card.lorebook is not None and card.lorebook["name"] == "Eldoria"
    assert [entry["keys"][0] for entry in card.lorebook["entries"]] == ["eldoria", "shadowfang", "glade", "power"]
    assert card.avatar is not None and card.avatar_mime == "image/png"
    image = Image.open(io.BytesIO(card.avatar))
    assert image.size == (400, 600) and "chara" not in image.text  # the avatar is the picture, not the card

    fields = card_to_persona_fields(card)
    assert tuple(fields) == PERSONA_FIELDS
    assert fields["creator"] == "OtisAlejandro" and fields["extensions"]["world"] == "Eldoria"
    assert fields["card_extra"]["top"]["creatorcomment"].startswith("ST Default Bot")
    row = Persona(guild_id=1, **fields)  # the keys are exactly the model's columns
    assert row.name == "Seraphina"


def test_seraphina_round_trips_through_png_and_json() -> None:
    fields = card_to_persona_fields(parse_card(SERAPHINA.read_bytes(), SERAPHINA.name))
    exported = export_png(persona_to_card(fields), fields["avatar"])
    text = Image.open(io.BytesIO(exported)).text
    assert set(text) == {"chara", "ccv3"}
    chara = json.loads(base64.b64decode(text["chara"]))
    ccv3 = json.loads(base64.b64decode(text["ccv3"]))
    assert chara["spec"] == "chara_card_v2" and chara["name"] == "Seraphina" and "first_mes" in chara
    assert ccv3["spec"] == "chara_card_v3" and ccv3["data"]["group_only_greetings"] == []

    again = parse_card(exported, "export.png")
    assert again.spec == "v3"
    assert card_to_persona_fields(again) == fields

    from_json = card_to_persona_fields(parse_card(export_json(persona_to_card(fields)), "export.json"))
    assert from_json == {**fields, "avatar": None, "avatar_mime": None}


def test_seraphina_lorebook_reaches_the_prompt() -> None:
    fields = card_to_persona_fields(parse_card(SERAPHINA.read_bytes(), SERAPHINA.name))
    persona = PersonaSpec.from_row({**fields, "id": 1})
    prompt = PromptBuilder(WordTokenizer(), 4096, 300).build(
        persona, [human(1, "Alice", "What is this glade?")], user_name="Alice"
    )
    assert [entry.uid for entry in prompt.lore_fired] == ["2"]
    glade = fields["lorebook"]["entries"][2]["content"].replace("{{user}}", "Alice").replace("{{char}}", "Seraphina")
    assert glade.strip() in prompt.text
    assert 'Alice: "What is Eldoria?"' not in prompt.text  # entry 0 did not fire


# ---- formats ---------------------------------------------------------------------------------------------------


def test_v3_json_keeps_everything() -> None:
    card = parse_card(json.dumps(V3_CARD).encode(), "nova.json")
    assert card.spec == "v3" and card.source == "json"
    fields = card_to_persona_fields(card)
    assert fields["nickname"] == "Novie" and fields["nsfw"] is True
    assert fields["alternate_greetings"] == ["Good morning, crew.", "Alert: intruder."]
    assert fields["extensions"] == V3_CARD["data"]["extensions"]
    assert fields["card_extra"]["data"]["a_tool_field"] == {"kept": True}
    assert fields["lorebook"]["entries"][0]["unknown_entry_field"] == 7
    back = persona_to_card(fields)
    data = {k: v for k, v in back["data"].items() if k != "extensions"}
    assert data == {k: v for k, v in V3_CARD["data"].items() if k != "extensions"}
    assert back["data"]["extensions"] == {**V3_CARD["data"]["extensions"], "rpbot": {"nsfw": True}}


def test_v1_card() -> None:
    v1 = {"name": "Old", "description": "From TavernAI.", "first_mes": "Hi.", "mes_example": "", "chat": "x"}
    card = parse_card(json.dumps(v1).encode(), "old.json")
    assert card.spec == "v1" and card.name == "Old" and card.top_extra == {"chat": "x"}
    fields = card_to_persona_fields(card)
    assert fields["greeting"] == "Hi." and fields["extensions"] == {}
    again = card_to_persona_fields(parse_card(export_png(persona_to_card(fields)), "old.png"))
    assert again["avatar_mime"] == "image/png"
    assert {**again, "avatar": None, "avatar_mime": None} == fields


def test_ccv3_is_preferred_and_keywords_ignore_case() -> None:
    data = png_with({"CHARA": b64(v2("FromChara")), "CcV3": b64({**V3_CARD, "data": {**V3_CARD["data"]}})})
    assert parse_card(data, "x.png").name == "Nova"
    assert parse_card(png_with({"Chara": b64(v2("OnlyV2"))}), "x.png").name == "OnlyV2"


def test_a_broken_ccv3_falls_back_to_chara() -> None:
    card = parse_card(png_with({"ccv3": "%%%not base64", "chara": b64(v2("Backup"))}), "x.png")
    assert card.name == "Backup"
    assert card.warnings and "'ccv3'" in card.warnings[0]


def test_ztxt_and_itxt_chunks() -> None:
    base = read_chunks(png_with())
    payload = b64(v2("Zed")).encode()
    ztxt = Chunk(b"zTXt", b"chara\0\0" + zlib.compress(payload))
    assert parse_card(encode_png([*base[:-1], ztxt, base[-1]]), "z.png").name == "Zed"
    itxt = Chunk(b"iTXt", b"ccv3\0\0\0\0\0" + b64({**V3_CARD}).encode())
    assert parse_card(encode_png([*base[:-1], itxt, base[-1]]), "i.png").name == "Nova"


def test_charx() -> None:
    avatar = png_with(size=(32, 48))
    card = {
        **V3_CARD,
        "data": {
            **V3_CARD["data"],
            "assets": [
                {"type": "icon", "uri": "embeded://assets/icon/images/main.png", "name": "main", "ext": "png"},
                {"type": "emotion", "uri": "embeded://assets/emotion/happy.png", "name": "happy", "ext": "png"},
                {"type": "background", "uri": "https://example.invalid/bg.png", "name": "bg", "ext": "png"},
            ],
        },
    }
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("card.json", json.dumps(card))
        archive.writestr("assets/icon/images/main.png", avatar)
        archive.writestr("assets/emotion/happy.png", avatar)
    parsed = parse_card(out.getvalue(), "nova.charx")
    assert parsed.source == "charx" and parsed.name == "Nova"
    assert parsed.avatar == avatar and parsed.avatar_mime == "image/png"
    assert parsed.data["assets"] == [card["data"]["assets"][2]]
    assert any("embedded asset" in w for w in parsed.warnings)


# ---- export ----------------------------------------------------------------------------------------------------


def test_export_without_an_image_makes_a_placeholder() -> None:
    fields = card_to_persona_fields(parse_card(json.dumps(V3_CARD).encode(), "nova.json"))
    png = export_png(persona_to_card(fields))
    image = Image.open(io.BytesIO(png))
    assert image.size == (400, 600) and set(image.text) == {"chara", "ccv3"}


def test_export_converts_other_formats_and_replaces_old_card_chunks() -> None:
    jpeg = png_with(size=(20, 20), fmt="JPEG")
    png = export_png(v2("Jay"), jpeg)
    assert Image.open(io.BytesIO(png)).format == "PNG"
    old_card = png_with({"chara": b64(v2("Old")), "ccv3": b64(V3_CARD), "Comment": "keep me"})
    redone = export_png(v2("New"), old_card)
    kinds = [c.data.split(b"\0")[0] for c in read_chunks(redone) if c.type == b"tEXt"]
    assert sorted(kinds) == [b"Comment", b"ccv3", b"chara"]
    assert parse_card(redone, "r.png").name == "New"


def test_nsfw_travels_in_extensions_without_leaking() -> None:
    fields = card_to_persona_fields(parse_card(json.dumps(v2("Plain", tags=["cute"])).encode(), "p.json"))
    assert fields["nsfw"] is False
    fields["nsfw"] = True
    back = card_to_persona_fields(parse_card(export_json(persona_to_card(fields)), "p.json"))
    assert back["nsfw"] is True and back["extensions"] == {} and back["tags"] == ["cute"]


def test_large_avatars_are_scaled_down_and_bombs_refused() -> None:
    big = parse_card(png_with({"chara": b64(v2("Big"))}, size=(2400, 1200)), "big.png")
    assert big.avatar is not None
    assert max(Image.open(io.BytesIO(big.avatar)).size) == MAX_AVATAR_SIDE

    ihdr = Chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0))
    idat = Chunk(b"IDAT", zlib.compress(b"\0" * 100))
    bomb = encode_png([ihdr, idat, Chunk(b"tEXt", b"chara\0" + b64(v2("Bomb")).encode()), Chunk(b"IEND", b"")])
    card = parse_card(bomb, "bomb.png")
    assert card.name == "Bomb" and card.avatar is None
    assert "too large" in card.warnings[0]


# ---- hostile and malformed files -------------------------------------------------------------------------------


def _chunk_bad_crc() -> bytes:
    data = bytearray(png_with({"chara": b64(v2())}))
    at = data.index(b"tEXtchara") + 10
    data[at] = ord("A") if data[at] != ord("A") else ord("B")
    return bytes(data)


def _deep() -> bytes:
    return b"[" * 100 + b"]" * 100


def _zip_without_card() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("readme.txt", "no card here")
    return out.getvalue()


def _ztxt_bomb() -> bytes:
    base = read_chunks(png_with())
    bomb = Chunk(b"zTXt", b"chara\0\0" + zlib.compress(b"A" * (MAX_TEXT_CHUNK_BYTES + 1000), 9))
    return encode_png([*base[:-1], bomb, base[-1]])


CASES: list[tuple[str, Any, str, str]] = [
    ("empty", b"", "empty", "empty"),
    ("gif", b"GIF89a" + b"\0" * 20, "not_card_file", "GIF image"),
    ("jpeg", b"\xff\xd8\xff\xe0" + b"\0" * 20, "not_card_file", "JPEG"),
    ("truncated", lambda: SERAPHINA.read_bytes()[:200_000], "truncated", "truncated"),
    ("no chunk", lambda: png_with({"Comment": "hi"}), "no_card", "no character card"),
    ("bad base64", lambda: png_with({"chara": "@@@@"}), "bad_base64", "not valid base64"),
    ("not json", lambda: png_with({"chara": base64.b64encode(b"hello").decode()}), "not_json", "not valid JSON"),
    ("not utf8", lambda: png_with({"chara": base64.b64encode(b"\xff\xfe{").decode()}), "not_utf8", "UTF-8"),
    ("list", b"[1, 2]", "not_object", "not an object"),
    ("spec", json.dumps({"spec": "chara_card_v9", "data": {}}).encode(), "wrong_spec", "chara_card_v9"),
    ("lorebook", json.dumps({"spec": "lorebook_v3", "data": {}}).encode(), "wrong_spec", "lorebook"),
    ("no data", json.dumps({"spec": "chara_card_v2", "name": "x"}).encode(), "wrong_spec", "no 'data' object"),
    ("no name", json.dumps(v2("  ")).encode(), "bad_field", "no name"),
    ("long name", json.dumps(v2("N" * 100)).encode(), "field_too_long", "name is 100"),
    ("huge field", json.dumps(v2(description="x" * 200_000)).encode(), "field_too_long", "description"),
    ("tags type", json.dumps(v2(tags=5)).encode(), "bad_field", "tags must be a list of text"),
    (
        "entry keys",
        json.dumps(v2(character_book={"entries": [{"keys": 5, "content": "c"}]})).encode(),
        "bad_field",
        "lorebook entry 1 keys",
    ),
    ("too big", lambda: b"{" + b" " * MAX_CARD_FILE_BYTES, "too_large", "at most 20 MiB"),
    ("deep", _deep(), "not_json", "nested"),
    ("bad crc", _chunk_bad_crc, "bad_crc", "checksum"),
    ("bad zip", b"PK\x03\x04garbage", "bad_zip", "damaged"),
    ("zip without card", _zip_without_card, "no_card", "card.json"),
    ("ztxt bomb", _ztxt_bomb, "too_large", "too much for a card"),
]


@pytest.mark.parametrize(("label", "data", "code", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_malformed_cards_get_specific_errors(label: str, data: Any, code: str, fragment: str) -> None:
    raw = data() if callable(data) else data
    with pytest.raises(CardError) as info:
        parse_card(raw, "upload.bin")
    assert info.value.code == code
    assert str(info.value).startswith("upload.bin: ")
    assert fragment in str(info.value)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.sampled_from(["x.png", "x.json", "x.charx"]))
def test_random_bytes_never_crash(data: bytes, name: str) -> None:
    try:
        card = parse_card(data, name)
    except CardError as exc:
        assert str(exc).startswith(f"{name}: ") and exc.code
        return
    assert card.name


SMALL_CARD = png_with({"chara": b64(v2("Fuzz", description="d", character_book={"entries": [{"keys": ["k"]}]}))})


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(SMALL_CARD) - 1), st.integers(0, 255)), min_size=1, max_size=4))
def test_damaged_cards_fail_cleanly(flips: list[tuple[int, int]]) -> None:
    data = bytearray(SMALL_CARD)
    for at, value in flips:
        data[at] = value
    try:
        card = parse_card(bytes(data), "fuzz.png")
    except CardError:
        return
    assert card_to_persona_fields(card)["name"]
