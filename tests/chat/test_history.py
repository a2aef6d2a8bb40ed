from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from bot.chat.history import CachedMessage, HistoryCache, StoreWriter
from bot.storage import Database
from bot.storage import messages as msg_repo
from bot.storage.messages import MessageRecord
from bot.storage.migrate import upgrade_async
from bot.storage.models import MessageKind


def _msg(mid: int, channel: int = 1, content: str = "x") -> CachedMessage:
    return CachedMessage(mid, channel, 7, "Alice", MessageKind.HUMAN, None, content)


def _record(mid: int, content: str = "x") -> MessageRecord:
    return MessageRecord(mid, 1, 1, 7, "Alice", MessageKind.HUMAN, content, datetime.now(UTC))


@given(st.lists(st.tuples(st.sampled_from(["add", "del"]), st.integers(1, 60)), max_size=200))
def test_cache_matches_a_plain_model(ops: list[tuple[str, int]]) -> None:
    cache = HistoryCache(per_channel=1000)
    cache.load(1, [])
    model: dict[int, CachedMessage] = {}
    for op, mid in ops:
        if op == "add":
            cache.add(_msg(mid))
            model[mid] = _msg(mid)
        else:
            cache.delete(1, [mid])
            model.pop(mid, None)
    assert [m.id for m in cache.window(1)] == sorted(model)


def test_window_bounds_and_trimming() -> None:
    cache = HistoryCache(per_channel=5)
    cache.load(1, [_msg(i) for i in range(1, 4)])
    for i in range(4, 10):
        cache.add(_msg(i))
    assert [m.id for m in cache.window(1)] == [5, 6, 7, 8, 9]
    assert [m.id for m in cache.window(1, after_id=6, before_id=9)] == [7, 8]
    assert [m.id for m in cache.window(1, limit=2)] == [8, 9]


def test_changes_before_a_load_are_replayed() -> None:
    cache = HistoryCache()
    cache.add(_msg(10, content="new"))  # arrived while the channel's history was being read
    cache.edit(1, 2, "edited", None)
    cache.delete(1, [3])
    cache.load(1, [_msg(2, content="old"), _msg(3)])  # the database did not have these changes yet
    assert [(m.id, m.content) for m in cache.window(1)] == [(2, "edited"), (10, "new")]


async def test_writer_keeps_order_and_flushes(tmp_path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}"
    await upgrade_async(url)
    db = Database(url)
    writer = StoreWriter(db)
    writer.start()
    try:
        writer.save([_record(1, "a"), _record(2, "b")])
        writer.edit(1, "a2", None)
        writer.delete([2])
        writer.save([_record(2, "b again")])  # a later save after a delete wins, as it arrived later
        await writer.flush()
        async with db.session() as s:
            rows = await msg_repo.latest_messages(s, 1)
        assert [(r.id, r.content) for r in rows] == [(1, "a2"), (2, "b again")]
    finally:
        await writer.close()
        await db.close()
