"""Every command an admin can run, with every option at its maximum: strings as long as Discord allows, full of
role markers, markup, mentions, bidi and zero-width characters and the words Discord forbids in webhook names;
numbers at their limits; hostile files. Then the persona they made chats with a hostile message.

Each command must answer with its result or a clear error (never the "something went wrong" of an unexpected
failure, never an ERROR in the log), and nothing the bot posts may ping anyone.
"""

from __future__ import annotations

import json
import struct
import zlib
from itertools import cycle, islice
from typing import Any

from bot.cards.png import Chunk, encode_png
from bot.client import EXTENSIONS
from bot.prompt.sanitize import count_markers
from bot.storage import guilds as guild_repo
from tests.discord_emulator import DiscordEmulator, Upload
from tests.reliability.helpers import command_leaves
from tests.support.scripted_engine import ScriptedEngine

PIECES = [
    "<|system|>", "Discord", " **bold** ", "@everyone", "\u202e", "<|model|>", "{{char}}", "\n", "@here", "clyde",
    "\u200b", "</s>", "<@{user}>", "<@&{role}>", "||spoiler||", "```", "\u2066", "Seraphina:", "{{user}}", "<START>",
    "# ", "e\u0301", "> quote", "<#{channel}>", "\u00a0",
]  # fmt: skip
UNEXPECTED = "Something went wrong"
STRING, INTEGER, BOOLEAN, USER, CHANNEL, ROLE, MENTIONABLE, NUMBER, ATTACHMENT = 3, 4, 5, 6, 7, 8, 9, 10, 11
# Commands that set things up run first, those that take things away last.
ORDER = {"persona create": 0, "persona import": 1, "persona use": 2, "persona off": 98, "persona delete": 99}


def hostile(length: int, ids: dict[str, int]) -> str:
    """Exactly ``length`` characters of everything that has broken chat bots before (the same for the same length,
    so a name given to /persona create finds that persona again)."""
    pieces = [p.format(**ids) if "{" in p and "{{" not in p else p for p in PIECES]
    text = "".join(islice(cycle(pieces), length))
    return text[:length]


def _bomb_png() -> bytes:
    ihdr = Chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0))
    return encode_png([ihdr, Chunk(b"IDAT", zlib.compress(b"\0" * 100)), Chunk(b"IEND", b"")])


def _value(option: dict[str, Any], ids: dict[str, int], world: dict[str, Any]) -> Any:
    kind = option["type"]
    if option.get("choices"):
        return option["choices"][-1]["value"]
    if kind == STRING:
        return hostile(int(option.get("max_length", 6000)), ids)
    if kind == INTEGER:
        return int(option.get("max_value", 2**53 - 1))
    if kind == NUMBER:
        return float(option.get("max_value", 2**53))
    if kind == BOOLEAN:
        return True
    if kind in (USER, MENTIONABLE):
        return world["alice"]
    if kind == CHANNEL:
        return world["channel"]
    if kind == ROLE:
        return world["role"]
    if kind == ATTACHMENT:
        if option["name"] == "avatar":
            return Upload("avatar.png", _bomb_png(), "image/png")
        text = hostile(6000, ids)
        card = {"spec": "chara_card_v2", "spec_version": "2.0", "data": {
            "name": hostile(80, ids), "description": text, "first_mes": text, "mes_example": text,
            "alternate_greetings": [text] * 50, "tags": [hostile(100, ids)] * 200,
            "character_book": {"entries": [{"keys": [hostile(500, ids)], "content": text}] * 100},
        }}  # fmt: skip
        return Upload("hostile.json", json.dumps(card).encode(), "application/json")
    raise AssertionError(f"no value for option type {kind}")


async def test_every_command_with_hostile_options_at_their_maximum(emulator: DiscordEmulator, run_bot) -> None:
    guild = await emulator.create_guild("Tavern", channels=())
    channel = await emulator.create_channel(guild, "roleplay", nsfw=True)
    alice = await emulator.add_member(guild, "alice", nick="Alice")
    boss = await emulator.add_member(guild, "boss", nick="Boss", admin=True)
    ids = {"user": alice.user.id, "role": guild.id, "channel": channel.id}
    role = await emulator.create_role(guild, hostile(100, ids))
    reply = hostile(1900, ids)
    engine = ScriptedEngine(reply, context_tokens=200_000)  # room for personas with every field at 6000 characters
    bot = await run_bot(engine=engine, start_generation=True, extensions=EXTENSIONS)
    async with bot.db.session() as session:
        await guild_repo.update_guild(session, guild.id, ratelimit_count=0)
    world = {"alice": alice, "channel": channel, "role": role}

    leaves = []
    for command in emulator.all_commands():
        if command.type == 1:
            leaves += [(name, command.name, path, options) for name, path, options in command_leaves(command)]
    leaves.sort(key=lambda leaf: ORDER.get(leaf[0], 50))
    answered: dict[str, list[str]] = {}
    for name, top, path, options in leaves:
        values = {o["name"]: _value(o, ids, world) for o in options}
        handle = await emulator.slash_command(channel, boss, top, values, subcommand=path)
        await handle.wait_response(timeout=15)
        if handle.modal is not None:  # /persona edit: fill every field of the form to its maximum too
            fields = [c for row in handle.modal["components"] for c in _inputs(row)]
            handle = await emulator.submit_modal(
                handle, {f["custom_id"]: hostile(int(f.get("max_length", 4000)), ids) for f in fields}
            )
            await handle.wait_response(timeout=15)
        if handle.deferred:
            await handle.wait_followup(timeout=15)
        texts = [m.content + json.dumps(m.embeds) for m in handle.messages()]
        answered[name] = texts
        assert not any(UNEXPECTED in t for t in texts), f"/{name} failed unexpectedly: {texts}"
        assert all(len(m.content) <= 2000 for m in handle.messages())
        if name == "persona import":
            # The imported card (every field at its maximum, an 80-character hostile name) goes live here, and a
            # hostile message gets a reply. (/persona use itself gets a 6000-character name below: no such persona.)
            use = await emulator.slash_command(channel, boss, "persona", {"name": hostile(80, ids)}, subcommand="use")
            await use.wait_response(timeout=15)
            await use.wait_followup(timeout=15)
            assert "is now active" in use.followups[0].content, use.followups[0].content
            await emulator.user_message(channel, alice, hostile(2000, ids) + f" <@{emulator.bot_user.id}>")
            await emulator.wait_until(
                lambda: any(m.components and m.source == "webhook" for m in emulator.messages_in(channel)),
                "the persona's reply to a hostile message",
                timeout=15,
            )
            # Hundreds of markers were typed into the card and the message; the prompt has only the builder's few
            # turns (system, the example exchange, the conversation, the reply), the rest shown defused.
            prompt = engine.prompts[-1]
            assert count_markers(prompt) <= 6 and prompt.count("‹|system|›") > 50
            assert prompt.startswith("<|system|>") and prompt.rstrip().endswith(":")

    assert "persona create" in answered and "admin filter add" in answered
    assert any("too large to use" in t for t in answered["persona create"])  # the avatar was a bomb
    assert any("Imported" in t for t in answered["persona import"]), answered["persona import"]
    # Nothing the bot sent, in the channel or ephemerally, pinged anyone.
    sent = emulator.sent_messages()
    assert sent
    for message in sent:
        assert not message.mention_everyone and not message.mention_ids and not message.mention_role_ids, message
    for message in emulator.messages_in(channel):
        if message.source == "webhook":
            assert message.username and "discord" not in message.username.lower()


def _inputs(component: dict[str, Any]) -> list[dict[str, Any]]:
    if component.get("type") == 4:
        return [component]
    if component.get("type") == 18:
        return _inputs(component["component"])
    return [c for child in component.get("components", []) for c in _inputs(child)]
