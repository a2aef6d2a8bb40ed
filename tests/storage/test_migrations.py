from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from bot.storage.database import create_engine
from bot.storage.migrate import current_revision, downgrade, head_revision, is_at_head, upgrade_async
from bot.storage.models import Base


async def _diff(url: str) -> list:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"compare_type": True}), Base.metadata
                )
            )
    finally:
        await engine.dispose()


async def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
    finally:
        await engine.dispose()


async def test_models_and_migrations_agree(db_url: str) -> None:
    await upgrade_async(db_url)
    assert await _diff(db_url) == []


async def test_upgrade_downgrade_upgrade_round_trip(db_url: str) -> None:
    await upgrade_async(db_url)
    assert (await is_at_head(db_url))[0]
    expected = {t.name for t in Base.metadata.sorted_tables}
    assert expected <= await _tables(db_url)

    import asyncio

    await asyncio.to_thread(downgrade, db_url, "base")
    assert await _tables(db_url) <= {"alembic_version"}
    at_head, current, head = await is_at_head(db_url)
    assert not at_head and current is None and head == head_revision(db_url)

    await upgrade_async(db_url)
    assert expected <= await _tables(db_url)
    assert await _diff(db_url) == []


async def test_sqlite_pragmas_are_set(tmp_path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'sub' / 'db.sqlite3'}"
    await upgrade_async(url)  # also proves the folder is created
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            from sqlalchemy import text

            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
            assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar() >= 5000
            assert await current_revision(engine) == head_revision(url)
    finally:
        await engine.dispose()
