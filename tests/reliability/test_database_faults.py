"""The database misbehaves: another writer holds SQLite's lock, briefly or past the busy timeout, and the disk
fills up. The bot says what is wrong, keeps running, loses nothing it was told, and the file stays intact."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import event

import bot.storage.database as database
from bot.storage.database import sqlite_path
from bot.storage.models import GenerationStatus
from tests.cogs._world import eventually, make_world
from tests.discord_emulator import DiscordEmulator
from tests.reliability.helpers import (
    assert_store_matches_discord,
    integrity_check,
    persona_messages,
    replied,
    settled,
    stored,
)


def _db_file(bot) -> Path:  # type: ignore[no-untyped-def]
    path = sqlite_path(bot.db.url)
    assert path is not None
    return path


async def _hold_write_lock(path: Path, seconds: float) -> None:
    """Another process's writer: holds SQLite's write lock for ``seconds``."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        await asyncio.sleep(seconds)
        conn.execute("COMMIT")
    finally:
        conn.close()


async def test_a_writer_holding_the_lock_briefly_only_delays_the_bot(emulator: DiscordEmulator, run_bot) -> None:
    w = await make_world(emulator, run_bot, replies="Patience is a virtue.")
    lock = asyncio.create_task(_hold_write_lock(_db_file(w.bot), 1.0))
    await asyncio.sleep(0.1)
    said = [await emulator.user_message(w.channel, w.bob, f"line {i}") for i in range(5)]
    await emulator.user_message(w.channel, w.alice, "Seraphina, wait for the lock")
    await lock
    await replied(emulator, w.channel, "Patience is a virtue.")
    [gen] = await settled(w.bot)
    assert gen.status is GenerationStatus.DONE
    assert {m.id for m in said} <= {r.id for r in await stored(w.bot, w.channel.id)}
    await assert_store_matches_discord(emulator, w.bot, w.channel)
    assert integrity_check(_db_file(w.bot)) == "ok"


async def test_a_lock_held_past_the_busy_timeout_loses_nothing(
    emulator: DiscordEmulator, run_bot, error_log_guard, monkeypatch: pytest.MonkeyPatch
) -> None:
    error_log_guard.allow("database is locked")
    monkeypatch.setattr(database, "SQLITE_BUSY_TIMEOUT_MS", 100)
    w = await make_world(emulator, run_bot, replies=["Warm.", "Shown without buttons.", "Back in."])
    await emulator.user_message(w.channel, w.alice, "Seraphina, hello")  # loads the channel's history, guild row
    await emulator.wait_until(lambda: any(p.components for p in persona_messages(emulator, w.channel)), "warm-up")
    await settled(w.bot)

    lock = asyncio.create_task(_hold_write_lock(_db_file(w.bot), 2.0))
    await asyncio.sleep(0.1)
    said = [await emulator.user_message(w.channel, w.bob, f"line {i}") for i in range(5)]
    # The reply streams from memory, but its generation row cannot be written: it is shown in full, without the
    # buttons that need the row, and kept for the store.
    await emulator.user_message(w.channel, w.alice, "Seraphina, are you there?")
    locked = await emulator.wait_until(
        lambda: next((p for p in persona_messages(emulator, w.channel) if p.content == "Shown without buttons."), None),
        "the reply during the lock",
    )
    await emulator.wait_until(lambda: not locked.components and not locked.content.endswith("…"), "no buttons")
    await lock
    await emulator.user_message(w.channel, w.alice, "Seraphina, and now?")
    await replied(emulator, w.channel, "Back in.", timeout=10)
    gens = await settled(w.bot)
    assert [g.status for g in gens] == [GenerationStatus.DONE] * 2  # the row of the locked-out one never came

    async def all_stored() -> bool:
        rows = {r.id for r in await stored(w.bot, w.channel.id)}
        return {locked.id, *(m.id for m in said)} <= rows

    await eventually(all_stored, "the messages and the reply from the lock, written once it was released", 10)
    await assert_store_matches_discord(emulator, w.bot, w.channel)
    assert integrity_check(_db_file(w.bot)) == "ok"


async def test_a_lock_on_a_guild_never_configured_still_lets_the_bot_answer(
    emulator: DiscordEmulator, run_bot, error_log_guard, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guild has no settings row yet. Deciding whether to answer only reads (the defaults apply), and reads go on
    beside another writer's lock: the trigger is answered; only the reply's record waits."""
    error_log_guard.allow("database is locked")
    monkeypatch.setattr(database, "SQLITE_BUSY_TIMEOUT_MS", 100)
    w = await make_world(emulator, run_bot, replies="Still here.")
    lock = asyncio.create_task(_hold_write_lock(_db_file(w.bot), 1.5))
    await asyncio.sleep(0.1)
    asked = await emulator.user_message(w.channel, w.alice, "Seraphina, are you there?")
    first = await emulator.wait_until(
        lambda: next((p for p in persona_messages(emulator, w.channel) if p.content == "Still here."), None),
        "the reply during the lock",
    )
    await lock
    await emulator.user_message(w.channel, w.alice, "Seraphina, and now?")
    second = await replied(emulator, w.channel, "Still here.", timeout=10)
    assert second.id != first.id and not first.components  # the first has no record, so no buttons
    [gen] = await settled(w.bot)
    assert gen.status is GenerationStatus.DONE

    async def all_stored() -> bool:
        return {asked.id, first.id} <= {r.id for r in await stored(w.bot, w.channel.id)}

    await eventually(all_stored, "the trigger and its reply from the lock in the store", timeout=10)
    await assert_store_matches_discord(emulator, w.bot, w.channel)


def _limit_pages(bot, extra_pages: int | None) -> None:  # type: ignore[no-untyped-def]
    """Make the database file unable to grow beyond its size now (plus ``extra_pages``): SQLITE_FULL, like a full
    disk. ``None`` lifts the limit."""
    engine = bot.db.engine.sync_engine

    def on_connect(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA page_count")
        pages = cursor.fetchone()[0]
        cursor.execute(f"PRAGMA max_page_count = {pages + extra_pages if extra_pages is not None else 1073741823}")
        cursor.close()

    for fn in list(getattr(bot, "_page_limiters", [])):
        event.remove(engine, "connect", fn)
    event.listen(engine, "connect", on_connect)
    bot._page_limiters = [on_connect]


async def test_a_full_disk_is_a_clear_error_and_nothing_is_lost_once_space_returns(
    emulator: DiscordEmulator, run_bot, error_log_guard, caplog: pytest.LogCaptureFixture
) -> None:
    error_log_guard.allow("database or disk is full")
    w = await make_world(emulator, run_bot, replies=["x" * 1500, "Space again."])
    warm = await emulator.user_message(w.channel, w.bob, "warming up the history")

    async def warmed() -> bool:
        return warm.id in {r.id for r in await stored(w.bot, w.channel.id)}

    await eventually(warmed, "the first message stored")
    _limit_pages(w.bot, 0)
    await w.bot.db.engine.dispose()  # new connections get the limit
    said = [await emulator.user_message(w.channel, w.bob, "y" * 1900 + str(i)) for i in range(20)]
    await emulator.user_message(w.channel, w.alice, "Seraphina, is the disk full?")
    await emulator.wait_until(
        lambda: any("database or disk is full" in r.getMessage() for r in error_log_guard.records),
        "the full disk reported",
        timeout=10,
    )
    await asyncio.sleep(1.0)
    assert integrity_check(_db_file(w.bot)) == "ok"
    _limit_pages(w.bot, None)
    await w.bot.db.engine.dispose()
    await emulator.user_message(w.channel, w.alice, "Seraphina, and now?")
    await replied(emulator, w.channel, "Space again.", timeout=15)

    async def all_stored() -> bool:
        return {m.id for m in said} <= {r.id for r in await stored(w.bot, w.channel.id)}

    await eventually(all_stored, "the messages said while the disk was full", timeout=15)
    # The reply asked for while the disk was full waited for the store (its history was not loaded yet) and came.
    # Both triggers run once the store is written again, side by side: either may finish first.
    await emulator.wait_until(
        lambda: sorted(p.content for p in persona_messages(emulator, w.channel)) == ["Space again.", "x" * 1500],
        "both replies in full",
        timeout=15,
    )
    await assert_store_matches_discord(emulator, w.bot, w.channel)
    assert integrity_check(_db_file(w.bot)) == "ok"
