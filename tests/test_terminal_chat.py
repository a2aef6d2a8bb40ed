"""`rpbot chat`: a real terminal session through the prompt builder, the queue and llama.cpp on the tiny model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERAPHINA = ROOT / "tests" / "fixtures" / "cards" / "default_Seraphina.png"
LLAMA = {"RPBOT_ENGINE": "llamacpp", "RPBOT_MODEL_PATH": "__MODEL__"}


def _chat(args: list[str], stdin: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RPBOT_")}
    clean.update(PYTHONPATH=str(ROOT), **env)
    return subprocess.run(
        [sys.executable, "-m", "bot", "chat", *args],
        input=stdin,
        cwd=cwd,
        env=clean,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_chat_with_a_card_streams_replies_and_obeys_commands(tiny_gguf: Path, tmp_path: Path) -> None:
    out = _chat(
        ["--card", str(SERAPHINA), "--user", "Traveller"],
        "Hello Seraphina!\n/regen\n/bogus\n/reset\n/quit\n",
        tmp_path,
        RPBOT_ENGINE="llamacpp",
        RPBOT_MODEL_PATH=str(tiny_gguf),
        RPBOT_MAX_NEW_TOKENS="24",
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "Chatting with Seraphina on llamacpp" in text
    assert text.count("Seraphina: *You wake with a start") == 2  # the greeting, and again after /reset
    replies = [line for line in text.split("Traveller> ") if line.startswith("Seraphina: ")]
    assert len(replies) == 2  # the reply and the regenerated one
    assert all(len(r.strip()) > len("Seraphina:") for r in replies)
    assert "(unknown command" in text and "(new scene)" in text
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--card", "missing.png"], {"RPBOT_ENGINE": "llamacpp", "RPBOT_MODEL_PATH": "__MODEL__"}, "does not exist"),
        (
            ["--persona", "Aria"],
            {"RPBOT_ENGINE": "llamacpp", "RPBOT_MODEL_PATH": "__MODEL__"},
            "--persona needs --guild",
        ),
        (
            ["--card", "__NOTCARD__"],
            {"RPBOT_ENGINE": "llamacpp", "RPBOT_MODEL_PATH": "__MODEL__"},
            "could not be imported",
        ),
        (["--card", "__CARD__"], {"RPBOT_ENGINE": "llamacpp"}, "RPBOT_MODEL_PATH"),
    ],
)
def test_chat_refuses_bad_input_with_one_clear_line(
    tiny_gguf: Path, tmp_path: Path, args: list[str], env: dict[str, str], expected: str
) -> None:
    not_a_card = tmp_path / "cat.png"
    not_a_card.write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    subst = {"__MODEL__": str(tiny_gguf), "__NOTCARD__": str(not_a_card), "__CARD__": str(SERAPHINA)}
    args = [subst.get(a, a) for a in args]
    env = {k: subst.get(v, v) for k, v in env.items()}
    out = _chat(args, "/quit\n", tmp_path, **env)
    assert out.returncode == 2
    assert expected in out.stderr and "Traceback" not in out.stderr
