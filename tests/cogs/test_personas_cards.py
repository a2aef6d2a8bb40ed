"""/persona import and export: character cards (PNG, JSON, CHARX) through the Discord emulator."""

from __future__ import annotations

import base64
import io
import json
import re
import zipfile

import pytest

from tests.cogs._persona_fixtures import (
    World,
    card_png,
    make_world,
    png_image,
    png_text_chunks,
    seraphina_png,
    v2_card,
)
from tests.discord_emulator import DiscordEmulator, Upload
from tests.discord_emulator.fixtures import BotRunner


@pytest.fixture
async def world(emulator: DiscordEmulator, run_bot: BotRunner) -> World:
    w = await make_world(emulator, run_bot)
    emulator.interaction_deadline = 3.0  # card work must be deferred within Discord's 3 s
    return w


async def test_import_the_real_seraphina_card_and_activate_it(world: World) -> None:
    handle = await world.run(
        "persona", "import", {"card": Upload("default_Seraphina.png", seraphina_png()), "activate": True}
    )
    assert handle.response_type == 5 and handle.ephemeral  # deferred first: parsing may take a while
    assert handle.content == (
        "Imported **Seraphina** (0 alternate greetings, 4 lorebook entries, avatar).\n"
        f"**Seraphina** is now active in <#{world.lounge.id}>."
    )
    seraphina = await world.persona("Seraphina")
    assert seraphina is not None and seraphina.avatar is not None and seraphina.avatar.startswith(b"\x89PNG")
    assert seraphina.greeting.startswith("*You wake with a start")
    assert len(seraphina.lorebook["entries"]) == 4
    assert seraphina.creator == "OtisAlejandro" and seraphina.extensions.get("world") == "Eldoria"
    greeting = await world.emu.wait_for_webhook_message(world.lounge)
    assert greeting.username == "Seraphina" and greeting.content.startswith("*You wake with a start")
    assert world.emu.webhooks_in(world.lounge)[0].avatar_data.startswith("data:image/png;base64,")

    # Her lorebook is used: talking about the forest brings in the Eldoria entry.
    await world.emu.user_message(world.lounge, world.alice, "Seraphina, what is this forest called?")
    await world.emu.wait_for_webhook_message(world.lounge)
    assert "Eldoria" in world.engine.prompts[-1]


async def test_import_json_and_charx_cards_with_greetings_and_lorebook(world: World) -> None:
    book = {
        "name": "Inn lore",
        "entries": [
            {
                "keys": ["cellar"],
                "content": "The cellar holds a dragon egg.",
                "enabled": True,
                "insertion_order": 1,
                "extensions": {},
            },
        ],
        "extensions": {},
    }
    card = v2_card("Mira", alternate_greetings=["Welcome back.", "Oh, it's you."], character_book=book)
    text = await world.say("persona", "import", {"card": Upload("mira.json", json.dumps(card).encode())})
    assert text == "Imported **Mira** (2 alternate greetings, 1 lorebook entries)."
    mira = await world.persona("Mira")
    assert mira is not None and mira.alternate_greetings == ["Welcome back.", "Oh, it's you."]
    assert mira.lorebook["entries"][0]["content"] == "The cellar holds a dragon egg."
    assert mira.avatar is None

    v3 = {"spec": "chara_card_v3", "spec_version": "3.0", "data": {**v2_card("Tomas")["data"], "nickname": "Tom"}}
    charx = io.BytesIO()
    with zipfile.ZipFile(charx, "w") as z:
        z.writestr("card.json", json.dumps(v3))
    text = await world.say("persona", "import", {"card": Upload("tomas.charx", charx.getvalue())})
    assert text.startswith("Imported **Tomas**")
    tomas = await world.persona("Tomas")
    assert tomas is not None and tomas.nickname == "Tom"


async def test_import_a_name_clash_asks_before_replacing(world: World) -> None:
    first = v2_card("Mira", description="The first Mira.")
    await world.say("persona", "import", {"card": Upload("mira.json", json.dumps(first).encode())})
    second = card_png(v2_card("mira", description="The second Mira."), image=png_image((1, 2, 3)))

    ask = await world.run("persona", "import", {"card": Upload("mira2.png", second)})
    assert ask.content == "A persona named **Mira** exists. Replace it with the card?"
    yes_id, no_id = ask.original.custom_ids()
    no = await world.emu.click_button(ask.original, no_id, world.staff)
    await no.wait_response()
    await world.emu.wait_until(lambda: ask.original.content == "Cancelled.", "the cancelled question")
    mira = await world.persona("Mira")
    assert mira is not None and mira.description == "The first Mira." and mira.avatar is None

    ask = await world.run("persona", "import", {"card": Upload("mira2.png", second)})
    yes_id, no_id = ask.original.custom_ids()
    yes = await world.emu.click_button(ask.original, yes_id, world.staff)
    await yes.wait_response()
    done = await ask.wait_followup(2)
    assert done.content.startswith("Imported **mira**") and done.ephemeral
    assert await world.names() == ["mira"]
    mira = await world.persona("Mira")
    assert mira is not None and mira.description == "The second Mira." and mira.avatar is not None
    assert "persona.import" in await world.audit_actions()


@pytest.mark.parametrize(
    ("filename", "data", "problem"),
    [
        ("broken.png", card_png(v2_card("X"))[:200], "broken.png: The PNG is truncated"),
        ("plain.png", png_image(), "plain.png: The PNG has no character card in it"),
        ("bad64.png", card_png(None, raw_text="%%% not base64 %%%"), "'chara' chunk is not valid base64"),
        ("list.json", b"[1, 2, 3]", "The card JSON is a list, not an object"),
        ("garbage.json", b"\x00\x01 not json at all", "garbage.json: The file is not valid JSON"),
        ("notes.txt", b"hello there", "notes.txt: This is not a PNG, JSON or CHARX file"),
        ("nameless.json", json.dumps({"spec": "chara_card_v2", "data": {}}).encode(), "The card has no name"),
        (
            "bigfield.json",
            json.dumps(v2_card("Big", description="x" * 100_001)).encode(),
            "bigfield.json: The card's description is 100,001 characters long; at most 100,000 are accepted.",
        ),
        ("longname.json", json.dumps(v2_card("N" * 81)).encode(), "The card's name is 81 characters long"),
    ],
)
async def test_import_refuses_bad_cards_with_a_specific_message(
    world: World, filename: str, data: bytes, problem: str
) -> None:
    text = await world.say("persona", "import", {"card": Upload(filename, data)})
    assert text.startswith("That card could not be imported: ") and problem in text
    assert await world.names() == []


async def test_import_refuses_an_oversized_file_before_downloading_it(world: World) -> None:
    huge = b"\x89PNG\r\n\x1a\n" + bytes(21 * 1024 * 1024)
    text = await world.say("persona", "import", {"card": Upload("huge.png", huge)})
    assert text == "That file is 21.0 MiB; cards are at most 20 MiB."
    assert world.emu.requests_matching("GET", r"^/attachments/") == []
    assert await world.names() == []


async def test_import_refuses_a_card_too_large_for_the_context(world: World) -> None:
    card = v2_card("Tome", description="word " * 5000)
    text = await world.say("persona", "import", {"card": Upload("tome.json", json.dumps(card).encode())})
    assert "is too large for this model" in text
    assert await world.names() == []


# ---- /persona export ----


async def test_export_png_reimports_to_the_same_card(world: World) -> None:
    await world.say("persona", "import", {"card": Upload("default_Seraphina.png", seraphina_png())})
    before = await world.persona("Seraphina")
    handle = await world.run("persona", "export", {"name": "seraphina"}, member=world.alice)
    assert handle.response_type == 5 and handle.ephemeral
    assert handle.content == "**Seraphina** as a character card:"
    [attachment] = handle.attachments
    assert attachment.filename == "Seraphina.png"
    chunks = png_text_chunks(attachment.data)
    assert set(chunks) >= {"chara", "ccv3"}
    v2 = json.loads(base64.b64decode(chunks["chara"]))
    v3 = json.loads(base64.b64decode(chunks["ccv3"]))
    assert v2["spec"] == "chara_card_v2" and v3["spec"] == "chara_card_v3"
    assert v2["data"]["name"] == "Seraphina" and len(v2["data"]["character_book"]["entries"]) == 4

    # Re-importing the export replaces Seraphina with an identical persona.
    ask = await world.run("persona", "import", {"card": Upload("Seraphina.png", attachment.data)})
    yes_id, _ = ask.original.custom_ids()
    await (await world.emu.click_button(ask.original, yes_id, world.staff)).wait_response()
    await ask.wait_followup(2)
    after = await world.persona("Seraphina")
    keys = (
        "name",
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
        "lorebook",
        "extensions",
        "nickname",
    )
    assert {k: getattr(after, k) for k in keys} == {k: getattr(before, k) for k in keys}
    assert after.avatar == before.avatar


async def test_export_json_and_unknown_persona(world: World) -> None:
    await world.say("persona", "create", {"name": "Aria", "description": "A bard.", "greeting": "Hi!"})
    handle = await world.run("persona", "export", {"name": "Aria", "format": "json"})
    [attachment] = handle.attachments
    assert attachment.filename == "Aria.json"
    card = json.loads(attachment.data)
    assert card["data"]["name"] == "Aria" and card["data"]["first_mes"] == "Hi!"
    text = await world.say("persona", "export", {"name": "Nope"})
    assert text == "There is no persona named 'Nope' here. See /persona list."


async def test_import_reports_what_it_read_leniently(world: World) -> None:
    book = {
        "entries": [
            {"keys": ["x"], "content": "y", "enabled": True, "insertion_order": 0, "extensions": {}, "position": "up"}
        ],
        "extensions": {},
    }
    card = v2_card("Odd", character_book=book)
    card["spec_version"] = "9.9"
    text = await world.say("persona", "import", {"card": Upload("odd.json", json.dumps(card).encode())})
    assert text == (
        "Imported **Odd** (0 alternate greetings, 1 lorebook entries).\n"
        "Notes: spec_version '9.9' does not match chara_card_v2; read as chara_card_v2; "
        "lorebook entry 1: unknown position 'up', treated as before_char"
    )


async def test_export_has_a_per_member_cooldown(world: World) -> None:
    await world.say("persona", "create", {"name": "Aria", "description": "A bard."})
    for _ in range(5):
        handle = await world.run("persona", "export", {"name": "Aria", "format": "json"}, member=world.alice)
        assert handle.attachments
    refused = await world.run("persona", "export", {"name": "Aria", "format": "json"}, member=world.alice)
    assert refused.response_type == 4 and refused.ephemeral and not refused.attachments
    assert re.fullmatch(r"Slow down: try again <t:\d+:R>\.", refused.content)
    other = await world.run("persona", "export", {"name": "Aria", "format": "json"}, member=world.bob)
    assert other.attachments  # the cooldown is each member's own


async def test_import_with_activate_in_a_channel_that_refuses_it_still_imports(world: World) -> None:
    card = json.dumps(v2_card("Mira")).encode()
    text = await world.say(
        "persona", "import", {"card": Upload("m.json", card), "activate": True}, channel=world.general
    )
    assert text.startswith("Imported **Mira** (0 alternate greetings, 0 lorebook entries).\nIt is not active here: ")
    assert "age-restricted" in text
    assert await world.names() == ["Mira"] and world.emu.messages_in(world.general) == []
