"""Who may use /persona and /chat: Discord's defaults are not enforced by the emulator (nor relied on by the bot),
so every changing command checks Manage Channels or the persona manager role when it runs."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.cogs._persona_fixtures import NOT_PERMITTED, World, make_world, v2_card
from tests.discord_emulator import DiscordEmulator, Upload
from tests.discord_emulator import models as m
from tests.discord_emulator.fixtures import BotRunner

CHANGING: list[tuple[str, str, dict[str, Any]]] = [
    ("persona", "create", {"name": "Intruder", "description": "Should not exist."}),
    ("persona", "import", {"card": Upload("x.json", json.dumps(v2_card("Intruder")).encode())}),
    ("persona", "edit", {"name": "Mira"}),
    ("persona", "use", {"name": "Mira"}),
    ("persona", "off", {}),
    ("persona", "delete", {"name": "Mira"}),
    ("chat", "reset", {}),
    ("chat", "mode", {"mode": "always"}),
    ("chat", "settings", {"temperature": 2.0}),
    ("chat", "greeting", {"index": 1}),
]
LOOKING: list[tuple[str, str, dict[str, Any]]] = [
    ("persona", "list", {}),
    ("persona", "show", {"name": "Mira"}),
    ("persona", "export", {"name": "Mira", "format": "json"}),
    ("chat", "context", {}),
    ("chat", "settings", {}),
    ("chat", "greeting", {}),
]


@pytest.fixture
async def world(emulator: DiscordEmulator, run_bot: BotRunner) -> World:
    w = await make_world(emulator, run_bot)
    await w.say("persona", "create", {"name": "Mira", "description": "An innkeeper.", "greeting": "Welcome."})
    await w.say("persona", "use", {"name": "Mira"})
    await emulator.wait_for_webhook_message(w.lounge)
    return w


async def snapshot(world: World) -> tuple[Any, ...]:
    mira = await world.persona("Mira")
    row = await world.channel_row(world.lounge)
    assert mira is not None and row is not None
    return (
        await world.names(),
        mira.description,
        row.persona_id,
        row.reply_mode,
        dict(row.sampler),
        row.scene_start_message_id,
        row.greeting_index,
        len(world.emu.messages_in(world.lounge)),
    )


async def test_the_groups_are_synced_guild_only_without_default_permissions(world: World) -> None:
    for name in ("persona", "chat"):
        command = world.emu.command(name)
        # Default permissions would hide list/show/context from everyone else (they apply to a whole group).
        assert command.default_member_permissions is None
        assert command.data.get("contexts") == [0]  # guild only
        assert command.data.get("dm_permission") is False
    persona = {o["name"]: o for o in world.emu.command("persona").options}
    assert set(persona) == {"create", "import", "edit", "use", "off", "list", "show", "delete", "export"}
    create = {o["name"]: o for o in persona["create"]["options"]}
    assert create["avatar"]["type"] == 11 and create["description"]["max_length"] == 6000
    assert create["name"]["required"] and not create["nsfw"]["required"]
    assert {o["name"] for o in persona["use"]["options"] if o.get("autocomplete")} == {"name"}
    chat = {o["name"]: o for o in world.emu.command("chat").options}
    assert set(chat) == {"reset", "mode", "settings", "greeting", "context"}
    settings = {o["name"]: o for o in chat["settings"]["options"]}
    assert (settings["temperature"]["min_value"], settings["temperature"]["max_value"]) == (0, 5)
    assert not any(o.get("required") for o in settings.values())


@pytest.mark.parametrize(("group", "sub", "options"), CHANGING, ids=[f"{g}-{s}" for g, s, _ in CHANGING])
async def test_a_plain_member_is_refused_every_changing_command(
    world: World, group: str, sub: str, options: dict[str, Any]
) -> None:
    before = await snapshot(world)
    handle = await world.run(group, sub, options, member=world.alice)
    assert handle.response_type == 4 and handle.ephemeral and handle.content == NOT_PERMITTED
    assert handle.modal is None
    assert await snapshot(world) == before
    assert world.emu.requests_matching("GET", r"^/attachments/") == []  # an import is refused before downloading


@pytest.mark.parametrize(("group", "sub", "options"), LOOKING, ids=[f"{g}-{s}" for g, s, _ in LOOKING])
async def test_a_plain_member_may_look(world: World, group: str, sub: str, options: dict[str, Any]) -> None:
    handle = await world.run(group, sub, options, member=world.alice)
    assert handle.ephemeral and handle.content != NOT_PERMITTED
    assert handle.embeds or handle.attachments or handle.content


async def test_the_persona_manager_role_allows_changes(world: World) -> None:
    role = await world.emu.create_role(world.guild, "Storytellers")
    admin = await world.emu.add_member(world.guild, "owner", permissions=m.MANAGE_GUILD)
    await world.emu.add_member(world.guild, "carol", nick="Carol", roles=(role,))
    carol = world.guild.member("carol")
    assert await world.say("persona", "create", {"name": "Bram", "description": "A smith."}, member=carol) == (
        NOT_PERMITTED
    )
    text = await world.say("admin", "persona-role", {"role": role}, member=admin)
    assert text == f"Members with <@&{role.id}> may now manage personas."
    text = await world.say("persona", "create", {"name": "Bram", "description": "A smith."}, member=carol)
    assert text.startswith("Created **Bram**")
    assert (await world.say("chat", "mode", {"mode": "always"}, member=carol)) == "Reply mode: **always**."


async def test_manage_channels_granted_in_the_channel_only_counts_there(world: World) -> None:
    await world.emu.set_permissions(world.lounge, world.alice, allow=m.MANAGE_CHANNELS)
    assert await world.say("chat", "mode", {"mode": "always"}, member=world.alice) == "Reply mode: **always**."
    assert await world.say("persona", "off", channel=world.general, member=world.alice) == NOT_PERMITTED


async def test_administrators_may_change_everything(world: World) -> None:
    boss = await world.emu.add_member(world.guild, "boss", admin=True)
    assert await world.say("chat", "mode", {"mode": "always"}, member=boss) == "Reply mode: **always**."


async def test_someone_refused_by_the_persona_role_being_removed(world: World) -> None:
    role = await world.emu.create_role(world.guild, "Storytellers")
    admin = await world.emu.add_member(world.guild, "owner", permissions=m.MANAGE_GUILD)
    carol = await world.emu.add_member(world.guild, "carol", roles=(role,))
    await world.say("admin", "persona-role", {"role": role}, member=admin)
    assert (await world.say("chat", "mode", {"mode": "always"}, member=carol)) == "Reply mode: **always**."
    await world.say("admin", "persona-role", {}, member=admin)
    assert await world.say("chat", "mode", {"mode": "mention"}, member=carol) == NOT_PERMITTED
