"""The llama.cpp engine on the tiny GGUF: loading errors, tokenizer, KV-cache reuse, EOS, the event loop."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.generation.base import EngineError, EngineNotInstalled, EngineUnavailable, GenerationRequest, SamplerParams

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")

from bot.generation.llamacpp import LlamaCppEngine

PROMPT = "<|system|>Enter RP mode. Pretend to be Seraphina.<|user|>Alice: hello<|model|>"


@pytest.fixture(scope="module")
def loaded_llama(tiny_gguf: Path) -> Any:
    """One llama_cpp.Llama for the tokenizer property test (loading per example would be wasteful)."""
    import llama_cpp

    return llama_cpp.Llama(model_path=str(tiny_gguf), n_ctx=256, n_threads=1, verbose=False)


@pytest.fixture
async def engine(tiny_gguf: Path) -> AsyncIterator[LlamaCppEngine]:
    engine = LlamaCppEngine(tiny_gguf, context_tokens=2048, threads=1)
    await engine.start()
    yield engine
    await engine.close()


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=60))
def test_the_tiny_tokenizer_round_trips_any_text(loaded_llama: Any, text: str) -> None:
    tokens = loaded_llama.tokenize(text.encode(), add_bos=False, special=False)
    # SentencePiece adds one leading space (the "▁" prefix); everything else comes back byte for byte.
    assert loaded_llama.detokenize(tokens).decode() == " " + text


async def test_role_markers_are_plain_text(engine: LlamaCppEngine) -> None:
    # As with Llama-2's tokenizer: typed markers are several ordinary tokens, and "</s>" typed is not EOS.
    assert engine.count_tokens("<|user|>") > 1
    assert 2 not in engine.tokenize("</s>")


async def test_the_shared_prompt_prefix_is_not_evaluated_again(engine: LlamaCppEngine) -> None:
    llm = engine.llama
    evaluated: list[int] = []
    real_eval = llm.eval

    def counting_eval(tokens: Any) -> None:
        evaluated.append(len(tokens))
        real_eval(tokens)

    llm.eval = counting_eval
    history = PROMPT + " Seraphina smiled softly." * 20
    first = engine.stream(GenerationRequest(history + "<|model|>", SamplerParams(seed=1), max_new_tokens=4))
    [chunk async for chunk in first]
    prompt_eval_first = evaluated[0]
    evaluated.clear()
    followup = history + "<|user|>Alice: and then?<|model|>"
    second = engine.stream(GenerationRequest(followup, SamplerParams(seed=1), max_new_tokens=4))
    [chunk async for chunk in second]
    total = len(engine.tokenize(followup, add_bos=True))
    shared = len(engine.tokenize(history, add_bos=True))
    assert prompt_eval_first == len(engine.tokenize(history + "<|model|>", add_bos=True))
    # Only the new tail of the prompt was evaluated; the shared history came from the KV cache.
    assert evaluated[0] <= total - shared + 2
    assert evaluated[0] < prompt_eval_first // 4


async def test_eos_ends_the_reply(tiny_gguf_eos: Path) -> None:
    engine = LlamaCppEngine(tiny_gguf_eos, context_tokens=512, threads=1)
    await engine.start()
    # The model favours EOS, but sampling may still pick another token first (1-5% of random seeds): a fixed seed.
    stream = engine.stream(GenerationRequest(PROMPT, SamplerParams(seed=2), max_new_tokens=50))
    chunks = [chunk async for chunk in stream]
    assert stream.result is not None
    assert stream.result.finish_reason == "eos" and stream.result.completion_tokens == 0 and chunks == []
    await engine.close()


async def test_the_event_loop_keeps_running_during_generation(engine: LlamaCppEngine) -> None:
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    stream = engine.stream(GenerationRequest(PROMPT, SamplerParams(seed=3), max_new_tokens=400))
    chunks = [chunk async for chunk in stream]
    done.set()
    await task
    # Text arrives in pieces as it is produced (tokens that pile up between wake-ups come as one chunk), all of it.
    assert stream.result is not None and len(chunks) > 1 and "".join(chunks) == stream.result.text
    assert ticks > len(chunks)  # the loop ran other work between (and while waiting for) chunks


async def test_close_stops_a_running_generation_and_start_loads_again(engine: LlamaCppEngine) -> None:
    stream = engine.stream(GenerationRequest(PROMPT, SamplerParams(seed=5), max_new_tokens=1900))
    iterator = aiter(stream)
    await anext(iterator)
    await engine.close()
    rest = [chunk async for chunk in iterator]
    assert stream.result is not None and stream.result.finish_reason == "cancelled"
    assert len(rest) < 1800
    with pytest.raises(EngineUnavailable, match="not started"):
        engine.count_tokens("hello")
    await engine.start()
    again = engine.stream(GenerationRequest(PROMPT, max_new_tokens=3))
    assert len([c async for c in again]) >= 1


async def test_a_missing_model_file_is_named(tmp_path: Path) -> None:
    engine = LlamaCppEngine(tmp_path / "nothing.gguf")
    with pytest.raises(EngineError, match=r"RPBOT_MODEL_PATH: .*nothing\.gguf does not exist"):
        await engine.start()


async def test_a_folder_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="is a folder"):
        await LlamaCppEngine(tmp_path).start()


async def test_a_file_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "model.safetensors"
    fake.write_bytes(b"\x00" * 64)
    with pytest.raises(EngineError, match="is not a GGUF file"):
        await LlamaCppEngine(fake).start()


async def test_a_truncated_gguf_fails_with_a_clear_error(tmp_path: Path, tiny_gguf: Path) -> None:
    broken = tmp_path / "truncated.gguf"
    broken.write_bytes(tiny_gguf.read_bytes()[:5000])
    engine = LlamaCppEngine(broken)
    with pytest.raises(EngineError, match=r"llama\.cpp could not load .*truncated\.gguf") as caught:
        await engine.start()
    assert "Traceback" not in str(caught.value)
    assert engine.llama is None


async def test_missing_llama_cpp_names_the_pip_command(monkeypatch: pytest.MonkeyPatch, tiny_gguf: Path) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` fail like an absent package
    with pytest.raises(EngineNotInstalled, match=r"pip install 'rpbot\[cpu\]'"):
        await LlamaCppEngine(tiny_gguf).start()
