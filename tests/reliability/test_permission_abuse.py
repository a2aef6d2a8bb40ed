"""A normal member tries every staff command, and a persona manager every admin command: each is refused with a
message saying what it needs, and nothing changes. The list comes from the commands the bot synced, so a new
command is covered (as staff-only) without anyone adding it here; one meant for everyone must be named in
``EVERYONE``.

Discord's ``default_member_permissions`` is only a default that server admins can change (and the emulator does
not enforce it), so this tests the checks the bot makes itself when a command runs.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import func, select

from bot.client import EXTENSIONS
from bot.storage import channels as channel_repo
from bot.storage import guilds as guild_repo
from bot.storage import personas as persona_repo
from bot.storage.models import AuditEntry, BlockedUser, GuildSettings, OutputFilter, Persona
from tests.discord_emulator import DiscordEmulator, Upload
from tests.discord_emulator import models as m
from tests.reliability.helpers import command_leaves, replied
from tests.support.scripted_engine import ScriptedEngine

# Commands (and option sets) every member may use; anything synced and not listed here must refuse a normal member.
EVERYONE = {
    "forget-me",  # about oneself
    "persona list",
    "persona show",
    "persona export",
    "chat context",
    "chat settings",  # without options: shows them (with options: staff, tried below)
    "chat greeting",  # without an index: lists them (with one: staff, tried below)
}
REFUSAL = ("You need the", "You cannot use")

CHAT_INPUT = 1
STRING, INTEGER, BOOLEAN, USER, CHANNEL, ROLE, MENTIONABLE, NUMBER, ATTACHMENT = 3, 4, 5, 6, 7, 8, 9, 10, 11


def _value(option: dict[str, Any], world: dict[str, Any]) -> Any:
    """A valid value for an option, so a refusal is about permission and not about input."""
    kind = option["type"]
    if option.get("choices"):
        return option["choices"][0]["value"]
    if kind == STRING:
        return "Seraphina" if option["name"] in ("name", "persona") else "forbidden"
    if kind in (INTEGER, NUMBER):
        low = option.get("min_value", 1)
        high = option.get("max_value", low + 1)
        return max(low, min(high, 2)) if kind == INTEGER else float(max(low, min(high, 1.0)))
    if kind == BOOLEAN:
        return False
    if kind in (USER, MENTIONABLE):
        return world["alice"]
    if kind == CHANNEL:
        return world["channel"]
    if kind == ROLE:
        return world["role"]
    if kind == ATTACHMENT:
        card = {"spec": "chara_card_v2", "spec_version": "2.0", "data": {"name": "Intruder", "description": "x"}}
        return Upload("intruder.json", json.dumps(card).encode(), "application/json")
    raise AssertionError(f"no value for option type {kind} ({option['name']})")


async def _state(bot: Any) -> dict[str, Any]:
    """What a staff command could change, in one comparable snapshot."""
    async with bot.db.session() as session:
        counts = {
            model.__name__: await session.scalar(select(func.count()).select_from(model))
            for model in (AuditEntry, BlockedUser, OutputFilter, Persona)
        }
        guild = (await session.scalars(select(GuildSettings))).all()
        channel = await channel_repo.get_channel(session, bot._test_channel_id)
        personas = [(p.name, p.description, p.greeting) for p in (await session.scalars(select(Persona))).all()]
    return {
        "counts": counts,
        "guild": [(g.paused, g.nsfw_only, g.ratelimit_count, g.persona_manager_role_id) for g in guild],
        "channel": (channel.persona_id, channel.reply_mode, channel.sampler, channel.greeting_index),
        "personas": personas,
    }


def _refused_to(command: Any, name: str, values: dict[str, Any], permissions: int) -> bool:
    """Whether a member with ``permissions`` (beyond @everyone's) must be refused this command."""
    if permissions == 0:
        return name not in EVERYONE or (name in ("chat settings", "chat greeting") and bool(values))
    # Staff below Manage Server: refused exactly what declares permissions they lack.
    needed = int(command.default_member_permissions or 0)
    return bool(needed & ~permissions)


@pytest.mark.parametrize(
    "permissions", [0, m.MANAGE_CHANNELS | m.MANAGE_MESSAGES], ids=["normal member", "persona manager"]
)
async def test_members_are_refused_every_command_above_their_rank(
    emulator: DiscordEmulator, run_bot, subtests: pytest.Subtests, permissions: int
) -> None:
    guild = await emulator.create_guild("Tavern", channels=())
    channel = await emulator.create_channel(guild, "roleplay", nsfw=True)
    alice = await emulator.add_member(guild, "alice", nick="Alice")
    eve = await emulator.add_member(guild, "eve", nick="Eve", permissions=permissions or None)
    role = await emulator.create_role(guild, "regulars")
    bot = await run_bot(engine=ScriptedEngine("A reply."), start_generation=True, extensions=EXTENSIONS)
    async with bot.db.session() as session:
        persona = await persona_repo.create_persona(
            session,
            guild.id,
            "Seraphina",
            description="A forest guardian.",
            greeting="Welcome.",
            alternate_greetings=["Hello again.", "Back so soon?"],
        )
        await channel_repo.set_active_persona(session, guild.id, channel.id, persona.id)
        await guild_repo.get_guild(session, guild.id)  # its settings row, as any use of the bot creates it
    bot._test_channel_id = channel.id
    await emulator.user_message(channel, alice, "Seraphina, hello")
    reply = await replied(emulator, channel, "A reply.")
    world = {"alice": alice, "channel": channel, "role": role}
    before = await _state(bot)

    tried: list[str] = []
    commands = emulator.all_commands()
    assert commands, "the bot synced no commands"
    for command in commands:
        if command.type == 3:  # message command: "Reply info"
            if not _refused_to(command, command.name, {}, permissions):
                continue
            with subtests.test(command=command.name):
                handle = await emulator.message_command(channel, eve, command.name, reply)
                await handle.wait_response()
                assert handle.ephemeral and handle.content.startswith(REFUSAL), handle.content
                tried.append(command.name)
            continue
        assert command.type == CHAT_INPUT, f"a new kind of command: {command.data}"
        for name, path, options in command_leaves(command):
            values = {o["name"]: _value(o, world) for o in options}
            if not _refused_to(command, name, values, permissions):
                continue
            with subtests.test(command=name):
                handle = await emulator.slash_command(channel, eve, command.name, values, subcommand=path)
                await handle.wait_response()
                if handle.deferred:
                    await handle.wait_followup()
                messages = [m.content for m in handle.messages()]
                assert handle.ephemeral, f"/{name} answered in public: {messages}"
                assert any(text.startswith(REFUSAL) for text in messages), f"/{name} was not refused: {messages}"
                assert handle.modal is None, f"/{name} opened a form for a normal member"
                tried.append(name)
    assert await _state(bot) == before, "a refused command changed something"
    # Sanity: the staff commands the README names were among those tried.
    expected = ["admin block", "admin pause", "admin filter add", "admin forget", "admin persona-role"]
    if permissions == 0:
        expected += ["persona create", "persona import", "persona delete", "persona use", "chat reset", "Reply info"]
    assert set(expected) <= set(tried), set(expected) - set(tried)
