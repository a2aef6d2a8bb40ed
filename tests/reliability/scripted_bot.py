"""``python -m tests.reliability.scripted_bot run``: the real ``rpbot run`` with the scripted engine for a model.

For process-level tests that need an instant, deterministic engine (the load test). Settings come from the
environment like ``rpbot``'s; the reply is ``RPBOT_TEST_REPLY``, its per-chunk delay ``RPBOT_TEST_DELAY`` (seconds)
and the engine's parallel streams ``RPBOT_TEST_CAPACITY``.
"""

from __future__ import annotations

import os
import sys

from bot import cli
from bot.generation import factory
from tests.support.scripted_engine import ScriptedEngine


def _scripted_engine(_settings: object) -> ScriptedEngine:
    return ScriptedEngine(
        os.environ.get("RPBOT_TEST_REPLY", "An instant reply."),
        delay=float(os.environ.get("RPBOT_TEST_DELAY", "0")),
        capacity=int(os.environ.get("RPBOT_TEST_CAPACITY", "8")),
    )


if __name__ == "__main__":
    factory.build_engine = _scripted_engine  # type: ignore[assignment]
    os.environ.setdefault("RPBOT_ENGINE", "openai")  # passes the settings check; never contacted
    os.environ.setdefault("RPBOT_OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    sys.exit(cli.main(sys.argv[1:]))
