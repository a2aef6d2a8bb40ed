"""The OpenAI-compatible engine: routing, failover and errors.

The happy path runs against llama-cpp-python's real server in the contract tests. Failure modes a real server will
not produce on demand (HTTP 500, a refused key, a stream cut halfway) come from small aiohttp servers here that
speak the same /v1 protocol on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bot.generation.base import EngineError, EngineUnavailable, GenerationRequest, SamplerParams
from bot.generation.openai_compat import OpenAIEngine, normalise_base_url, token_counter_for
from tests.generation.conftest import free_port

SECRET_KEY = "sk-very-secret-key-123"


class FakeServer:
    """An OpenAI-compatible /v1 server with a chosen behaviour for /v1/completions."""

    def __init__(self, behaviour: str = "ok", tokens: int = 6, delay: float = 0.0) -> None:
        self.behaviour = behaviour
        self.tokens = tokens
        self.delay = delay
        self.bodies: list[dict[str, Any]] = []
        self.active = 0
        self.max_active = 0
        self.closed_early = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/completions", self.completions)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}/v1"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake-model", "object": "model", "owned_by": "t"}]})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        if self.behaviour == "500":
            return web.json_response({"error": {"message": "model crashed"}}, status=500)
        if self.behaviour == "401":
            return web.json_response({"error": {"message": "invalid api key"}}, status=401)
        if self.behaviour == "400":
            return web.json_response({"error": {"message": "top_k must be -1 or at least 1"}}, status=400)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        count = min(self.tokens, int(body.get("max_tokens") or self.tokens))
        try:
            for index in range(count):
                if self.behaviour == "drop" and index == 2:
                    assert request.transport is not None
                    request.transport.close()  # the server dies mid-reply
                    return response
                last = index == count - 1
                await response.write(self._event(f" tok{index}", "length" if last else None))
                if self.delay:
                    await asyncio.sleep(self.delay)
            await response.write(b"data: [DONE]\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            self.closed_early += 1
            raise
        finally:
            self.active -= 1
        return response

    @staticmethod
    def _event(text: str, finish: str | None) -> bytes:
        chunk = {
            "id": "cmpl-1", "object": "text_completion", "created": 0, "model": "fake-model",
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
        }  # fmt: skip
        return f"data: {json.dumps(chunk)}\n\n".encode()


@pytest.fixture
async def servers() -> AsyncIterator[Callable[..., Awaitable[FakeServer]]]:
    started: list[FakeServer] = []

    async def make(behaviour: str = "ok", **kwargs: Any) -> FakeServer:
        server = FakeServer(behaviour, **kwargs)
        await server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        await server.stop()


async def collect(engine: OpenAIEngine, request: GenerationRequest) -> str:
    return "".join([chunk async for chunk in engine.stream(request)])


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there


async def test_sampler_fields_reach_the_server(servers: Callable[..., Awaitable[FakeServer]]) -> None:
    server = await servers()
    engine = OpenAIEngine([server.url])
    await engine.start()
    params = SamplerParams(temperature=0.7, top_p=0.85, top_k=40, min_p=0.1, repetition_penalty=1.15, seed=9)
    text = await collect(engine, GenerationRequest("<|user|>hi<|model|>", params, stop=["<|user|>"], max_new_tokens=6))
    assert text == " tok0 tok1 tok2 tok3 tok4 tok5"
    body = server.bodies[0]
    assert body["prompt"] == "<|user|>hi<|model|>" and body["model"] == "fake-model" and body["stream"] is True
    assert body["max_tokens"] == 6 and body["stop"] == ["<|user|>"] and body["seed"] == 9
    assert (body["temperature"], body["top_p"], body["top_k"], body["min_p"]) == (0.7, 0.85, 40, 0.1)
    assert body["repetition_penalty"] == body["repeat_penalty"] == 1.15
    await engine.close()


async def test_client_side_stop_strings_and_finish_reasons(servers: Callable[..., Awaitable[FakeServer]]) -> None:
    # A server that ignores stop strings still gets cut at them.
    server = await servers()
    engine = OpenAIEngine([server.url])
    await engine.start()
    stream = engine.stream(GenerationRequest("x", stop=[" tok3"], max_new_tokens=6))
    assert "".join([c async for c in stream]) == " tok0 tok1 tok2"
    assert stream.result is not None and stream.result.finish_reason == "stop"
    stream = engine.stream(GenerationRequest("x", max_new_tokens=6))
    [c async for c in stream]
    assert stream.result is not None
    assert (stream.result.finish_reason, stream.result.completion_tokens) == ("length", 6)
    await engine.close()


async def test_a_dead_server_is_skipped(servers: Callable[..., Awaitable[FakeServer]]) -> None:
    live = await servers()
    dead = dead_url()
    engine = OpenAIEngine([dead, live.url])
    await engine.start()  # one answering server is enough
    assert engine.servers[0].last_error.startswith("cannot connect")
    for _ in range(3):
        assert await collect(engine, GenerationRequest("x", max_new_tokens=2)) == " tok0 tok1"
    assert len(live.bodies) == 3 and engine.capacity == 8
    await engine.close()


async def test_failover_when_a_server_errors(servers: Callable[..., Awaitable[FakeServer]]) -> None:
    broken, live = await servers("500"), await servers()
    engine = OpenAIEngine([broken.url, live.url])
    await engine.start()
    engine._turn = -1  # make the broken server the first choice
    assert await collect(engine, GenerationRequest("x", max_new_tokens=2)) == " tok0 tok1"
    assert len(broken.bodies) == 1 and len(live.bodies) == 1
    assert engine.servers[0].is_down(time.monotonic())
    # While it cools down, the broken server is not tried again.
    assert await collect(engine, GenerationRequest("x", max_new_tokens=2)) == " tok0 tok1"
    assert len(broken.bodies) == 1 and len(live.bodies) == 2
    await engine.close()


async def test_no_server_answering_names_every_url(caplog: pytest.LogCaptureFixture) -> None:
    first, second = dead_url(), dead_url()
    engine = OpenAIEngine([first, second])
    with pytest.raises(EngineUnavailable) as caught:
        await engine.start()
    message = str(caught.value)
    assert first in message and second in message and "RPBOT_OPENAI_BASE_URL" in message


async def test_every_server_failing_a_request_is_engine_unavailable(
    servers: Callable[..., Awaitable[FakeServer]],
) -> None:
    a, b = await servers("500"), await servers("500")
    engine = OpenAIEngine([a.url, b.url])
    await engine.start()
    with pytest.raises(EngineUnavailable, match="no OpenAI-compatible server could take the request") as caught:
        await collect(engine, GenerationRequest("x"))
    assert a.url in str(caught.value) and b.url in str(caught.value) and "HTTP 500" in str(caught.value)
    await engine.close()


async def test_a_refused_key_is_reported_without_the_key(
    servers: Callable[..., Awaitable[FakeServer]], caplog: pytest.LogCaptureFixture
) -> None:
    server = await servers("401")
    engine = OpenAIEngine([server.url], api_key=SECRET_KEY)
    await engine.start()
    caplog.set_level(logging.DEBUG)
    with pytest.raises(EngineError, match="RPBOT_OPENAI_API_KEY") as caught:
        await collect(engine, GenerationRequest("x"))
    assert SECRET_KEY not in str(caught.value) and SECRET_KEY not in caplog.text
    await engine.close()


async def test_a_rejected_request_says_why(servers: Callable[..., Awaitable[FakeServer]]) -> None:
    server = await servers("400")
    engine = OpenAIEngine([server.url])
    await engine.start()
    with pytest.raises(EngineError, match="rejected the request: HTTP 400: top_k must be"):
        await collect(engine, GenerationRequest("x"))
    assert not engine.servers[0].is_down(0)  # a bad request says nothing about the server's health
    await engine.close()


async def test_a_stream_cut_halfway_fails_and_marks_the_server_down(
    servers: Callable[..., Awaitable[FakeServer]],
) -> None:
    server = await servers("drop")
    engine = OpenAIEngine([server.url])
    await engine.start()
    received = []
    with pytest.raises(EngineUnavailable, match="broke off the reply"):
        async for chunk in engine.stream(GenerationRequest("x")):
            received.append(chunk)
    assert received == [" tok0", " tok1"]  # what the user saw is not repeated by a retry
    assert engine.servers[0].last_error and engine.servers[0].in_flight == 0
    await engine.close()


async def test_requests_go_to_the_least_busy_server(servers: Callable[..., Awaitable[FakeServer]]) -> None:
    a, b = await servers(tokens=20, delay=0.01), await servers(tokens=20, delay=0.01)
    engine = OpenAIEngine([a.url, b.url], parallel_per_server=2)
    await engine.start()
    texts = await asyncio.gather(*(collect(engine, GenerationRequest("x", max_new_tokens=20)) for _ in range(4)))
    assert all(t.endswith("tok19") for t in texts)
    assert len(a.bodies) == len(b.bodies) == 2
    assert a.max_active == b.max_active == 2
    assert all(server.in_flight == 0 for server in engine.servers)
    await engine.close()


async def test_cancelling_closes_the_http_stream(servers: Callable[..., Awaitable[FakeServer]]) -> None:
    server = await servers(tokens=500, delay=0.005)
    engine = OpenAIEngine([server.url])
    await engine.start()
    stream = engine.stream(GenerationRequest("x", max_new_tokens=500))
    async for _ in stream:
        await stream.cancel()
    assert stream.result is not None and stream.result.finish_reason == "cancelled"
    for _ in range(200):
        if server.active == 0:
            break
        await asyncio.sleep(0.01)
    assert server.active == 0 and server.closed_early == 1  # the server stopped sending
    await engine.close()


def test_base_urls_get_the_v1_prefix_only_when_they_have_no_path() -> None:
    assert normalise_base_url("http://127.0.0.1:5000") == "http://127.0.0.1:5000/v1"
    assert normalise_base_url("http://127.0.0.1:5000/") == "http://127.0.0.1:5000/v1"
    assert normalise_base_url("https://pool.example/api/v1/") == "https://pool.example/api/v1"


def test_token_counting_uses_the_tokenizer_file_when_given(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({"hello": 0, "there": 1, "[UNK]": 2}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    counter = token_counter_for(path)
    assert counter.count_tokens("hello there friend") == 3
    engine = OpenAIEngine(["http://127.0.0.1:1/v1"], token_counter=counter)
    assert engine.count_tokens("hello there") == 2
    # Without one, a conservative estimate (more tokens than a Llama tokenizer would count).
    assert token_counter_for(None).count_tokens("hello there friend") >= 5
    bad = tmp_path / "nonsense.json"
    bad.write_text("{}")
    with pytest.raises(EngineError, match="RPBOT_TOKENIZER_PATH"):
        token_counter_for(bad)


async def test_not_started_is_a_clear_error() -> None:
    with pytest.raises(EngineUnavailable, match="not started"):
        OpenAIEngine(["http://127.0.0.1:1/v1"]).stream(GenerationRequest("x"))
    with pytest.raises(EngineError, match="RPBOT_OPENAI_BASE_URL is not set"):
        OpenAIEngine([])
