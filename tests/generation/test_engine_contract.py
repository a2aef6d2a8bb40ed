"""One contract, every engine: the scripted engine, llama.cpp on the tiny GGUF, and the OpenAI-compatible engine
talking to llama-cpp-python's real server (serving the same tiny model) on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.generation.base import Engine, GenerationRequest, GenerationResult, PromptTooLong, SamplerParams
from bot.generation.queue import GenerationJob, GenerationQueue
from tests.support.scripted_engine import ScriptedEngine

PROMPT = (
    "<|system|>Enter RP mode. Pretend to be Seraphina whose persona follows:\nA guardian of the forest glade.\n\n"
    "You shall reply to the user while staying in character.<|user|>Alice: hello there<|model|>"
)
GREEDY = SamplerParams(temperature=0.0, seed=7)
LONG_REPLY = " ".join(["the forest is quiet and warm tonight"] * 500)

ENGINES = ["scripted", "llamacpp", "openai"]


@pytest.fixture(params=ENGINES)
async def engine(request: pytest.FixtureRequest) -> AsyncIterator[Engine]:
    kind = request.param
    built: Engine
    if kind == "scripted":
        built = ScriptedEngine(LONG_REPLY, delay=0.0005)
    elif kind == "llamacpp":
        pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
        from bot.generation.llamacpp import LlamaCppEngine

        tiny_gguf: Path = request.getfixturevalue("tiny_gguf")
        built = LlamaCppEngine(tiny_gguf, context_tokens=4096, threads=1)
    else:
        from bot.generation.openai_compat import OpenAIEngine

        url: str = request.getfixturevalue("llama_server")
        built = OpenAIEngine([url], context_tokens=4096, parallel_per_server=1)
    await built.start()
    yield built
    await built.close()


async def generate(engine: Engine, request: GenerationRequest) -> tuple[list[str], GenerationResult]:
    stream = engine.stream(request)
    chunks = [chunk async for chunk in stream]
    assert stream.result is not None
    return chunks, stream.result


async def test_streams_chunks_and_fills_the_result(engine: Engine) -> None:
    chunks, result = await generate(engine, GenerationRequest(PROMPT, GREEDY, max_new_tokens=24))
    assert len(chunks) >= 2 and all(isinstance(c, str) and c for c in chunks)
    assert result.text == "".join(chunks) and result.text.strip()
    assert result.finish_reason in ("length", "eos", "stop")
    assert result.prompt_tokens > 0 and 0 < result.completion_tokens <= 24
    assert result.time_to_first_token is not None and 0 <= result.time_to_first_token <= result.total_seconds
    assert result.tokens_per_second > 0


async def test_max_new_tokens_is_honoured(engine: Engine) -> None:
    _, result = await generate(engine, GenerationRequest(PROMPT, GREEDY, max_new_tokens=5))
    assert result.completion_tokens == 5
    assert result.finish_reason == "length"


async def test_greedy_generation_repeats_and_stop_strings_cut_it(engine: Engine) -> None:
    request = GenerationRequest(PROMPT, GREEDY, max_new_tokens=40)
    _, full = await generate(engine, request)
    _, again = await generate(engine, request)
    assert again.text == full.text  # greedy decoding is deterministic (and survives KV-cache reuse)
    text = full.text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    cut = text[: text.find(stop)]
    chunks, stopped = await generate(
        engine, GenerationRequest(PROMPT, GREEDY, stop=["<|user|>", stop], max_new_tokens=40)
    )
    assert stopped.finish_reason == "stop"
    assert stopped.text == "".join(chunks) == cut
    assert stop not in stopped.text


async def test_cancel_mid_stream_ends_the_stream_as_cancelled(engine: Engine) -> None:
    stream = engine.stream(GenerationRequest(PROMPT, SamplerParams(seed=1), max_new_tokens=3000))
    received = []
    async for chunk in stream:
        received.append(chunk)
        if len(received) == 3:
            await stream.cancel()
    assert stream.result is not None
    assert stream.result.finish_reason == "cancelled"
    assert 3 <= stream.result.completion_tokens < 3000
    await stream.cancel()  # again, after the end: harmless


async def test_cancel_before_starting(engine: Engine) -> None:
    stream = engine.stream(GenerationRequest(PROMPT, max_new_tokens=10))
    await stream.cancel()
    assert stream.result is not None and stream.result.finish_reason == "cancelled"


async def test_count_tokens_is_sane(engine: Engine) -> None:
    assert engine.count_tokens("") == 0
    short = engine.count_tokens("hello")
    sentence = "Seraphina smiled softly and looked at the traveller resting in her forest glade."
    long = engine.count_tokens(sentence)
    assert 1 <= short <= 5
    assert short < long <= len(sentence)
    assert engine.count_tokens(sentence * 4) >= 3 * long
    assert engine.capacity >= 1 and engine.context_tokens == 4096


async def test_a_prompt_longer_than_the_context_is_refused_before_starting(engine: Engine) -> None:
    huge = "the quiet forest glade, " * 2000
    with pytest.raises(PromptTooLong) as caught:
        engine.stream(GenerationRequest(huge, max_new_tokens=100))
    assert caught.value.context == 4096 and caught.value.prompt_tokens > 4096 - 100
    assert "4096-token context" in str(caught.value)
    # Room for the prompt but not the reply is refused too.
    near = engine.count_tokens(PROMPT)
    with pytest.raises(PromptTooLong):
        engine.stream(GenerationRequest(PROMPT, max_new_tokens=4096 - near + 1))


async def test_a_count_the_caller_already_has_is_used_not_redone(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The prompt builder counts every prompt with the engine's own counter; the engine must not count it again.
    (Engines that tokenize to generate, like llama.cpp, use their tokens; the count they report still agrees.)"""
    counted = engine.count_tokens(PROMPT)
    calls: list[str] = []
    original = engine.count_tokens
    monkeypatch.setattr(engine, "count_tokens", lambda text: calls.append(text) or original(text))
    _chunks, result = await generate(engine, GenerationRequest(PROMPT, max_new_tokens=4, prompt_tokens=counted))
    assert PROMPT not in calls
    assert abs(result.prompt_tokens - counted) <= 1  # llama.cpp counts the BOS token as well


@pytest.mark.parametrize("engine", ["scripted", "openai"], indirect=True)  # the engines that only count
async def test_a_carried_count_decides_whether_the_prompt_fits(engine: Engine) -> None:
    with pytest.raises(PromptTooLong) as caught:
        engine.stream(GenerationRequest(PROMPT, max_new_tokens=100, prompt_tokens=4096 - 99))
    assert caught.value.prompt_tokens == 4096 - 99


async def test_serves_a_queue(engine: Engine) -> None:
    queue = GenerationQueue(engine, max_size=10, timeout=60)
    await queue.start()
    reqs = [
        queue.submit(GenerationJob(GenerationRequest(PROMPT + f" {i}", max_new_tokens=8), guild_id=i % 2, channel_id=i))
        for i in range(4)
    ]
    results = await asyncio.gather(*(r.wait() for r in reqs))
    assert all(r.completion_tokens <= 8 and r.text for r in results)
    assert queue.stats.completed == 4 and queue.stats.completion_tokens == sum(r.completion_tokens for r in results)
    await queue.close()
