"""/persona through the Discord emulator: the real discord.py client, a real SQLite file, every extension loaded."""

from __future__ import annotations

import asyncio
import io
import re
import sys

import pytest
from PIL import Image

from bot.prompt import PersonaSpec
from bot.storage import messages as msg_repo
from bot.storage import personas as persona_repo
from bot.storage.models import PERSONA_NAME_MAX
from tests.cogs._persona_fixtures import World, card_png, make_world, png_image, v2_card
from tests.discord_emulator import DiscordEmulator, Upload
from tests.discord_emulator.fixtures import BotRunner, ErrorLogGuard


@pytest.fixture
async def world(emulator: DiscordEmulator, run_bot: BotRunner) -> World:
    return await make_world(emulator, run_bot)


ARIA = {
    "name": "Aria",
    "description": "A travelling bard with a silver lute.",
    "personality": "cheerful, nosy",
    "scenario": "A rainy evening at the inn.",
    "greeting": "*tunes her lute* Evening, {{user}}! I am {{char}}.",
    "example_dialogue": "<START>\n{{user}}: Play something.\n{{char}}: *strums* Gladly!",
}


# ---- /persona create ----


async def test_create_stores_every_field_and_is_audited(world: World) -> None:
    text = await world.say("persona", "create", {**ARIA, "nsfw": True})
    assert text == "Created **Aria**. Activate it here with `/persona use`."
    aria = await world.persona("aria")
    assert aria is not None and aria.name == "Aria" and aria.nsfw and aria.created_by == world.staff.id
    assert {k: getattr(aria, k) for k in ARIA} == ARIA
    assert aria.avatar is None
    assert "persona.create" in await world.audit_actions()


async def test_create_with_an_avatar_keeps_a_small_png(world: World) -> None:
    big = png_image((10, 200, 10), size=(1024, 768))
    await world.say("persona", "create", {**ARIA, "avatar": Upload("aria.png", big)})
    aria = await world.persona("Aria")
    assert aria is not None and aria.avatar is not None and aria.avatar_mime == "image/png"
    assert aria.avatar.startswith(b"\x89PNG")
    with Image.open(io.BytesIO(aria.avatar)) as img:
        assert max(img.size) == 512


async def test_create_refuses_a_duplicate_name_whatever_its_case(world: World) -> None:
    await world.say("persona", "create", ARIA)
    text = await world.say("persona", "create", {**ARIA, "name": "ARIA", "description": "Another one"})
    assert text == "A persona named 'Aria' already exists in this server."
    aria = await world.persona("aria")
    assert aria is not None and aria.description == ARIA["description"]
    assert await world.names() == ["Aria"]


async def test_create_refuses_a_bad_avatar_and_a_blank_name(world: World) -> None:
    text = await world.say("persona", "create", {**ARIA, "avatar": Upload("aria.png", b"this is not an image")})
    assert text == "The avatar is not an image I can read (use PNG, JPEG, WebP or GIF)."
    text = await world.say("persona", "create", {**ARIA, "name": "   "})
    assert text == "A persona needs a name."
    assert await world.names() == []


async def test_create_refuses_a_persona_too_large_for_the_context(world: World) -> None:
    # 6000 characters (Discord's longest option) of one-character tokens: far more than 4096 - 300 - room to talk.
    huge = "a." * 3000
    text = await world.say("persona", "create", {"name": "Wordy", "description": huge})
    assert text.startswith("Persona 'Wordy' is too large for this model") and "Shorten the description" in text
    assert await world.names() == []


async def test_options_longer_than_discord_allows_are_refused_by_the_client(world: World) -> None:
    with pytest.raises(ValueError, match="characters long"):
        await world.run("persona", "create", {"name": "x" * (PERSONA_NAME_MAX + 1), "description": "d"})
    with pytest.raises(ValueError, match="characters long"):
        await world.run("persona", "create", {"name": "Long", "description": "d" * 6001})


# ---- /persona use and off ----


async def test_use_posts_the_greeting_as_the_persona_through_a_webhook(world: World) -> None:
    avatar = png_image((0, 0, 255))
    await world.say("persona", "create", {**ARIA, "avatar": Upload("aria.png", avatar)})
    text = await world.say("persona", "use", {"name": "aria"})
    assert text == f"**Aria** is now active in <#{world.lounge.id}>."
    greeting = await world.emu.wait_for_webhook_message(world.lounge)
    assert greeting.username == "Aria" and greeting.content == "*tunes her lute* Evening, Staff! I am Aria."
    assert greeting.allowed_mentions == {"parse": []}
    hook = world.emu.webhooks_in(world.lounge)[0]
    assert (
        greeting.webhook_id == hook.id
        and hook.avatar_data is not None
        and hook.avatar_data.startswith("data:image/png;base64,")
    )
    row = await world.channel_row(world.lounge)
    aria = await world.persona("Aria")
    assert row is not None and aria is not None and row.persona_id == aria.id

    # The persona now answers in the channel.
    await world.emu.user_message(world.lounge, world.alice, "Aria, play us a song!")
    reply = await world.emu.wait_for_webhook_message(world.lounge)
    await world.emu.wait_until(lambda: reply.content == "The lantern flickers.", "the streamed reply")
    assert "Evening, Staff! I am Aria." in world.engine.prompts[-1]


async def test_use_refuses_a_channel_that_is_not_age_restricted_while_nsfw_only_is_on(world: World) -> None:
    await world.say("persona", "create", ARIA)
    text = await world.say("persona", "use", {"name": "Aria"}, channel=world.general)
    assert text.startswith("This server only allows personas in age-restricted channels")
    assert "/admin nsfw-only enabled:False" in text
    assert await world.channel_row(world.general) is None or (await world.channel_row(world.general)).persona_id is None
    assert world.emu.messages_in(world.general) == []

    await world.emu.set_nsfw(world.general, True)
    await world.emu.wait_until(lambda: world.bot.get_channel(world.general.id).is_nsfw(), "the channel update")
    text = await world.say("persona", "use", {"name": "Aria"}, channel=world.general)
    assert text.startswith("**Aria** is now active")


async def test_use_of_an_unknown_persona_names_the_problem(world: World) -> None:
    text = await world.say("persona", "use", {"name": "Nobody"})
    assert text == "There is no persona named 'Nobody' here. See /persona list."
    assert world.emu.messages_in(world.lounge) == []


async def test_use_switches_personas_and_starts_a_new_scene(world: World) -> None:
    await world.say("persona", "create", ARIA)
    await world.say("persona", "create", {"name": "Bram", "description": "A grumpy smith.", "greeting": "Hm."})
    await world.say("persona", "use", {"name": "Aria"})
    await world.emu.wait_for_webhook_message(world.lounge)
    await world.emu.user_message(world.lounge, world.alice, "a secret word: pumpernickel")
    await world.say("persona", "use", {"name": "Bram"})
    hm = await world.emu.wait_for_webhook_message(world.lounge)
    assert hm.username == "Bram" and hm.content == "Hm."
    await world.emu.user_message(world.lounge, world.alice, "Bram, hello")
    await world.emu.wait_for_webhook_message(world.lounge)
    prompt = world.engine.prompts[-1]
    assert "Bram" in prompt and "Hm." in prompt and "pumpernickel" not in prompt and "Aria" not in prompt


async def test_autocomplete_offers_this_guilds_personas_by_prefix(world: World) -> None:
    await world.add_personas(30, prefix="Ari")
    await world.say("persona", "create", {"name": "Bram", "description": "A smith."})
    other = await world.emu.create_guild("Elsewhere", channels=("x",))
    async with world.bot.db.session() as session:
        await persona_repo.create_persona(session, other.id, "Arianne", description="elsewhere")
    typing = await world.emu.autocomplete(
        world.lounge, world.alice, "persona", {"name": "ari"}, "name", subcommand="use"
    )
    await typing.wait_response()
    assert typing.choices is not None and len(typing.choices) == 25
    assert all(c["name"].startswith("Ari ") for c in typing.choices) and typing.choices[0]["name"] == "Ari 00"
    typing = await world.emu.autocomplete(
        world.lounge, world.alice, "persona", {"name": "b"}, "name", subcommand="show"
    )
    await typing.wait_response()
    assert typing.choices == [{"name": "Bram", "value": "Bram"}]


async def test_off_deactivates_and_the_persona_stops_answering(world: World) -> None:
    text = await world.say("persona", "off")
    assert text == "No persona is active in this channel."
    await world.say("persona", "create", ARIA)
    await world.say("persona", "use", {"name": "Aria"})
    await world.emu.wait_for_webhook_message(world.lounge)
    text = await world.say("persona", "off")
    assert text == "The persona is no longer active in this channel."
    row = await world.channel_row(world.lounge)
    assert row is not None and row.persona_id is None
    await world.emu.user_message(world.lounge, world.alice, "Aria? Are you there?")
    show = await world.run("persona", "show", member=world.alice)
    assert show.content == "No persona is active here; name one: /persona show name:…"
    assert world.engine.requests == []
    assert "persona.off" in await world.audit_actions()


# ---- /persona show and list ----


async def test_show_gives_an_embed_with_avatar_fields_and_token_size(world: World) -> None:
    await world.say("persona", "create", {**ARIA, "avatar": Upload("aria.png", png_image())})
    show = await world.run("persona", "show", {"name": "aria"}, member=world.alice)
    assert show.ephemeral and len(show.embeds) == 1
    embed = show.embeds[0]
    assert embed["title"] == "Aria" and embed["description"] == ARIA["description"]
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields["Personality"] == ARIA["personality"] and fields["Scenario"] == ARIA["scenario"]
    assert fields["Greeting"] == ARIA["greeting"]
    chat = world.bot.get_cog("ChatCog")
    aria = await world.persona("Aria")
    tokens = chat.builder.check_persona(PersonaSpec.from_row(aria))
    assert fields["Persona block"] == f"{tokens} tokens" and tokens > 20
    assert embed["thumbnail"]["url"] == "attachment://avatar.png"
    assert [a.filename for a in show.attachments] == ["avatar.png"] and show.attachments[0].data == aria.avatar
    assert embed["footer"]["text"] == "SFW"

    # Without a name: the persona active in this channel.
    await world.say("persona", "use", {"name": "Aria"})
    show = await world.run("persona", "show", member=world.alice)
    assert show.embeds[0]["title"] == "Aria"
    unknown = await world.run("persona", "show", {"name": "Zed"}, member=world.alice)
    assert unknown.content == "There is no persona named 'Zed' here. See /persona list."


async def test_list_pages_through_a_large_library(world: World) -> None:
    empty = await world.run("persona", "list", member=world.alice)
    assert empty.embeds[0]["description"] == "None yet." and empty.components == []
    await world.add_personas(23)
    listing = await world.run("persona", "list", member=world.alice)
    assert listing.ephemeral
    embed = listing.embeds[0]
    assert embed["footer"]["text"] == "Page 1/3 · 23 personas"
    assert embed["description"].splitlines()[0] == "**Persona 00** — No. 0"
    assert len(embed["description"].splitlines()) == 10
    message = listing.original
    prev_id, next_id = message.custom_ids()
    buttons = {c["custom_id"]: c for row in message.components for c in row["components"]}
    assert buttons[prev_id]["disabled"] is True and not buttons[next_id].get("disabled")

    for page in (2, 3):
        click = await world.emu.click_button(message, next_id, world.alice)
        await click.wait_response()
        assert click.response_type == 7
        await world.emu.wait_until(lambda p=page: f"Page {p}/3" in message.embeds[0]["footer"]["text"], "a new page")
    assert message.embeds[0]["description"].splitlines() == [f"**Persona {i}** — No. {i}" for i in (20, 21, 22)]
    buttons = {c["custom_id"]: c for row in message.components for c in row["components"]}
    assert buttons[next_id]["disabled"] is True
    click = await world.emu.click_button(message, prev_id, world.alice)
    await click.wait_response()
    await world.emu.wait_until(lambda: "Page 2/3" in message.embeds[0]["footer"]["text"], "page 2 again")


# ---- /persona delete ----


async def test_delete_asks_first_and_only_deletes_on_yes(world: World) -> None:
    await world.say("persona", "create", ARIA)
    await world.say("persona", "use", {"name": "Aria"})
    ask = await world.run("persona", "delete", {"name": "aria"})
    assert ask.ephemeral and ask.content == "Delete **Aria**? Channels using it go quiet."
    yes_id, no_id = ask.original.custom_ids()
    # Someone else cannot answer for the person who asked.
    other = await world.emu.click_button(ask.original, yes_id, world.bob)
    await other.wait_response()
    assert other.content == "This question is for someone else." and other.ephemeral
    cancel = await world.emu.click_button(ask.original, no_id, world.staff)
    await cancel.wait_response()
    await world.emu.wait_until(lambda: ask.original.content == "Cancelled.", "the cancelled question")
    assert ask.original.components == []
    assert await world.names() == ["Aria"]

    ask = await world.run("persona", "delete", {"name": "Aria"})
    yes_id, _no = ask.original.custom_ids()
    yes = await world.emu.click_button(ask.original, yes_id, world.staff)
    await yes.wait_response()
    done = await ask.wait_followup()
    assert done.content == "Deleted **Aria**." and done.ephemeral
    assert await world.names() == []
    row = await world.channel_row(world.lounge)
    assert row is not None and row.persona_id is None
    await world.emu.user_message(world.lounge, world.alice, "Aria?")
    assert (await world.run("persona", "show", member=world.alice)).content.startswith("No persona is active")
    assert world.engine.requests == []
    assert "persona.delete" in await world.audit_actions()


async def test_delete_of_an_unknown_persona(world: World) -> None:
    assert await world.say("persona", "delete", {"name": "Ghost"}) == (
        "There is no persona named 'Ghost' here. See /persona list."
    )


# ---- /persona edit ----


async def test_edit_opens_a_prefilled_modal_and_saves_it(world: World) -> None:
    await world.say("persona", "create", ARIA)
    await world.say("persona", "use", {"name": "Aria"})
    await world.emu.wait_for_webhook_message(world.lounge)
    opened = await world.run("persona", "edit", {"name": "aria"})
    assert opened.response_type == 9 and opened.modal is not None
    assert opened.modal["title"] == "Edit Aria"
    inputs = {c["label"]: c for row in opened.modal["components"] for c in row["components"]}
    assert {label: c.get("value") for label, c in inputs.items()} == {
        "Description": ARIA["description"],
        "Personality": ARIA["personality"],
        "Scenario": ARIA["scenario"],
        "Greeting": ARIA["greeting"],
        "Example dialogue": ARIA["example_dialogue"],
    }
    ids = {label: c["custom_id"] for label, c in inputs.items()}
    saved = await world.emu.submit_modal(
        opened, {ids["Description"]: "A retired bard who now keeps bees.", ids["Personality"]: ""}
    )
    await saved.wait_response()
    assert saved.ephemeral and saved.content == "Saved **Aria**."
    aria = await world.persona("Aria")
    assert aria is not None and aria.description == "A retired bard who now keeps bees." and aria.personality == ""
    assert aria.scenario == ARIA["scenario"]
    # The next reply is built from the edited persona.
    await world.emu.user_message(world.lounge, world.alice, "Aria, how are the bees?")
    await world.emu.wait_for_webhook_message(world.lounge)
    assert "keeps bees" in world.engine.prompts[-1] and "silver lute" not in world.engine.prompts[-1]
    assert "persona.edit" in await world.audit_actions()


async def test_edit_refuses_an_edit_that_makes_the_persona_too_large(world: World) -> None:
    await world.say("persona", "create", ARIA)
    opened = await world.run("persona", "edit", {"name": "Aria"})
    ids = {c["label"]: c["custom_id"] for row in opened.modal["components"] for c in row["components"]}
    saved = await world.emu.submit_modal(opened, {ids["Description"]: "a." * 2000, ids["Scenario"]: "b." * 2000})
    await saved.wait_response()
    assert saved.ephemeral and "is too large for this model" in saved.content
    aria = await world.persona("Aria")
    assert aria is not None and aria.description == ARIA["description"]


async def test_edit_of_an_unknown_persona(world: World) -> None:
    handle = await world.run("persona", "edit", {"name": "Ghost"})
    assert handle.response_type == 4 and handle.content.startswith("There is no persona named 'Ghost'")


async def test_an_unanswered_question_says_nothing_changed(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    # The cog module as the bot loaded it (discord.py does not set it as an attribute of the cogs package).
    monkeypatch.setattr(sys.modules["cogs.personas"], "CONFIRM_TIMEOUT", 0.1)
    await world.say("persona", "create", ARIA)
    ask = await world.run("persona", "delete", {"name": "Aria"})
    await world.emu.wait_until(
        lambda: ask.original.content == "No answer in time; nothing was changed.", "the question to close"
    )
    assert ask.original.components == [] and await world.names() == ["Aria"]


# ---- edges: adult personas, threads, long fields, changed avatars ----


async def test_an_nsfw_persona_stays_out_of_channels_that_are_not_age_restricted(world: World) -> None:
    owner = await world.emu.add_member(world.guild, "owner", permissions=0x20)  # Manage Server
    await world.say("admin", "nsfw-only", {"enabled": False}, member=owner)
    await world.say("persona", "create", ARIA)
    await world.say("persona", "create", {"name": "Vex", "description": "A succubus.", "nsfw": True})
    assert (await world.say("persona", "use", {"name": "Aria"}, channel=world.general)).startswith("**Aria** is now")
    text = await world.say("persona", "use", {"name": "Vex"}, channel=world.general)
    assert text == (
        "Vex is marked NSFW, so it can only be used in age-restricted channels. "
        "Mark this channel age-restricted, or pick another persona."
    )
    row = await world.channel_row(world.general)
    aria = await world.persona("Aria")
    assert row is not None and aria is not None and row.persona_id == aria.id
    assert (await world.say("persona", "use", {"name": "Vex"})).startswith("**Vex** is now active")


async def test_show_in_a_thread_shows_the_persona_of_its_channel(world: World) -> None:
    await world.say("persona", "create", ARIA)
    await world.say("persona", "use", {"name": "Aria"})
    thread = await world.emu.create_thread(world.lounge, "side room")
    show = await world.run("persona", "show", member=world.alice, channel=thread)
    assert show.embeds and show.embeds[0]["title"] == "Aria"


async def test_persona_off_in_a_thread_quiets_only_that_thread(world: World) -> None:
    await world.say("persona", "create", ARIA)
    await world.say("persona", "use", {"name": "Aria"})
    quiet = await world.emu.create_thread(world.lounge, "quiet room")
    other = await world.emu.create_thread(world.lounge, "busy room")
    await world.emu.user_message(quiet, world.alice, "Aria, are you here?")  # inherited: she answers in threads
    await world.emu.wait_for_webhook_message(quiet)

    text = await world.say("persona", "off", channel=quiet)
    assert text == f"The persona is no longer active in this thread; <#{world.lounge.id}> keeps it."
    assert await world.say("persona", "off", channel=quiet) == "No persona is active in this thread."
    await world.emu.user_message(quiet, world.alice, "Aria, still here?")
    await world.emu.user_message(other, world.alice, "Aria, and here?")  # the other thread and the channel keep her
    await world.emu.wait_for_webhook_message(other)
    await world.emu.user_message(world.lounge, world.alice, "Aria, in the lounge?")
    await world.emu.wait_for_webhook_message(world.lounge)
    await asyncio.sleep(0.2)
    assert len([m for m in world.emu.messages_in(quiet) if m.source == "webhook"]) == 1

    # A persona picked in the thread itself speaks there again.
    assert (await world.say("persona", "use", {"name": "Aria"}, channel=quiet)).startswith("**Aria** is now active")
    await world.emu.user_message(quiet, world.alice, "Aria, welcome back")
    await world.emu.wait_until(
        lambda: len([m for m in world.emu.messages_in(quiet) if m.source == "webhook"]) >= 2, "Aria back in the thread"
    )


async def test_show_fits_discords_embed_limits_with_the_longest_fields(world: World) -> None:
    long = {key: (key[0] + " ") * 3000 for key in ("description", "personality", "scenario", "greeting")}
    async with world.bot.db.session() as session:
        await persona_repo.create_persona(session, world.guild.id, "Longwinded", **long)
    show = await world.run("persona", "show", {"name": "Longwinded"}, member=world.alice)
    assert show.embeds, show.content
    embed = show.embeds[0]
    size = len(embed["title"]) + len(embed["description"]) + len(embed["footer"]["text"])
    size += sum(len(f["name"]) + len(f["value"]) for f in embed["fields"])
    assert size <= 6000 and embed["description"].endswith("…")


async def test_edit_keeps_fields_longer_than_a_modal_can_show_unless_they_are_changed(world: World) -> None:
    long_description = "The archivist remembers everything. " * 200  # 7200 characters, from a card
    async with world.bot.db.session() as session:
        await persona_repo.create_persona(
            session, world.guild.id, "Archivist", description=long_description, scenario="A library."
        )
    opened = await world.run("persona", "edit", {"name": "Archivist"})
    inputs = {c["custom_id"]: c for row in opened.modal["components"] for c in row["components"]}
    by_label = {c["label"].split(" (")[0]: c for c in inputs.values()}
    described = by_label["Description"]
    assert described["label"] == "Description (first 4000 of 7200 chars)"
    assert described["value"] == long_description[:4000]
    saved = await world.emu.submit_modal(opened, {by_label["Scenario"]["custom_id"]: "A flooded library."})
    await saved.wait_response()
    assert saved.content == "Saved **Archivist**."
    archivist = await world.persona("Archivist")
    assert archivist is not None and archivist.description == long_description
    assert archivist.scenario == "A flooded library."

    opened = await world.run("persona", "edit", {"name": "Archivist"})
    inputs = {
        c["label"].split(" (")[0]: c["custom_id"] for row in opened.modal["components"] for c in row["components"]
    }
    saved = await world.emu.submit_modal(opened, {inputs["Description"]: "A short description now."})
    await saved.wait_response()
    archivist = await world.persona("Archivist")
    assert archivist is not None and archivist.description == "A short description now."


async def test_a_new_avatar_reaches_the_webhook(world: World) -> None:
    await world.say("persona", "create", ARIA)
    await world.say("persona", "use", {"name": "Aria"})
    await world.emu.wait_for_webhook_message(world.lounge)
    hook = world.emu.webhooks_in(world.lounge)[0]
    assert hook.avatar_data is None
    # Re-import Aria from a card with a picture: the same persona (same id), a new avatar.
    card = card_png(v2_card("Aria"), image=png_image((250, 250, 0)))
    ask = await world.run("persona", "import", {"card": Upload("aria.png", card)})
    yes_id, _ = ask.original.custom_ids()
    await (await world.emu.click_button(ask.original, yes_id, world.staff)).wait_response()
    await ask.wait_followup(2)
    await world.emu.user_message(world.lounge, world.alice, "Aria, you look different.")
    await world.emu.wait_for_webhook_message(world.lounge)
    assert hook.avatar_data is not None and hook.avatar_data.startswith("data:image/png;base64,")

    # A deleted persona's id may be given to the next one (SQLite reuses the highest id): no stale avatar either.
    ask = await world.run("persona", "delete", {"name": "Aria"})
    yes_id, _ = ask.original.custom_ids()
    await (await world.emu.click_button(ask.original, yes_id, world.staff)).wait_response()
    await ask.wait_followup()
    await world.say("persona", "create", {"name": "Plain", "description": "No picture.", "greeting": "Hi."})
    await world.say("persona", "use", {"name": "Plain"})
    hi = await world.emu.wait_for_webhook_message(world.lounge)
    assert hi.username == "Plain" and hook.avatar_data is None


# ---- unexpected failures ----

OOPS = re.compile(
    r"Something went wrong on my side \(error id `([0-9a-f]{8})`\)\. An admin can find it in the bot's log\."
)


async def test_an_unexpected_failure_gives_an_error_id_and_no_traceback(
    world: World, error_log_guard: ErrorLogGuard, monkeypatch: pytest.MonkeyPatch
) -> None:
    error_log_guard.allow(r"^command /persona list failed \(error id [0-9a-f]{8}\)$")

    async def on_fire(*_args: object, **_kwargs: object) -> int:
        raise RuntimeError("the database is on fire")

    monkeypatch.setattr(persona_repo, "count_personas", on_fire)
    handle = await world.run("persona", "list", member=world.alice)
    match = OOPS.fullmatch(handle.content or "")
    assert handle.ephemeral and match is not None
    [record] = error_log_guard.records
    assert match.group(1) in record.getMessage() and isinstance(record.exc_info[1], RuntimeError)


async def test_an_unexpected_failure_in_the_edit_form_is_reported_too(
    world: World, error_log_guard: ErrorLogGuard, monkeypatch: pytest.MonkeyPatch
) -> None:
    error_log_guard.allow(r"^interaction \w+ failed \(error id [0-9a-f]{8}\)$")
    await world.say("persona", "create", ARIA)
    opened = await world.run("persona", "edit", {"name": "Aria"})

    async def on_fire(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("the disk is full")

    monkeypatch.setattr(persona_repo, "update_persona", on_fire)
    saved = await world.emu.submit_modal(opened, {})
    await saved.wait_response()
    match = OOPS.fullmatch(saved.content or "")
    assert saved.ephemeral and match is not None
    [record] = error_log_guard.records
    assert match.group(1) in record.getMessage() and opened.modal["custom_id"] in record.getMessage()


async def test_an_nsfw_persona_falls_silent_when_its_channel_stops_being_age_restricted(world: World) -> None:
    owner = await world.emu.add_member(world.guild, "owner", permissions=0x20)  # Manage Server
    await world.say("admin", "nsfw-only", {"enabled": False}, member=owner)
    await world.say("persona", "create", {"name": "Vex", "description": "A succubus.", "greeting": "Hi.", "nsfw": True})
    await world.say("persona", "use", {"name": "Vex"})
    await world.emu.wait_for_webhook_message(world.lounge)
    await world.emu.set_nsfw(world.lounge, False)
    await world.emu.wait_until(lambda: not world.bot.get_channel(world.lounge.id).is_nsfw(), "the channel update")
    await world.emu.user_message(world.lounge, world.alice, "Vex, hello?")
    # No reply is generated for that; the next persona, which is not NSFW, may talk here.
    await world.say("persona", "create", {"name": "Sunny", "description": "Harmless.", "greeting": "Hello!"})
    await world.say("persona", "use", {"name": "Sunny"})
    await world.emu.wait_for_webhook_message(world.lounge)
    await world.emu.user_message(world.lounge, world.alice, "Sunny, hello?")
    await world.emu.wait_for_webhook_message(world.lounge)
    assert len(world.engine.requests) == 1 and "Sunny, hello?" in world.engine.prompts[0]


async def test_deleting_a_persona_while_it_replies_loses_no_stored_messages(world: World) -> None:
    await world.say("persona", "create", ARIA)
    await world.say("persona", "use", {"name": "Aria"})
    await world.emu.wait_for_webhook_message(world.lounge)
    world.engine.pause()
    await world.emu.user_message(world.lounge, world.alice, "Aria, a long song please.")
    await world.emu.wait_until(lambda: world.engine.active == 1, "the reply to start")
    ask = await world.run("persona", "delete", {"name": "Aria"})
    yes_id, _ = ask.original.custom_ids()
    await (await world.emu.click_button(ask.original, yes_id, world.staff)).wait_response()
    await ask.wait_followup()
    world.engine.resume()
    await world.emu.wait_until(lambda: world.engine.completed == 1, "the reply to end")
    chat = world.bot.get_cog("ChatCog")
    orphan = await world.emu.wait_until(
        lambda: [
            m for m in world.emu.messages_in(world.lounge) if m.content == "The lantern flickers." and m.components
        ],
        "the finished reply",
    )
    await world.emu.wait_until(lambda: chat.history.get(world.lounge.id, orphan[0].id), "the reply in the history")
    await chat.writer.flush()
    assert chat.writer.failed_batches == 0
    async with world.bot.db.session() as session:
        stored = await msg_repo.get_message(session, orphan[0].id)
    # Kept, without the link to the persona that no longer exists (as ON DELETE SET NULL leaves older ones).
    assert stored is not None and stored.content == "The lantern flickers." and stored.persona_id is None
