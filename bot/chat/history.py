"""The recent history of active channels, in memory, with its database writes batched behind it.

The message store in the database is the truth; this keeps the last few hundred messages of each active channel
in memory so a reply never waits on the database: storing a message, building a prompt and posting the first
words are pure CPU. Writes (new messages, edits, deletes) go to the database in arrival order, batched a few
milliseconds later; ``flush()`` waits for them (before shutdown, before reading the database directly, before
deleting a user's messages).

When the database cannot take writes (locked past the busy timeout, disk full, connection lost) the changes are
kept, in order, and tried again with a growing pause until it can: nothing said is lost to a passing fault. A change
the database refuses for itself (a constraint) is dropped alone, so it cannot hold up the others.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bot.storage import Database
from bot.storage import messages as msg_repo
from bot.storage.database import describe_error, is_unavailable
from bot.storage.messages import MessageRecord
from bot.storage.models import MessageKind

log = logging.getLogger(__name__)

PER_CHANNEL = 400  # messages kept per channel: more than a 4096-token prompt can hold
MAX_CHANNELS = 2000
WRITE_DELAY = 0.02  # seconds a write waits for others to join its batch
RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)  # pauses between attempts while the database refuses writes; the last repeats
MAX_HELD_OPS = 100_000  # changes kept while it does (tens of MB at most); beyond that the oldest are dropped
CLOSE_TIMEOUT = 10.0  # seconds close() waits for the last writes


@dataclass(slots=True)
class CachedMessage:
    """A stored message as the prompt builder reads it (the attributes of ``StoredMessage``)."""

    id: int
    channel_id: int
    author_id: int
    author_name: str
    kind: MessageKind
    persona_id: int | None
    content: str
    attachments: list[dict[str, Any]] = field(default_factory=list)
    created_at: datetime | None = None
    edited_at: datetime | None = None

    @classmethod
    def from_record(cls, r: MessageRecord) -> CachedMessage:
        return cls(
            r.id,
            r.channel_id,
            r.author_id,
            r.author_name,
            r.kind,
            r.persona_id,
            r.content,
            list(r.attachments),
            r.created_at,
            r.edited_at,
        )

    @classmethod
    def from_row(cls, row: Any, channel_id: int) -> CachedMessage:
        return cls(
            row.id,
            channel_id,
            row.author_id,
            row.author_name,
            MessageKind(row.kind),
            row.persona_id,
            row.content,
            list(row.attachments or []),
            row.created_at,
            row.edited_at,
        )


class HistoryCache:
    """Recent messages per channel, kept sorted by id (Discord ids grow with time)."""

    def __init__(self, per_channel: int = PER_CHANNEL, max_channels: int = MAX_CHANNELS) -> None:
        self.per_channel = per_channel
        self.max_channels = max_channels
        self._channels: OrderedDict[int, list[CachedMessage]] = OrderedDict()
        self._ids: OrderedDict[int, list[int]] = OrderedDict()
        # Changes to channels not loaded yet, replayed by load(): a load reads the database, which may not have
        # the newest writes, and must not miss what arrived meanwhile.
        self._journal: dict[int, list[tuple[str, Any]]] = {}

    def loaded(self, channel_id: int) -> bool:
        return channel_id in self._channels

    def load(self, channel_id: int, messages: Iterable[CachedMessage]) -> None:
        ordered = sorted(messages, key=lambda m: m.id)[-self.per_channel :]
        self._channels[channel_id] = ordered
        self._ids[channel_id] = [m.id for m in ordered]
        self._channels.move_to_end(channel_id)
        for op, arg in self._journal.pop(channel_id, []):
            if op == "add":
                self.add(arg)
            elif op == "edit":
                self.edit(channel_id, *arg)
            else:
                self.delete(channel_id, arg)
        while len(self._channels) > self.max_channels:
            old, _ = self._channels.popitem(last=False)
            self._ids.pop(old, None)

    def _note(self, channel_id: int, op: str, arg: Any) -> None:
        journal = self._journal.setdefault(channel_id, [])
        journal.append((op, arg))
        if len(journal) > self.per_channel * 2:
            del journal[: len(journal) - self.per_channel * 2]
        while len(self._journal) > self.max_channels:
            self._journal.pop(next(iter(self._journal)))

    def add(self, message: CachedMessage) -> None:
        """Add or replace a message (only for channels whose history is loaded; others load it from the store)."""
        msgs = self._channels.get(message.channel_id)
        if msgs is None:
            self._note(message.channel_id, "add", message)
            return
        ids = self._ids[message.channel_id]
        pos = bisect.bisect_left(ids, message.id)
        if pos < len(ids) and ids[pos] == message.id:
            msgs[pos] = message
            return
        msgs.insert(pos, message)
        ids.insert(pos, message.id)
        if len(msgs) > self.per_channel:
            del msgs[0]
            del ids[0]

    def edit(self, channel_id: int, message_id: int, content: str, edited_at: datetime | None) -> None:
        if channel_id not in self._channels:
            self._note(channel_id, "edit", (message_id, content, edited_at))
            return
        msg = self._find(channel_id, message_id)
        if msg is not None:
            msg.content = content
            msg.edited_at = edited_at

    def get(self, channel_id: int, message_id: int) -> CachedMessage | None:
        return self._find(channel_id, message_id)

    def delete(self, channel_id: int, message_ids: Iterable[int]) -> None:
        msgs = self._channels.get(channel_id)
        if msgs is None:
            self._note(channel_id, "delete", list(message_ids))
            return
        gone = set(message_ids)
        kept = [m for m in msgs if m.id not in gone]
        self._channels[channel_id] = kept
        self._ids[channel_id] = [m.id for m in kept]

    def drop(self, channel_id: int | None = None) -> None:
        """Forget one channel's history, or all (after bulk deletes in the database)."""
        if channel_id is None:
            self._channels.clear()
            self._ids.clear()
            self._journal.clear()
        else:
            self._channels.pop(channel_id, None)
            self._ids.pop(channel_id, None)
            self._journal.pop(channel_id, None)

    def window(
        self, channel_id: int, *, after_id: int | None = None, before_id: int | None = None, limit: int = PER_CHANNEL
    ) -> list[CachedMessage]:
        msgs = self._channels.get(channel_id, [])
        ids = self._ids.get(channel_id, [])
        start = bisect.bisect_right(ids, after_id) if after_id is not None else 0
        end = bisect.bisect_left(ids, before_id) if before_id is not None else len(ids)
        if channel_id in self._channels:
            self._channels.move_to_end(channel_id)
        return msgs[max(start, end - limit) : end]

    def _find(self, channel_id: int, message_id: int) -> CachedMessage | None:
        ids = self._ids.get(channel_id)
        if not ids:
            return None
        pos = bisect.bisect_left(ids, message_id)
        if pos < len(ids) and ids[pos] == message_id:
            return self._channels[channel_id][pos]
        return None


Op = tuple[str, Any]


class StoreWriter:
    """Writes store changes to the database in arrival order, in batches, off the reply path."""

    def __init__(self, db: Database, *, delay: float = WRITE_DELAY) -> None:
        self.db = db
        self.delay = delay
        self._ops: list[Op] = []
        self._wake = asyncio.Event()
        # flush() waits for the changes pushed before it, not for a quiet moment (under load there is none).
        self._pushed = 0  # changes pushed so far
        self._done = 0  # changes written (or given up on) so far; they are done in order
        self._progress = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.failed_batches = 0  # attempts the database refused (each kept and tried again)
        self.dropped = 0  # changes given up on (refused for themselves, or too many held back)
        self._failing = 0  # consecutive refused attempts

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="rpbot-store-writer")

    def save(self, records: Sequence[MessageRecord]) -> None:
        self._push(("save", list(records)))

    def edit(self, message_id: int, content: str, edited_at: datetime | None) -> None:
        self._push(("edit", (message_id, content, edited_at)))

    def delete(self, message_ids: Sequence[int]) -> None:
        self._push(("delete", list(message_ids)))

    def run(self, action: Callable[[Any], Awaitable[Any]]) -> None:
        """Run ``action(session)`` in order with the other writes (e.g. a bulk delete)."""
        self._push(("call", action))

    def _push(self, op: Op) -> None:
        self._ops.append(op)
        self._pushed += 1
        self._wake.set()
        if self._task is None:
            self.start()

    @property
    def pending(self) -> int:
        """Changes not yet in the database."""
        return self._pushed - self._done

    async def flush(self, within: float | None = None) -> bool:
        """Wait until every change pushed so far is in the database; False if ``within`` seconds ran out first."""
        target = self._pushed
        if self._done >= target:
            return True
        self._wake.set()

        async def reached() -> None:
            while self._done < target:
                await self._progress.wait()

        try:
            await asyncio.wait_for(reached(), within)
        except TimeoutError:
            return False
        return True

    def _advance(self, count: int) -> None:
        if count:
            self._done += count
            progress, self._progress = self._progress, asyncio.Event()
            progress.set()

    async def close(self, within: float = CLOSE_TIMEOUT) -> None:
        """Write what is pending (waiting at most ``within`` seconds) and stop."""
        if not await self.flush(within):
            log.error(
                "shutting down with %d message-store changes the database would not take; they are lost (the next "
                "start reads recent messages back from Discord)",
                self.pending,
            )
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.delay)
            self._wake.clear()
            ops, self._ops = self._ops, []
            held = await self._write(ops) if ops else []
            self._advance(len(ops) - len(held))
            if held:
                # Ahead of what arrived meanwhile, so the order of changes holds; then a pause before trying again.
                self._ops[:0] = held
                self._limit_held()
                await asyncio.sleep(RETRY_DELAYS[min(self._failing, len(RETRY_DELAYS)) - 1])
                self._wake.set()

    async def _write(self, ops: list[Op]) -> list[Op]:
        """Write a batch; returns the changes to try again (none when written or given up on)."""
        try:
            await self._apply(ops)
        except Exception as exc:
            if is_unavailable(exc):
                return self._refused(ops, exc)
            # The database refuses something in the batch itself: one change at a time, so only that one is lost.
            return await self._write_one_by_one(ops)
        if self._failing:
            log.warning("the message store is written again after %d refused attempts; nothing was lost", self._failing)
            self._failing = 0
        return []

    async def _write_one_by_one(self, ops: list[Op]) -> list[Op]:
        for index, (kind, arg) in enumerate(ops):
            # A save of many messages (a backfill) goes one message at a time, so a refused one takes no others.
            parts: list[Op] = [("save", [record]) for record in arg] if kind == "save" else [(kind, arg)]
            for at, part in enumerate(parts):
                try:
                    await self._apply([part])
                except Exception as exc:
                    if is_unavailable(exc):
                        rest: list[Op] = [("save", arg[at:])] if kind == "save" else [(kind, arg)]
                        return self._refused(rest + ops[index + 1 :], exc)
                    self.dropped += 1
                    log.error("dropped a message-store change (%s) the database refuses: %s", kind, describe_error(exc))
        return []

    def _refused(self, ops: list[Op], exc: BaseException) -> list[Op]:
        self.failed_batches += 1
        self._failing += 1
        if self._failing == 1 or self._failing % 20 == 0:
            # One line, no values (they are what people said): the reason and what happens next.
            log.error(
                "could not write %d message-store changes: %s; keeping them and trying again (attempt %d)",
                len(ops),
                describe_error(exc),
                self._failing,
            )
        return ops

    def _limit_held(self) -> None:
        excess = len(self._ops) - MAX_HELD_OPS
        if excess > 0:
            del self._ops[:excess]
            self.dropped += excess
            self._advance(excess)
            log.error("the database has refused writes for a long time: dropped the %d oldest store changes", excess)

    async def _apply(self, ops: list[Op]) -> None:
        async with self.db.session() as session:
            pending: list[MessageRecord] = []
            for kind, arg in ops:
                if kind == "save":
                    pending.extend(arg)
                    continue
                if pending:
                    await msg_repo.save_messages(session, pending)
                    pending = []
                if kind == "edit":
                    await msg_repo.edit_message(session, *arg)
                elif kind == "delete":
                    await msg_repo.delete_messages(session, arg)
                else:
                    await arg(session)
            if pending:
                await msg_repo.save_messages(session, pending)
