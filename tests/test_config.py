from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.config import ConfigError, EngineKind, Settings, load_settings, mask_url_password


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(__import__("os").environ):
        if key.startswith("RPBOT_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def test_defaults() -> None:
    s = load_settings(None)
    assert s.database_url == "sqlite+aiosqlite:///data/rpbot.sqlite3"
    assert s.engine is EngineKind.EXLLAMAV2
    assert (s.context_tokens, s.max_new_tokens) == (4096, 300)
    assert s.discord_api_url == "https://discord.com/api/v10" and s.discord_gateway_url is None
    assert s.metrics_port == 0 and s.log_format == "text"


def test_reads_env_and_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("RPBOT_ENGINE=LlamaCpp\nRPBOT_CONTEXT_TOKENS=2048\nRPBOT_DISCORD_TOKEN=abc\n")
    monkeypatch.setenv("RPBOT_CONTEXT_TOKENS", "8192")  # the environment wins over .env
    monkeypatch.setenv("RPBOT_SHARD_COUNT", "4")
    monkeypatch.setenv("RPBOT_SHARD_IDS", "0, 2")
    monkeypatch.setenv("RPBOT_OPENAI_BASE_URL", "http://a:1/v1/, http://b:2/v1")
    s = load_settings(".env")
    assert s.engine is EngineKind.LLAMACPP and s.context_tokens == 8192
    assert s.shard_ids == [0, 2] and s.openai_base_url == ["http://a:1/v1", "http://b:2/v1"]
    assert s.require_token() == "abc"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"RPBOT_ENGINE": "banana"}, ["RPBOT_ENGINE", "exllamav2", "llamacpp", "openai", "banana"]),
        ({"RPBOT_CONTEXT_TOKENS": "lots"}, ["RPBOT_CONTEXT_TOKENS", "integer"]),
        ({"RPBOT_METRICS_PORT": "70000"}, ["RPBOT_METRICS_PORT", "65535"]),
        ({"RPBOT_LOG_FORMAT": "xml"}, ["RPBOT_LOG_FORMAT", "text or json"]),
        ({"RPBOT_DATABASE_URL": "mysql://x"}, ["RPBOT_DATABASE_URL", "not supported"]),
        ({"RPBOT_SHARD_IDS": "0,x", "RPBOT_SHARD_COUNT": "2"}, ["RPBOT_SHARD_IDS", "whole numbers"]),
        ({"RPBOT_SHARD_IDS": "0,5", "RPBOT_SHARD_COUNT": "2"}, ["RPBOT_SHARD_IDS", "[5]", "RPBOT_SHARD_COUNT"]),
        ({"RPBOT_SHARD_IDS": "0"}, ["RPBOT_SHARD_IDS needs RPBOT_SHARD_COUNT"]),
        ({"RPBOT_MAX_NEW_TOKENS": "5000"}, ["RPBOT_MAX_NEW_TOKENS", "RPBOT_CONTEXT_TOKENS"]),
        ({"RPBOT_OPENAI_BASE_URL": "ftp://x"}, ["RPBOT_OPENAI_BASE_URL", "http(s)"]),
        ({"RPBOT_EXLLAMAV2_CACHE_TOKENS": "1000"}, ["multiple of 256"]),
    ],
)
def test_invalid_values_name_the_variable(monkeypatch: pytest.MonkeyPatch, env: dict, expected: list[str]) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as info:
        load_settings(None)
    message = str(info.value)
    for part in expected:
        assert part in message
    assert "Traceback" not in message
    assert all("\n" not in line for line in info.value.problems)


def test_secret_values_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RPBOT_DISCORD_TOKEN", "super-secret-token-value")
    monkeypatch.setenv("RPBOT_OPENAI_API_KEY", "sk-very-secret")
    s = load_settings(None)
    shown = "\n".join(f"{k}={v}" for k, v in s.masked().items()) + repr(s) + str(s)
    assert "super-secret-token-value" not in shown and "sk-very-secret" not in shown
    assert s.masked()["RPBOT_DISCORD_TOKEN"] == "****** (set)"


def test_missing_token_is_one_line() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None).require_token()
    assert info.value.problems == [info.value.problems[0]] and "RPBOT_DISCORD_TOKEN" in str(info.value)


def test_engine_problems(tmp_path: Path) -> None:
    s = Settings(_env_file=None, engine="llamacpp")
    assert any("RPBOT_MODEL_PATH is not set" in p for p in s.engine_problems())
    s = Settings(_env_file=None, engine="llamacpp", model_path=tmp_path / "nope.gguf")
    assert any("does not exist" in p for p in s.engine_problems())
    s = Settings(_env_file=None, engine="exllamav2", model_path=tmp_path)
    assert any("config.json" in p for p in s.engine_problems())
    (tmp_path / "config.json").write_text("{}")
    assert Settings(_env_file=None, engine="exllamav2", model_path=tmp_path).engine_problems() == []
    assert any("RPBOT_OPENAI_BASE_URL" in p for p in Settings(_env_file=None, engine="openai").engine_problems())


@given(
    user=st.text(alphabet=st.characters(categories=["L", "N"]), min_size=1, max_size=10),
    password=st.text(alphabet=st.characters(categories=["L", "N"]), min_size=1, max_size=20),
)
def test_mask_url_password(user: str, password: str) -> None:
    masked = mask_url_password(f"postgresql+asyncpg://{user}:{password}@db.example:5432/rpbot")
    assert masked == f"postgresql+asyncpg://{user}:******@db.example:5432/rpbot"
