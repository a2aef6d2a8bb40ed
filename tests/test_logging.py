from __future__ import annotations

import json
import logging

from bot.logging_setup import JsonFormatter, SecretScrubber


def _record(msg: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc else None
    return logging.LogRecord("bot.test", logging.ERROR, __file__, 1, msg, args, exc_info)


def test_scrubs_known_secrets_in_message_args_and_exceptions() -> None:
    scrubber = SecretScrubber(["my-api-key-123"])
    try:
        raise RuntimeError("auth failed for my-api-key-123")
    except RuntimeError as exc:
        record = _record("calling with key %s", "my-api-key-123", exc=exc)
    scrubber.filter(record)
    assert "my-api-key-123" not in record.getMessage() and "my-api-key-123" not in (record.exc_text or "")
    assert "******" in record.getMessage()


def test_scrubs_discord_shaped_tokens() -> None:
    token = "MTIzNDU2Nzg5MDEyMzQ1Njc4OQ.GaBcDe.abcdefghijklmnopqrstuvwxyz0123456789AB"
    record = _record("token was %s", token)
    SecretScrubber().filter(record)
    assert token not in record.getMessage()


def test_json_format() -> None:
    line = JsonFormatter().format(_record("hello %s", "world"))
    data = json.loads(line)
    assert data["message"] == "hello world" and data["level"] == "ERROR" and data["logger"] == "bot.test"
