"""The `rpbot` command, run as a real subprocess the way a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def rpbot(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RPBOT_")}
    clean["PYTHONPATH"] = str(ROOT)
    clean.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "bot", *args], cwd=cwd, env=clean, capture_output=True, text=True, timeout=120
    )


def test_version(tmp_path: Path) -> None:
    out = rpbot("version", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.startswith("rpbot ")


def test_run_without_token_exits_2_with_one_line(tmp_path: Path) -> None:
    out = rpbot("run", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "RPBOT_DISCORD_TOKEN" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_bad_engine_names_allowed_values(tmp_path: Path) -> None:
    out = rpbot("run", cwd=tmp_path, env={"RPBOT_ENGINE": "banana", "RPBOT_DISCORD_TOKEN": "x"})
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0
    for word in ("RPBOT_ENGINE", "exllamav2", "llamacpp", "openai"):
        assert word in out.stderr
    assert "Traceback" not in out.stderr


def test_run_with_missing_model_says_which_setting(tmp_path: Path) -> None:
    out = rpbot("run", cwd=tmp_path, env={"RPBOT_ENGINE": "llamacpp", "RPBOT_DISCORD_TOKEN": "x"})
    assert out.returncode == 2 and "RPBOT_MODEL_PATH" in out.stderr and "Traceback" not in out.stderr


def test_migrate_creates_database_at_head_and_check_reports(tmp_path: Path) -> None:
    out = rpbot("migrate", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "data" / "rpbot.sqlite3").is_file()  # the default URL, folder created
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    env = {"RPBOT_DISCORD_TOKEN": "secret-token-123456", "RPBOT_MODEL_PATH": str(model)}
    out = rpbot("check", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "All checks passed" in out.stdout and "secret-token-123456" not in out.stdout + out.stderr


def test_check_fails_on_unmigrated_database_and_missing_token(tmp_path: Path) -> None:
    out = rpbot("check", cwd=tmp_path, env={"RPBOT_ENGINE": "openai", "RPBOT_OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})
    assert out.returncode == 1
    assert "rpbot migrate" in out.stdout and "RPBOT_DISCORD_TOKEN" in out.stdout


def test_check_masks_database_password(tmp_path: Path) -> None:
    url = "postgresql+asyncpg://bot:hunter2secret@127.0.0.1:9/rpbot"
    out = rpbot("check", cwd=tmp_path, env={"RPBOT_DATABASE_URL": url})
    assert out.returncode == 1
    assert "hunter2secret" not in out.stdout + out.stderr and "unreachable" in out.stdout


@pytest.mark.parametrize("args", [["nonsense"], []])
def test_usage_errors(tmp_path: Path, args: list[str]) -> None:
    out = rpbot(*args, cwd=tmp_path)
    assert out.returncode == 2 and "usage:" in out.stderr
