"""Settings from the environment and `.env`, prefix ``RPBOT_``.

Every problem with a setting becomes a :class:`ConfigError` whose message is one line per problem, naming the
variable, what is wrong and how to fix it. Secrets are :class:`~pydantic.SecretStr` so they never print.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "RPBOT_"
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///data/rpbot.sqlite3"
DISCORD_API_URL = "https://discord.com/api/v10"


class EngineKind(StrEnum):
    EXLLAMAV2 = "exllamav2"
    LLAMACPP = "llamacpp"
    OPENAI = "openai"


class CacheType(StrEnum):
    FP16 = "fp16"
    Q8 = "q8"
    Q6 = "q6"
    Q4 = "q4"


class ConfigError(Exception):
    """Bad or missing configuration. ``str(err)`` is what the user sees: short lines, no traceback."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


# Hints appended to validation messages, by field name.
_HINTS: dict[str, str] = {
    "log_format": "use text or json",
    "shard_ids": "give a comma-separated list of shard numbers, e.g. 0,1,2",
    "database_url": "e.g. sqlite+aiosqlite:///data/rpbot.sqlite3 or postgresql+asyncpg://user:pass@host/db",
}
_SECRET_FIELDS = {"discord_token", "openai_api_key"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
    )

    discord_token: SecretStr | None = None
    database_url: str = DEFAULT_DATABASE_URL
    engine: EngineKind = EngineKind.EXLLAMAV2
    model_path: Path | None = None
    openai_base_url: Annotated[list[str], NoDecode] = Field(default_factory=list)
    openai_api_key: SecretStr | None = None
    openai_model: str | None = None
    openai_parallel: int = Field(4, ge=1, le=256)  # streams each OpenAI-compatible server runs at once
    tokenizer_path: Path | None = None
    context_tokens: int = Field(4096, ge=256, le=131072)
    max_new_tokens: int = Field(300, ge=1, le=8192)
    discord_api_url: str = DISCORD_API_URL
    discord_gateway_url: str | None = None
    shard_count: int | None = Field(None, ge=1)
    shard_ids: Annotated[list[int] | None, NoDecode] = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    metrics_port: int = Field(0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"

    # Generation queue.
    queue_max_size: int = Field(256, ge=1, le=100_000)
    request_timeout_seconds: float = Field(300.0, gt=0)

    # ExLlamaV2.
    exllamav2_cache_type: CacheType = CacheType.Q4
    exllamav2_cache_tokens: int | None = Field(None, ge=256)
    exllamav2_max_batch_size: int = Field(8, ge=1, le=256)
    exllamav2_chunk_size: int = Field(2048, ge=64)

    # llama.cpp.
    llamacpp_threads: int | None = Field(None, ge=1)
    llamacpp_gpu_layers: int = Field(0, ge=-1)

    # Discord behaviour.
    message_retention_days: int = Field(0, ge=0)
    # A trigger said while the bot was away is answered on its return if it is the channel's newest message and at
    # most this many minutes old; 0 answers none.
    missed_trigger_minutes: float = Field(10.0, ge=0)
    shutdown_grace_seconds: float = Field(20.0, ge=0)
    stream_edit_interval: float = Field(1.0, ge=0.2)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("engine", "log_format", "exllamav2_cache_type", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("openai_base_url", mode="before")
    @classmethod
    def _split_urls(cls, value: Any) -> Any:
        if isinstance(value, str):
            urls = [part.strip().rstrip("/") for part in value.replace(";", ",").split(",") if part.strip()]
            for url in urls:
                if not url.startswith(("http://", "https://")):
                    raise ValueError(f"{url!r} is not an http(s) URL")
            return urls
        return value

    @field_validator("shard_ids", mode="before")
    @classmethod
    def _split_ids(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value.strip():
                return None
            try:
                return [int(part) for part in value.split(",") if part.strip()]
            except ValueError:
                raise ValueError("must be whole numbers") from None
        return value

    @field_validator("database_url")
    @classmethod
    def _check_db_url(cls, value: str) -> str:
        if "://" not in value:
            raise ValueError("is not a database URL")
        scheme = value.split("://", 1)[0]
        if scheme not in ("sqlite+aiosqlite", "postgresql+asyncpg"):
            raise ValueError(f"driver {scheme!r} is not supported (an async driver is needed)")
        return value

    @field_validator("discord_api_url", "discord_gateway_url")
    @classmethod
    def _check_urls(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://", "ws://", "wss://")):
            raise ValueError("is not a URL")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        if self.max_new_tokens >= self.context_tokens:
            raise ValueError(
                f"RPBOT_MAX_NEW_TOKENS ({self.max_new_tokens}) must be smaller than RPBOT_CONTEXT_TOKENS "
                f"({self.context_tokens}); lower it or raise the context"
            )
        if self.shard_ids is not None:
            if self.shard_count is None:
                raise ValueError("RPBOT_SHARD_IDS needs RPBOT_SHARD_COUNT; set both or neither")
            bad = [i for i in self.shard_ids if not 0 <= i < self.shard_count]
            if bad:
                raise ValueError(f"RPBOT_SHARD_IDS {bad} are outside 0..{self.shard_count - 1} (RPBOT_SHARD_COUNT)")
        if self.exllamav2_cache_tokens is not None and self.exllamav2_cache_tokens % 256:
            raise ValueError("RPBOT_EXLLAMAV2_CACHE_TOKENS must be a multiple of 256")
        return self

    # ---- requirements of individual commands -------------------------------------------------------------------

    def require_token(self) -> str:
        if self.discord_token is None or not self.discord_token.get_secret_value().strip():
            raise ConfigError(
                ["RPBOT_DISCORD_TOKEN is not set: put your bot token from the Discord developer portal in .env"]
            )
        return self.discord_token.get_secret_value().strip()

    def engine_problems(self) -> list[str]:
        """What is missing for the configured engine (empty when it can be started)."""
        problems: list[str] = []
        if self.engine in (EngineKind.EXLLAMAV2, EngineKind.LLAMACPP):
            if self.model_path is None:
                what = "an EXL2/FP16 model folder" if self.engine is EngineKind.EXLLAMAV2 else "a .gguf model file"
                problems.append(f"RPBOT_MODEL_PATH is not set: point it at {what} (RPBOT_ENGINE={self.engine.value})")
            elif not self.model_path.exists():
                problems.append(f"RPBOT_MODEL_PATH: {self.model_path} does not exist")
            elif self.engine is EngineKind.EXLLAMAV2 and not (self.model_path / "config.json").is_file():
                problems.append(f"RPBOT_MODEL_PATH: {self.model_path} has no config.json (needs a model folder)")
            elif self.engine is EngineKind.LLAMACPP and not self.model_path.is_file():
                problems.append(f"RPBOT_MODEL_PATH: {self.model_path} is not a file (needs a .gguf file)")
        else:
            if not self.openai_base_url:
                problems.append(
                    "RPBOT_OPENAI_BASE_URL is not set: give the server URL(s), e.g. http://127.0.0.1:5000/v1"
                )
        if self.tokenizer_path is not None and not self.tokenizer_path.is_file():
            problems.append(f"RPBOT_TOKENIZER_PATH: {self.tokenizer_path} is not a file (needs a tokenizer.json)")
        return problems

    def masked(self) -> dict[str, str]:
        """Every setting as ``RPBOT_NAME -> value`` with secrets masked, for `rpbot check`."""
        out: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name in _SECRET_FIELDS:
                shown = "(not set)" if value is None else "****** (set)"
            elif name == "database_url":
                shown = mask_url_password(value)
            elif isinstance(value, list):
                shown = ",".join(str(v) for v in value) or "(not set)"
            elif value is None:
                shown = "(not set)"
            else:
                shown = str(value.value if isinstance(value, StrEnum) else value)
            out[ENV_PREFIX + name.upper()] = shown
        return out


def mask_url_password(url: str) -> str:
    """Hide the password of a ``scheme://user:password@host`` URL."""
    if "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    if ":" in creds:
        creds = creds.split(":", 1)[0] + ":******"
    return f"{scheme}://{creds}@{host}"


def _describe(error: dict[str, Any]) -> str:
    loc = [str(part) for part in error.get("loc", ()) if part != "__root__"]
    msg = str(error.get("msg", "is invalid"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if not loc:
        return msg  # model-level checks already name their variables
    field = loc[0]
    name = ENV_PREFIX + field.upper()
    parts = [f"{name}: {msg[0].lower() + msg[1:] if msg else 'is invalid'}"]
    if field not in _SECRET_FIELDS and "input" in error and isinstance(error["input"], str | int | float):
        parts.append(f"(got {error['input']!r})")
    line = " ".join(parts)
    if field in _HINTS:
        line += f"; {_HINTS[field]}"
    return line


def load_settings(env_file: str | os.PathLike[str] | None = ".env", **overrides: Any) -> Settings:
    """Read the settings, turning validation failures into a :class:`ConfigError`."""
    try:
        return Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        raise ConfigError([_describe(err) for err in exc.errors(include_url=False)]) from None
