"""A scripted engine for tests and benchmarks: a real :class:`~bot.generation.base.Engine` with no model behind it.

It "generates" replies you give it, word by word, so everything above the engine (queue, cogs, Discord end-to-end
tests) runs for real and fast. It honours the request like a real engine: stop strings, ``max_new_tokens``,
cancellation, ``PromptTooLong``; and it can fail on demand.

Typical use::

    engine = ScriptedEngine(["Hello there.", "Second reply."])  # replies in turn (the last one repeats)
    engine = ScriptedEngine(lambda prompt: "You said: " + prompt[-20:])  # or computed from the prompt
    engine = ScriptedEngine("Hi!", delay=0.01, capacity=2)  # 10 ms per chunk, two streams at once

    engine.pause()  # streams wait before their next chunk ...
    engine.resume()  # ... until resumed (to hold requests "running" while a test looks at the queue)

    engine.fail_next(EngineError("boom"), after_chunks=2)  # the next stream raises after two chunks
    engine.fail_next(broken=True)  # ... raises EngineBroken and marks the engine broken (the queue restarts it)
    engine.oom_next()  # ... raises EngineOutOfMemory
    engine.hang_next(after_chunks=1)  # ... stops producing until cancelled (timeouts)
    engine.fail_starts(2)  # the next two start() calls fail (restart back-off)

What it saw: ``engine.prompts`` / ``engine.requests`` (every stream request in order), ``engine.active`` and
``engine.max_active`` (concurrent streams now / at most), ``engine.starts`` / ``engine.closes``,
``engine.completed`` (streams that ran to their end), ``engine.cancelled`` (streams cancelled).

Tokens: a "token" is a word with its leading whitespace, or one punctuation mark (``count_tokens`` uses the same
rule), and each chunk is ``chunk_tokens`` tokens.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from bot.generation.base import (
    Engine,
    EngineBroken,
    EngineError,
    EngineOutOfMemory,
    EngineUnavailable,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    GenerationStream,
)
from bot.generation.stops import StopMatcher

_TOKEN = re.compile(r"\s*[\w']+|\s*[^\w\s]|\s+$")

Reply = str | Sequence[str] | Callable[[str], str]


def split_tokens(text: str) -> list[str]:
    """The scripted engine's tokenizer: words (with their leading whitespace) and single punctuation marks.

    ``"".join(split_tokens(text)) == text`` for any text.
    """
    return _TOKEN.findall(text)


@dataclass(slots=True)
class Fault:
    """A failure injected into one upcoming stream."""

    kind: Literal["raise", "hang"]
    after_chunks: int = 0
    error: BaseException | None = None
    mark_broken: bool = False


class ScriptedEngine(Engine):
    name = "scripted"

    def __init__(
        self,
        replies: Reply = "Hello! This is a scripted reply.",
        *,
        chunk_tokens: int = 1,
        delay: float = 0.0,
        capacity: int = 1,
        context_tokens: int = 4096,
        start_delay: float = 0.0,
    ) -> None:
        if chunk_tokens < 1 or capacity < 1:
            raise ValueError("chunk_tokens and capacity must be at least 1")
        self._replies = replies
        self._reply_index = 0
        self.chunk_tokens = chunk_tokens
        self.delay = delay
        self._capacity = capacity
        self._context = context_tokens
        self.start_delay = start_delay
        self.prompts: list[str] = []
        self.requests: list[GenerationRequest] = []
        self.active = 0
        self.max_active = 0
        self.starts = 0
        self.closes = 0
        self.completed = 0
        self.cancelled = 0
        self.running = False
        self._broken = False
        self._faults: deque[Fault] = deque()
        self._start_failures = 0
        self._gate = asyncio.Event()
        self._gate.set()

    # ---- Engine --------------------------------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def context_tokens(self) -> int:
        return self._context

    @property
    def broken(self) -> bool:
        return self._broken

    async def start(self) -> None:
        self.starts += 1
        if self.start_delay:
            await asyncio.sleep(self.start_delay)
        if self._start_failures:
            self._start_failures -= 1
            raise EngineUnavailable("the scripted engine was told to fail this start")
        self._broken = False
        self.running = True

    async def close(self) -> None:
        self.closes += 1
        self.running = False

    def count_tokens(self, text: str) -> int:
        return len(split_tokens(text))

    def stream(self, request: GenerationRequest) -> GenerationStream:
        if not self.running:
            raise EngineUnavailable("the scripted engine is not started")
        prompt_tokens = self.check_fits(request)
        self.prompts.append(request.prompt)
        self.requests.append(request)
        fault = self._faults.popleft() if self._faults else None
        return _ScriptedStream(self, request, self._next_reply(request.prompt), prompt_tokens, fault)

    # ---- scripting -----------------------------------------------------------------------------------------------

    def set_replies(self, replies: Reply) -> None:
        self._replies = replies
        self._reply_index = 0

    def pause(self) -> None:
        """Streams stop before their next chunk until resume()."""
        self._gate.clear()

    def resume(self) -> None:
        self._gate.set()

    def fail_next(self, error: BaseException | None = None, *, after_chunks: int = 0, broken: bool = False) -> None:
        """The next stream raises ``error`` after ``after_chunks`` chunks (default: EngineError, or EngineBroken
        with ``broken=True``, which also marks the engine broken)."""
        if error is None:
            error = EngineBroken("the scripted engine broke") if broken else EngineError("scripted engine failure")
        self._faults.append(Fault("raise", after_chunks, error, broken))

    def oom_next(self, *, after_chunks: int = 0, broken: bool = False) -> None:
        """The next stream runs out of memory (EngineOutOfMemory), optionally leaving the engine broken."""
        error = EngineOutOfMemory("the scripted engine ran out of memory")
        self.fail_next(error, after_chunks=after_chunks, broken=broken)

    def hang_next(self, *, after_chunks: int = 0) -> None:
        """The next stream stops producing after ``after_chunks`` chunks until it is cancelled."""
        self._faults.append(Fault("hang", after_chunks))

    def mark_broken(self) -> None:
        self._broken = True

    def fail_starts(self, count: int) -> None:
        """The next ``count`` start() calls raise EngineUnavailable."""
        self._start_failures = count

    def _next_reply(self, prompt: str) -> str:
        replies = self._replies
        if callable(replies):
            return replies(prompt)
        if isinstance(replies, str):
            return replies
        if not replies:
            return ""
        reply = replies[min(self._reply_index, len(replies) - 1)]
        self._reply_index += 1
        return reply


class _ScriptedStream(GenerationStream):
    def __init__(
        self, engine: ScriptedEngine, request: GenerationRequest, reply: str, prompt_tokens: int, fault: Fault | None
    ) -> None:
        self._engine = engine
        self._request = request
        self._reply = reply
        self._prompt_tokens = prompt_tokens
        self._fault = fault
        self._cancelled = asyncio.Event()
        self._iterating = False
        self.result = None

    def __aiter__(self) -> AsyncIterator[str]:
        if self._iterating:
            raise RuntimeError("a generation stream can be iterated only once")
        self._iterating = True
        return self._generate()

    async def cancel(self) -> None:
        self._cancelled.set()
        if self.result is None and not self._iterating:
            self._engine.cancelled += 1
            self._finish("", "cancelled", 0, time.monotonic(), None)

    async def _pause_or_cancel(self, seconds: float | None) -> bool:
        """Wait for the gate, then ``seconds`` (None = until cancelled); True if cancelled meanwhile."""
        gate = self._engine._gate
        if gate.is_set() and seconds == 0:
            await asyncio.sleep(0)  # a real engine yields between tokens; so does this one
            return self._cancelled.is_set()
        cancelled = asyncio.ensure_future(self._cancelled.wait())
        try:
            if not gate.is_set():
                opened = asyncio.ensure_future(gate.wait())
                await asyncio.wait([cancelled, opened], return_when=asyncio.FIRST_COMPLETED)
                opened.cancel()
            if not self._cancelled.is_set() and (seconds is None or seconds > 0):
                await asyncio.wait([cancelled], timeout=seconds)
        finally:
            cancelled.cancel()
        return self._cancelled.is_set()

    async def _generate(self) -> AsyncIterator[str]:
        engine, request = self._engine, self._request
        began = time.monotonic()
        first: float | None = None
        tokens = split_tokens(self._reply)
        limit = min(len(tokens), request.max_new_tokens)
        stops = StopMatcher(request.stop)
        text: list[str] = []
        used = 0
        reason: FinishReason = "error"
        engine.active += 1
        engine.max_active = max(engine.max_active, engine.active)
        try:
            chunk_index = 0
            while used < limit:
                if self._fault is not None and chunk_index == self._fault.after_chunks:
                    fault, self._fault = self._fault, None
                    if fault.kind == "hang":
                        await self._pause_or_cancel(None)
                        reason = "cancelled"
                        break
                    if fault.mark_broken:
                        engine._broken = True
                    assert fault.error is not None
                    raise fault.error
                if await self._pause_or_cancel(engine.delay):
                    reason = "cancelled"
                    break
                take = min(engine.chunk_tokens, limit - used)
                piece = "".join(tokens[used : used + take])
                used += take
                chunk_index += 1
                shown = stops.feed(piece)
                if shown:
                    if first is None:
                        first = time.monotonic() - began
                    text.append(shown)
                    yield shown
                if stops.stopped:
                    reason = "stop"
                    break
            else:
                rest = stops.flush()
                if rest:
                    if first is None:
                        first = time.monotonic() - began
                    text.append(rest)
                    yield rest
                reason = "length" if limit < len(tokens) else "eos"
        except (asyncio.CancelledError, GeneratorExit):
            reason = "cancelled"
            raise
        finally:
            engine.active -= 1
            if reason == "cancelled":
                engine.cancelled += 1
            elif reason != "error":
                engine.completed += 1
            self._finish("".join(text), reason, used, began, first)

    def _finish(self, text: str, reason: FinishReason, used: int, began: float, first: float | None) -> None:
        self.result = GenerationResult(
            text=text,
            finish_reason=reason,
            prompt_tokens=self._prompt_tokens,
            completion_tokens=used,
            time_to_first_token=first,
            total_seconds=time.monotonic() - began,
        )
