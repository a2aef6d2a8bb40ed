"""Shared checks for the reliability tests: what "nothing lost, nothing doubled" means in the store and in Discord."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import select

from bot.storage import generations as gen_repo
from bot.storage import messages as msg_repo
from bot.storage.models import Generation, GenerationStatus, StoredMessage
from tests.discord_emulator import DiscordEmulator

FINAL = GenerationStatus.DONE, GenerationStatus.FAILED, GenerationStatus.CANCELLED
WEBHOOK_POST = r"/webhooks/\d+/[^/]+"
WEBHOOK_EDIT = r"/webhooks/\d+/[^/]+/messages/\d+"


def button(message: Any, label_part: str) -> str:
    """The custom id of the enabled button whose label or emoji contains ``label_part``."""
    for row in message.components:
        for comp in row.get("components", []):
            text = f"{comp.get('label', '')}{comp.get('emoji', {}).get('name', '')}"
            if label_part in text and not comp.get("disabled"):
                return comp["custom_id"]
    raise AssertionError(f"no enabled button {label_part!r} in {message.components}")


def persona_messages(emu: DiscordEmulator, channel: Any) -> list[Any]:
    """Visible persona messages (webhook or fallback), oldest first."""
    return [
        m
        for m in emu.messages_in(channel)
        if m.source == "webhook" or (m.source == "bot" and m.content.startswith("**"))
    ]


async def replied(emu: DiscordEmulator, channel: Any, text: str, timeout: float | None = None) -> Any:
    """Wait for the persona message that shows ``text`` in full (a fallback message ends with it) with its buttons."""
    return await emu.wait_until(
        lambda: next((p for p in persona_messages(emu, channel) if p.content.endswith(text) and p.components), None),
        f"the reply {text[:40]!r} with buttons",
        timeout,
    )


async def generations(bot: Any, channel_id: int | None = None) -> list[Generation]:
    async with bot.db.session() as session:
        stmt = select(Generation).order_by(Generation.id)
        if channel_id is not None:
            stmt = stmt.where(Generation.channel_id == channel_id)
        return list((await session.scalars(stmt)).all())


async def stored(bot: Any, channel_id: int) -> list[StoredMessage]:
    async with bot.db.session() as session:
        return await msg_repo.latest_messages(session, channel_id, limit=10_000)


async def settled(bot: Any, timeout: float = 10.0) -> list[Generation]:
    """Wait until every generation has ended and its row is written (the reply shows before its row is updated),
    and every pending store write is in the database. Returns the generations."""
    from tests.cogs._world import eventually

    async def ended() -> list[Generation] | None:
        gens = await generations(bot)
        return gens if all(g.status in FINAL for g in gens) else None

    gens = await eventually(ended, "every generation to end", timeout) if await generations(bot) else []
    chat = bot.get_cog("ChatCog")
    if chat is not None:
        await chat.writer.flush()
    return gens


async def assert_store_matches_discord(emu: DiscordEmulator, bot: Any, channel: Any) -> None:
    """Nothing lost, nothing doubled: each visible user message is stored once, each stored persona message is
    visible with the same text, and every generation has ended."""
    await settled(bot)
    rows = await stored(bot, channel.id)
    by_id = {r.id: r for r in rows}
    visible = {m.id: m for m in emu.messages_in(channel)}
    for msg in visible.values():
        if msg.source == "user":
            assert msg.id in by_id, f"user message {msg.id} {msg.content!r} is not in the store"
            assert by_id[msg.id].content == msg.content
    for row in rows:
        if row.persona_id is not None:
            assert row.id in visible, f"stored persona message {row.id} {row.content!r} is not in Discord"
            shown = visible[row.id].content
            assert shown == row.content or shown.endswith(": " + row.content), (shown, row.content)
    async with bot.db.session() as session:
        assert not await gen_repo.unfinished(session)


def command_leaves(command: Any) -> list[tuple[str, tuple[str, ...], list[dict[str, Any]]]]:
    """(display name, subcommand path, options) for every runnable (sub)command of a synced chat command."""
    out = []

    def walk(path: tuple[str, ...], options: list[dict[str, Any]]) -> None:
        nested = [o for o in options if o.get("type") in (1, 2)]  # sub-command, sub-command group
        if not nested:
            out.append((" ".join((command.name, *path)), path, options))
        for option in nested:
            walk((*path, option["name"]), list(option.get("options") or []))

    walk((), command.options)
    return out


def integrity_check(path: Path) -> str:
    """SQLite's own verdict on the database file ("ok" when intact)."""
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
