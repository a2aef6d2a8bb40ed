"""Dialect-aware inserts: the same call works on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession


def dialect_insert(session: AsyncSession, model: Any) -> Any:
    """``INSERT`` with ``on_conflict_*`` support for the session's database."""
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    return insert(model)


def insert_ignoring_conflicts(session: AsyncSession, model: Any, values: dict[str, Any]) -> Any:
    """Insert a row unless one with the same primary key exists (a race-free "create if missing")."""
    return dialect_insert(session, model).values(**values).on_conflict_do_nothing()
