"""Fixtures shared by every test package."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.tiny_model import make_tiny_gguf

pytest_plugins = ["tests.discord_emulator.fixtures"]


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight Llama GGUF (see tests/support/tiny_model.py), written once per test session."""
    return make_tiny_gguf(tmp_path_factory.mktemp("models") / "tiny.gguf")


@pytest.fixture(scope="session")
def tiny_gguf_eos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model, but it ends every reply with EOS straight away."""
    return make_tiny_gguf(tmp_path_factory.mktemp("models") / "tiny-eos.gguf", favour_eos=True)
