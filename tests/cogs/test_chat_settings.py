"""/chat through the Discord emulator: scenes, reply mode, sampler settings, greetings and the context inspector."""

from __future__ import annotations

import json
import sys

import pytest

from bot.storage.models import ReplyMode
from tests.cogs._persona_fixtures import World, make_world, seraphina_png
from tests.discord_emulator import DiscordEmulator, Upload
from tests.discord_emulator.fixtures import BotRunner

MIRA = {
    "name": "Mira",
    "description": "An innkeeper who knows every rumour.",
    "greeting": "*wipes the counter* Welcome in, {{user}}.",
}


@pytest.fixture
async def world(emulator: DiscordEmulator, run_bot: BotRunner) -> World:
    w = await make_world(emulator, run_bot)
    emulator.interaction_deadline = 3.0  # reset and greeting post messages: they must defer first
    await w.say("persona", "create", MIRA)
    return w


async def activate(world: World) -> None:
    await world.say("persona", "use", {"name": "Mira"})
    await world.emu.wait_for_webhook_message(world.lounge)


async def talk(world: World, text: str) -> str:
    """Say something that addresses Mira and wait for her whole reply; returns the prompt she was given."""
    count = len(world.engine.prompts)
    await world.emu.user_message(world.lounge, world.alice, text)
    reply = await world.emu.wait_for_webhook_message(world.lounge)
    await world.emu.wait_until(lambda: reply.content == "The lantern flickers.", "the streamed reply")
    assert len(world.engine.prompts) == count + 1
    return world.engine.prompts[-1]


async def test_commands_need_an_active_persona(world: World) -> None:
    for sub, options in (
        ("reset", {}),
        ("mode", {"mode": "always"}),
        ("settings", {}),
        ("greeting", {}),
        ("context", {}),
    ):
        text = await world.say("chat", sub, options)
        assert text == "No persona is active in this channel. Start one with /persona use.", sub


# ---- /chat reset ----


async def test_reset_starts_a_new_scene_without_the_earlier_history(world: World) -> None:
    await activate(world)
    prompt = await talk(world, "Mira, remember the word pumpernickel.")
    assert "pumpernickel" in prompt and prompt.count("Welcome in") == 1

    handle = await world.run("chat", "reset")
    assert handle.response_type == 5 and handle.content == "A new scene begins." and handle.ephemeral
    again = await world.emu.wait_for_webhook_message(world.lounge)
    assert again.username == "Mira" and again.content == "*wipes the counter* Welcome in, Staff."

    prompt = await talk(world, "Mira, what was the word?")
    assert "pumpernickel" not in prompt and "The lantern flickers." not in prompt
    assert prompt.count("Welcome in, Staff.") == 1 and "Mira, what was the word?" in prompt
    assert "chat.reset" in await world.audit_actions()


# ---- /chat mode ----


async def test_mode_always_answers_every_message_and_mention_only_when_addressed(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.modules["cogs.chat"], "ALWAYS_MODE_DEBOUNCE", 0.05)
    await activate(world)
    # Default: mention mode. A message that does not address her is stored but not answered.
    await world.emu.user_message(world.lounge, world.alice, "nice weather today")
    await talk(world, "Mira, hello")
    assert len(world.engine.requests) == 1

    text = await world.say("chat", "mode", {"mode": "always"})
    assert text == "Reply mode: **always**."
    row = await world.channel_row(world.lounge)
    assert row is not None and row.reply_mode is ReplyMode.ALWAYS
    prompt = await talk(world, "nice weather today, again")
    assert prompt.rstrip().endswith("<|model|>Mira:") and "nice weather today, again" in prompt

    assert await world.say("chat", "mode", {"mode": "mention"}) == "Reply mode: **mention**."
    row = await world.channel_row(world.lounge)
    assert row is not None and row.reply_mode is ReplyMode.MENTION
    with pytest.raises(ValueError, match="must be one of"):
        await world.run("chat", "mode", {"mode": "sometimes"})


# ---- /chat settings ----


DEFAULTS = (
    "Settings for this channel\n"
    "**temperature**: 0.8 (default)\n"
    "**top_p**: 0.9 (default)\n"
    "**top_k**: 0 (default)\n"
    "**min_p**: 0.05 (default)\n"
    "**repetition_penalty**: 1.1 (default)\n"
    "**max_new_tokens**: 300 (default)"
)


async def test_settings_show_change_and_apply_to_the_next_reply(world: World) -> None:
    await activate(world)
    assert await world.say("chat", "settings", member=world.alice) == DEFAULTS

    text = await world.say("chat", "settings", {"temperature": 1.25, "top_k": 40, "max_new_tokens": 120})
    assert text.splitlines() == [
        "Updated settings",
        "**temperature**: 1.25 (channel)",
        "**top_p**: 0.9 (default)",
        "**top_k**: 40 (channel)",
        "**min_p**: 0.05 (default)",
        "**repetition_penalty**: 1.1 (default)",
        "**max_new_tokens**: 120 (channel)",
    ]
    # A later change keeps the earlier ones.
    text = await world.say("chat", "settings", {"min_p": 0.1})
    assert "**min_p**: 0.1 (channel)" in text and "**temperature**: 1.25 (channel)" in text

    await talk(world, "Mira, a drink please")
    request = world.engine.requests[-1]
    assert request.params.temperature == 1.25 and request.params.top_k == 40 and request.params.min_p == 0.1
    assert request.max_new_tokens == 120
    assert "chat.settings" in await world.audit_actions()


async def test_settings_are_validated(world: World) -> None:
    await activate(world)
    # Discord itself refuses values outside the synced ranges.
    for option, value in (
        ("temperature", 5.5),
        ("top_p", 1.5),
        ("repetition_penalty", 0.5),
        ("top_k", -1),
        ("max_new_tokens", 5000),
    ):
        with pytest.raises(ValueError, match="must be between"):
            await world.run("chat", "settings", {option: value})
    # The bot refuses what the ranges cannot say: a reply longer than half the context.
    text = await world.say("chat", "settings", {"max_new_tokens": 3000, "temperature": 1.0})
    assert text == "max_new_tokens can be at most 2048 (half of the 4096-token context)."
    row = await world.channel_row(world.lounge)
    assert row is not None and row.sampler == {}


# ---- /chat greeting ----


async def test_greeting_lists_and_picks_an_alternate_greeting(world: World) -> None:
    card = {
        "spec": "chara_card_v2",
        "spec_version": "2.0",
        "data": {
            "name": "Nell",
            "description": "A ferrywoman.",
            "personality": "",
            "scenario": "",
            "mes_example": "",
            "first_mes": "The ferry waits.",
            "alternate_greetings": ["Fog again, {{user}}.", "You're late."],
            "creator_notes": "",
            "system_prompt": "",
            "post_history_instructions": "",
            "tags": [],
            "creator": "",
            "character_version": "",
            "extensions": {},
        },
    }
    await world.say("persona", "import", {"card": Upload("nell.json", json.dumps(card).encode()), "activate": True})
    await world.emu.wait_until(lambda: world.emu.messages_in(world.lounge), "the greeting")
    listing = await world.say("chat", "greeting", member=world.alice)
    assert listing.splitlines() == [
        "**1.** (current) The ferry waits.",
        "**2.** Fog again, {{user}}.",
        "**3.** You're late.",
    ]
    await talk_to(world, "Nell, hello")

    handle = await world.run("chat", "greeting", {"index": 2})
    assert handle.response_type == 5 and handle.content == "A new scene begins with greeting 2."
    posted = await world.emu.wait_for_webhook_message(world.lounge)
    assert posted.username == "Nell" and posted.content == "Fog again, Staff."
    row = await world.channel_row(world.lounge)
    assert row is not None and row.greeting_index == 1
    assert (await world.say("chat", "greeting")).splitlines()[1] == "**2.** (current) Fog again, {{user}}."
    prompt = await talk_to(world, "Nell, shall we go?")
    assert "Fog again, Staff." in prompt and "The ferry waits." not in prompt and "Nell, hello" not in prompt

    assert await world.say("chat", "greeting", {"index": 4}) == "Nell has 3 greetings; pick 1 to 3."
    with pytest.raises(ValueError, match="must be between"):
        await world.run("chat", "greeting", {"index": 0})


async def talk_to(world: World, text: str) -> str:
    await world.emu.user_message(world.lounge, world.alice, text)
    reply = await world.emu.wait_for_webhook_message(world.lounge)
    await world.emu.wait_until(lambda: reply.content == "The lantern flickers.", "the streamed reply")
    return world.engine.prompts[-1]


async def test_greeting_of_a_persona_without_greetings(world: World) -> None:
    await world.say("persona", "create", {"name": "Quiet", "description": "Says little."})
    await world.say("persona", "use", {"name": "Quiet"})
    assert await world.say("chat", "greeting") == "Quiet has no greetings."


# ---- /chat context ----


async def test_context_shows_budget_parts_messages_lore_and_the_prompt_end(world: World) -> None:
    await world.say("persona", "import", {"card": Upload("s.png", seraphina_png()), "activate": True})
    await world.emu.wait_for_webhook_message(world.lounge)
    await world.emu.user_message(world.lounge, world.bob, "This glade feels like a safe haven.")
    await world.emu.user_message(world.lounge, world.bob, "(( ooc: brb ))")
    handle = await world.run("chat", "context", member=world.alice)
    assert handle.ephemeral and len(handle.embeds) == 1
    embed = handle.embeds[0]
    assert embed["title"] == "Context for Seraphina"
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    used, _of, budget = fields["Token budget"].split()[:3]
    assert int(used) > 100 and budget == "3796"
    assert "(4096 context − 300 for the reply)" in fields["Token budget"]
    parts = dict(line.split(": ") for line in fields["By part"].splitlines())
    assert set(parts) == {"system", "lore", "examples", "history", "post_history", "reply"}
    assert int(parts["system"]) > 100 and int(parts["lore"]) > 0 and int(parts["history"]) > 0
    assert fields["Messages"] == "2 of 2 in this scene fit"  # the out-of-character line is left out
    fired = fields["Lore entries fired"].splitlines()
    assert "glade (key 'glade'; before_char; " in "\n".join(fired)  # Bob's message fired it
    assert len(fired) == 4  # the greeting fires the other three (forest, beasts, magic)
    assert fields["End of the prompt"].startswith("```\n") and fields["End of the prompt"].endswith(
        "<|model|>Seraphina:\n```"
    )
    assert "Bob: This glade feels like a safe haven." in fields["End of the prompt"]
