from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from bot.storage import Database
from bot.storage.migrate import upgrade_async


@pytest.fixture(params=["sqlite", "postgres"])
async def db_url(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[str]:
    """A fresh, empty database URL: a real SQLite file, and PostgreSQL when RPBOT_TEST_POSTGRES_URL is set."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'rpbot.sqlite3'}"
        return
    base = os.environ.get("RPBOT_TEST_POSTGRES_URL")
    if not base:
        pytest.skip("RPBOT_TEST_POSTGRES_URL is not set (CI starts a PostgreSQL server and sets it)")
    from tests.storage.postgres import fresh_postgres_database

    async with fresh_postgres_database(base) as url:
        yield url


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    await upgrade_async(db_url)
    database = Database(db_url)
    try:
        yield database
    finally:
        await database.close()
