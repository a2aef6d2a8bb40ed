"""Several bot processes (shards) starting at once on one database all upgrade it: they must take turns."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from bot.storage.migrate import head_revision, is_at_head
from tests.storage.conftest import db_url  # noqa: F401  (the SQLite + PostgreSQL fixture)

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = 3


async def _migrate(url: str, tmp_path: Path) -> tuple[int, str]:
    env = {**os.environ, "RPBOT_DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "--env-file",
        str(tmp_path / "no.env"),
        "migrate",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
    )
    output, _ = await process.communicate()
    return process.returncode or 0, output.decode(errors="replace")


async def test_processes_migrating_one_database_at_once_all_succeed(db_url: str, tmp_path: Path) -> None:  # noqa: F811
    results = await asyncio.gather(*(_migrate(db_url, tmp_path) for _ in range(PROCESSES)))
    for code, output in results:
        assert code == 0, output
        assert "database is up to date" in output
    assert await is_at_head(db_url) == (True, head_revision(db_url), head_revision(db_url))
