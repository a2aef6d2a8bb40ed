"""The scripted engine's own promises (other suites rely on them)."""

from __future__ import annotations

import asyncio

import pytest

from bot.generation.base import EngineUnavailable, GenerationRequest
from tests.support.scripted_engine import ScriptedEngine


async def run(engine: ScriptedEngine, prompt: str = "p", **kwargs: object) -> tuple[list[str], str]:
    stream = engine.stream(GenerationRequest(prompt, **kwargs))  # type: ignore[arg-type]
    chunks = [chunk async for chunk in stream]
    assert stream.result is not None
    return chunks, stream.result.finish_reason


async def test_replies_in_turn_then_the_last_repeats() -> None:
    engine = ScriptedEngine(["One.", "Two."])
    await engine.start()
    texts = ["".join((await run(engine, f"p{i}"))[0]) for i in range(3)]
    assert texts == ["One.", "Two.", "Two."] and engine.prompts == ["p0", "p1", "p2"]


async def test_chunk_size_and_tokens() -> None:
    engine = ScriptedEngine("Hello there, brave traveller.", chunk_tokens=2)
    await engine.start()
    chunks, reason = await run(engine)
    assert chunks == ["Hello there", ", brave", " traveller."] and reason == "eos"
    assert engine.count_tokens("Hello there, brave traveller.") == 6


async def test_pause_holds_streams_until_resumed() -> None:
    engine = ScriptedEngine("a b c")
    await engine.start()
    engine.pause()
    task = asyncio.create_task(run(engine))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not task.done() and engine.active == 1
    engine.resume()
    assert "".join((await task)[0]) == "a b c"
    assert engine.active == 0 and engine.completed == 1


async def test_must_be_started() -> None:
    with pytest.raises(EngineUnavailable):
        ScriptedEngine().stream(GenerationRequest("p"))
