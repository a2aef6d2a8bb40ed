"""Build the configured engine. Engine modules and their heavy dependencies are imported only when chosen."""

from __future__ import annotations

import importlib.util
import logging

from bot.config import EngineKind, Settings
from bot.generation.base import Engine, EngineNotInstalled

log = logging.getLogger(__name__)

# The optional dependency behind each engine, and the command that installs it.
_REQUIREMENTS: dict[EngineKind, tuple[tuple[str, ...], str]] = {
    EngineKind.EXLLAMAV2: (("exllamav2", "torch"), "pip install 'rpbot[gpu]'"),
    EngineKind.LLAMACPP: (("llama_cpp",), "pip install 'rpbot[cpu]'"),
    EngineKind.OPENAI: (("openai",), "pip install rpbot"),
}


def missing_dependency(kind: EngineKind) -> str | None:
    """The install command for the engine's missing dependency, or None when everything is importable."""
    modules, command = _REQUIREMENTS[kind]
    if all(importlib.util.find_spec(module) is not None for module in modules):
        return None
    return command


def build_engine(settings: Settings) -> Engine:
    """The engine ``RPBOT_ENGINE`` names, configured from the settings (not started).

    Raises EngineNotInstalled (naming the pip command) when its optional dependency is missing, and EngineError for
    settings it cannot work with.
    """
    kind = settings.engine
    command = missing_dependency(kind)
    if command is not None:
        package = {"exllamav2": "exllamav2 and torch", "llamacpp": "llama-cpp-python", "openai": "openai"}[kind.value]
        raise EngineNotInstalled(f"RPBOT_ENGINE={kind.value} needs {package}: run {command}")
    if kind is EngineKind.EXLLAMAV2:
        from bot.generation.exllamav2 import ExLlamaV2Engine

        return ExLlamaV2Engine.from_settings(settings)
    if kind is EngineKind.LLAMACPP:
        from bot.generation.llamacpp import LlamaCppEngine

        return LlamaCppEngine.from_settings(settings)
    from bot.generation.openai_compat import OpenAIEngine

    return OpenAIEngine.from_settings(settings)
