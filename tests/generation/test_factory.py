from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.config import load_settings
from bot.generation.base import EngineError, EngineNotInstalled
from bot.generation.factory import build_engine
from bot.generation.openai_compat import OpenAIEngine
from tests.support.scripted_engine import split_tokens


def test_openai_engine_from_settings(tmp_path: Path) -> None:
    settings = load_settings(
        None,
        engine="openai",
        openai_base_url="http://127.0.0.1:5000, http://127.0.0.1:5001/v1",
        openai_api_key="sk-x",
        openai_parallel=3,
        context_tokens=8192,
    )
    engine = build_engine(settings)
    assert isinstance(engine, OpenAIEngine)
    assert engine.base_urls == ["http://127.0.0.1:5000/v1", "http://127.0.0.1:5001/v1"]
    assert engine.capacity == 6 and engine.context_tokens == 8192
    assert "sk-x" not in repr(vars(engine).get("base_urls"))


def test_llamacpp_engine_from_settings(tiny_gguf: Path) -> None:
    pytest.importorskip("llama_cpp")
    from bot.generation.llamacpp import LlamaCppEngine

    settings = load_settings(None, engine="llamacpp", model_path=str(tiny_gguf), llamacpp_threads=1)
    engine = build_engine(settings)
    assert isinstance(engine, LlamaCppEngine)
    assert engine.model_path == tiny_gguf and engine.threads == 1 and engine.capacity == 1


def test_llamacpp_without_a_model_path_says_so() -> None:
    pytest.importorskip("llama_cpp")
    with pytest.raises(EngineError, match="RPBOT_MODEL_PATH is not set"):
        build_engine(load_settings(None, engine="llamacpp"))


def test_a_missing_extra_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if llama-cpp-python were not installed
    with pytest.raises(
        EngineNotInstalled, match=r"RPBOT_ENGINE=llamacpp needs llama-cpp-python: run pip install 'rpbot\[cpu\]'"
    ):
        build_engine(load_settings(None, engine="llamacpp", model_path="/models/x.gguf"))
    monkeypatch.setitem(sys.modules, "exllamav2", None)
    with pytest.raises(EngineNotInstalled, match=r"pip install 'rpbot\[gpu\]'"):
        build_engine(load_settings(None, engine="exllamav2", model_path="/models/x"))


@given(st.text())
def test_the_scripted_tokenizer_loses_nothing(text: str) -> None:
    assert "".join(split_tokens(text)) == text
