"""Alembic, driven from code: upgrade to head, and ask whether a database is at head."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.storage.database import create_engine

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_migrations_dir()))
    # Alembic's ini interpolation treats % specially; URLs may hold %-escapes in passwords.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logging"] = False
    return cfg


def _migrations_dir() -> Path:
    if (MIGRATIONS_DIR / "env.py").is_file():
        return MIGRATIONS_DIR
    import migrations  # installed as a package next to bot/

    return Path(migrations.__file__).resolve().parent


def head_revision(url: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def upgrade(url: str, revision: str = "head") -> None:
    """Upgrade the schema (blocking; runs its own event loop inside Alembic's env)."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


async def upgrade_async(url: str, revision: str = "head") -> None:
    """Upgrade from inside a running event loop (Alembic's env starts its own loop, so use a thread)."""
    await asyncio.to_thread(upgrade, url, revision)


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(lambda sync_conn: MigrationContext.configure(sync_conn).get_current_revision())


async def is_at_head(url: str) -> tuple[bool, str | None, str | None]:
    """(at head?, current revision, head revision)."""
    engine = create_engine(url)
    try:
        current = await current_revision(engine)
    finally:
        await engine.dispose()
    head = head_revision(url)
    return current == head, current, head
