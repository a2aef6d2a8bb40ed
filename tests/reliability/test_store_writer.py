"""The message store's write-behind under faults, on a real SQLite file: changes the database refuses are kept and
written in order once it takes them again, a change it refuses for itself is dropped alone, and flush() is not
starved by a steady stream of later writes."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

import bot.chat.history as history
import bot.storage.database as database
from bot.chat.history import StoreWriter
from bot.storage import Database
from bot.storage import messages as msg_repo
from bot.storage.messages import MessageRecord
from bot.storage.migrate import upgrade_async
from bot.storage.models import MessageKind
from tests.reliability.helpers import integrity_check


def _record(mid: int, content: str = "x") -> MessageRecord:
    return MessageRecord(mid, 1, 1, 7, "Alice", MessageKind.HUMAN, content, datetime.now(UTC))


@pytest.fixture
async def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Database]:
    monkeypatch.setattr(database, "SQLITE_BUSY_TIMEOUT_MS", 50)
    monkeypatch.setattr(history, "RETRY_DELAYS", (0.05,))
    url = f"sqlite+aiosqlite:///{tmp_path / 'rpbot.sqlite3'}"
    await upgrade_async(url)
    db = Database(url)
    try:
        yield db
    finally:
        await db.close()


async def _contents(db: Database) -> dict[int, str]:
    async with db.session() as session:
        return {m.id: m.content for m in await msg_repo.latest_messages(session, 1, limit=10_000)}


async def test_refused_writes_are_kept_and_land_in_order(db: Database, caplog: pytest.LogCaptureFixture) -> None:
    path = database.sqlite_path(db.url)
    writer = StoreWriter(db)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock past the busy timeout
    writer.save([_record(1, "first"), _record(2, "second")])
    writer.edit(1, "first, edited", None)
    writer.delete([2])
    writer.save([_record(3, "third")])
    await asyncio.sleep(0.3)
    assert writer.failed_batches >= 1 and writer.pending > 0
    blocker.execute("COMMIT")
    blocker.close()
    assert await writer.flush(within=10)
    assert await _contents(db) == {1: "first, edited", 3: "third"}
    assert writer.dropped == 0
    refused = [r for r in caplog.records if "could not write" in r.getMessage()]
    assert refused and "database is locked" in refused[0].getMessage()
    assert "first" not in refused[0].getMessage()  # what people said never reaches the log
    await writer.close()
    assert integrity_check(path) == "ok"


async def test_a_change_the_database_refuses_is_dropped_alone(db: Database, caplog: pytest.LogCaptureFixture) -> None:
    writer = StoreWriter(db)
    # A message without an author breaks a NOT NULL constraint: the database refuses that one, and only it.
    broken = dataclasses.replace(_record(2, "refused"), author_id=None)
    writer.save([_record(1, "kept"), broken, _record(3, "kept too")])
    writer.edit(1, "kept, edited", None)
    with caplog.at_level(logging.ERROR):
        assert await writer.flush(within=10)
    assert await _contents(db) == {1: "kept, edited", 3: "kept too"}
    assert writer.dropped == 1
    assert any("dropped a message-store change (save)" in r.getMessage() for r in caplog.records)
    await writer.close()


async def test_flush_waits_for_earlier_changes_only(db: Database) -> None:
    writer = StoreWriter(db)
    stop = asyncio.Event()

    async def chatter() -> None:  # a busy server: a change every few milliseconds, never a quiet moment
        mid = 1000
        while not stop.is_set():
            writer.save([_record(mid)])
            mid += 1
            await asyncio.sleep(0.003)

    busy = asyncio.create_task(chatter())
    await asyncio.sleep(0.1)
    writer.save([_record(1, "mine")])
    try:
        assert await writer.flush(within=10), "flush() waited for a quiet moment that never came"
        assert (await _contents(db))[1] == "mine"
    finally:
        stop.set()
        await busy
    await writer.close()


async def test_close_gives_up_on_a_dead_database_after_its_wait(db: Database, caplog: pytest.LogCaptureFixture) -> None:
    path = database.sqlite_path(db.url)
    writer = StoreWriter(db)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        writer.save([_record(1)])
        await writer.close(within=0.5)  # returns: a shutdown is never held hostage by the database
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    assert any("they are lost" in r.getMessage() for r in caplog.records)
