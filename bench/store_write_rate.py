"""How fast the store takes the writes the chat makes, on SQLite and on PostgreSQL.

    PYTHONPATH=. python bench/store_write_rate.py [--messages 2000] [--writers 1,16] [--processes 1,2] [--postgres URL]

Three workloads through the real repositories:

* messages: one transaction per stored message (the worst case: every message on its own);
* batched: messages through the chat cog's ``StoreWriter``, which gathers the writes of a few milliseconds into one
  transaction (what ``on_message`` does now);
* replies: the bookkeeping of one persona reply as the chat cog does it: create the generation, record its result
  and message ids (with the previous-reply lookup), read it back to strip the old buttons (three transactions), and
  the trigger and reply messages through the ``StoreWriter``.

``--writers`` concurrent tasks share one ``Database`` (one process); ``--processes 2`` runs that many OS processes
on the same database at once (shards), and reports their total. SQLite runs on a file in a temporary folder;
PostgreSQL on a fresh database created on the server at ``--postgres`` (or $RPBOT_TEST_POSTGRES_URL) and dropped after.
Results depend on the machine, its disk and its load; compare runs on the same one.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from bot.chat.history import StoreWriter
from bot.storage import Database
from bot.storage import generations as gen_repo
from bot.storage import messages as msg_repo
from bot.storage.messages import MessageRecord
from bot.storage.migrate import upgrade_async
from bot.storage.models import GenerationStatus, MessageKind, utcnow

GUILD = 1


def _record(message_id: int, channel_id: int, kind: MessageKind = MessageKind.HUMAN) -> MessageRecord:
    return MessageRecord(
        id=message_id,
        guild_id=GUILD,
        channel_id=channel_id,
        author_id=1000 + message_id % 50,
        author_name="someone",
        kind=kind,
        content="A message of ordinary length, about as long as people write in a roleplay channel. " * 2,
        created_at=datetime.now(UTC),
    )


async def _one_message(db: Database, ids: itertools.count[int], channel_id: int, _writer: StoreWriter) -> None:
    async with db.session() as session:
        await msg_repo.save_message(session, _record(next(ids), channel_id))


async def _one_batched(db: Database, ids: itertools.count[int], channel_id: int, writer: StoreWriter) -> None:
    writer.save([_record(next(ids), channel_id)])
    await asyncio.sleep(0)  # messages arrive one event at a time


async def _one_reply(db: Database, ids: itertools.count[int], channel_id: int, writer: StoreWriter) -> None:
    trigger = next(ids)
    writer.save([_record(trigger, channel_id)])
    async with db.session() as session:
        gen = await gen_repo.create_generation(
            session, guild_id=GUILD, channel_id=channel_id, trigger_message_id=trigger, user_id=1
        )
    reply = next(ids)
    async with db.session() as session:
        row = await gen_repo.get_generation(session, gen.id)
        assert row is not None
        row.status, row.finish_reason, row.prompt_tokens, row.completion_tokens = (
            GenerationStatus.DONE,
            "stop",
            1500,
            120,
        )
        row.sampler, row.alternatives, row.selected_index = {"temperature": 0.8, "max_new_tokens": 300}, ["A reply."], 0
        row.reply_message_ids, row.reply_message_id, row.finished_at = [reply], reply, utcnow()
        await gen_repo.previous_reply(session, channel_id, gen.id)
    async with db.session() as session:
        await gen_repo.get_generation(session, gen.id)
    writer.save([_record(reply, channel_id, MessageKind.PERSONA)])


Work = Callable[[Database, "itertools.count[int]", int, StoreWriter], Awaitable[None]]
WORKLOADS: dict[str, Work] = {"messages": _one_message, "batched": _one_batched, "replies": _one_reply}
UNITS = {"messages": "messages/s (1 transaction each)", "batched": "messages/s (StoreWriter)", "replies": "replies/s"}


async def _run(url: str, workload: str, count: int, writers: int, first_id: int) -> float:
    """Do ``count`` units of work with ``writers`` concurrent tasks; returns units per second."""
    db = Database(url)
    writer = StoreWriter(db)
    writer.start()
    ids = itertools.count(first_id)
    work = WORKLOADS[workload]
    todo = iter(range(count))

    async def worker(channel_id: int) -> None:
        for _ in todo:
            await work(db, ids, channel_id, writer)

    try:
        began = time.perf_counter()
        await asyncio.gather(*(worker(first_id + w) for w in range(writers)))
        await writer.flush()  # done means in the database
        return count / (time.perf_counter() - began)
    finally:
        await writer.close()
        if writer.failed_batches:
            raise RuntimeError(f"{writer.failed_batches} store batches failed")
        await db.close()


def _process(url: str, workload: str, count: int, writers: int, first_id: int, start: float) -> float:
    # Start together, so the processes really contend for the database.
    time.sleep(max(0.0, start - time.time()))
    return asyncio.run(_run(url, workload, count, writers, first_id))


def measure(url: str, workload: str, count: int, writers: int, processes: int, first_id: int) -> float:
    if processes == 1:
        return asyncio.run(_run(url, workload, count, writers, first_id))
    start = time.time() + 1.0
    jobs = [(url, workload, count // processes, writers, first_id + p * 10_000_000, start) for p in range(processes)]
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        return sum(pool.starmap(_process, jobs))


async def _postgres_admin(base: str, statement: str) -> None:
    engine = create_async_engine(base, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await engine.dispose()


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000, help="units of work per measurement")
    parser.add_argument("--writers", default="1,16", help="concurrent writers per process, comma-separated")
    parser.add_argument("--processes", default="1,2", help="processes on one database, comma-separated")
    parser.add_argument("--postgres", default=os.environ.get("RPBOT_TEST_POSTGRES_URL"), help="server URL")
    args = parser.parse_args()
    writers = [int(w) for w in args.writers.split(",")]
    processes = [int(p) for p in args.processes.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        targets = [("SQLite (WAL, file)", f"sqlite+aiosqlite:///{Path(tmp) / 'bench.sqlite3'}")]
        name = f"rpbot_bench_{os.getpid()}"
        if args.postgres:
            asyncio.run(_postgres_admin(args.postgres, f'CREATE DATABASE "{name}"'))
            url = make_url(args.postgres).set(database=name).render_as_string(hide_password=False)
            targets.append(("PostgreSQL (asyncpg)", url))
        first_id = 1
        try:
            for label, url in targets:
                asyncio.run(upgrade_async(url))
                for workload in WORKLOADS:
                    for procs in processes:
                        for w in writers:
                            where = f"{label:22} {workload:8} processes={procs} writers={w:<3}"
                            try:
                                rate = measure(url, workload, args.messages, w, procs, first_id)
                            except Exception as exc:  # a limit reached is a result too (e.g. SQLite's lock)
                                print(f"{where}   FAILED: {type(exc).__name__}: {_first_line(exc)}", flush=True)
                            else:
                                print(f"{where} {rate:8,.0f} {UNITS[workload]}", flush=True)
                            first_id += 100_000_000
        finally:
            if args.postgres:
                asyncio.run(_postgres_admin(args.postgres, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
