"""The llama.cpp engine: GGUF models on CPU (or partly offloaded to a GPU) through llama-cpp-python.

One ``Llama`` instance holds one context, so the engine runs one stream at a time (capacity 1). All llama.cpp calls
happen on one worker thread (the event loop never blocks, and the library is not thread-safe). Keeping that one
instance between requests lets llama-cpp-python reuse the KV cache for the longest prefix the new prompt shares with
the previous one, which is why the prompt builder keeps the start of the prompt stable.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.generation.base import (
    Engine,
    EngineError,
    EngineNotInstalled,
    EngineUnavailable,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    GenerationStream,
    PromptTooLong,
)
from bot.generation.stops import StopMatcher

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from bot.config import Settings

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'rpbot[cpu]'"
GGUF_MAGIC = b"GGUF"
_DONE = object()  # end-of-stream marker in a stream's buffer
CHUNK_INTERVAL = 0.05  # seconds: the worker wakes the event loop at most this often with new text


def check_gguf_file(path: Path) -> None:
    """Raise EngineError saying what is wrong unless ``path`` is a readable GGUF file."""
    if not path.exists():
        raise EngineError(f"RPBOT_MODEL_PATH: {path} does not exist; point it at a .gguf model file")
    if not path.is_file():
        raise EngineError(f"RPBOT_MODEL_PATH: {path} is a folder; the llama.cpp engine needs a single .gguf file")
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise EngineError(f"RPBOT_MODEL_PATH: cannot read {path}: {exc.strerror}") from None
    if magic != GGUF_MAGIC:
        raise EngineError(
            f"RPBOT_MODEL_PATH: {path} is not a GGUF file; the llama.cpp engine needs a .gguf model "
            "(for an EXL2 or safetensors folder use RPBOT_ENGINE=exllamav2)"
        )


def import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError:
        raise EngineNotInstalled(f"the llama.cpp engine needs llama-cpp-python: run {INSTALL_HINT}") from None
    return llama_cpp


class LlamaCppEngine(Engine):
    name = "llamacpp"

    def __init__(
        self,
        model_path: Path,
        *,
        context_tokens: int = 4096,
        threads: int | None = None,
        gpu_layers: int = 0,
        batch_size: int = 512,
    ) -> None:
        self.model_path = Path(model_path)
        self._n_ctx = context_tokens
        self.threads = threads
        self.gpu_layers = gpu_layers
        self.batch_size = batch_size
        self._llm: Any = None
        self._lib: Any = None
        self._executor: ThreadPoolExecutor | None = None
        self._broken = False
        self._streams: set[_LlamaCppStream] = set()
        # Per loaded model, on the worker thread: token id -> (its text bytes, whether it ends generation). Each is
        # a llama.cpp call and a buffer copy per token otherwise, a tenth of a fast model's time per token.
        self._pieces: dict[int, tuple[bytes, bool]] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> LlamaCppEngine:
        if settings.model_path is None:
            raise EngineError("RPBOT_MODEL_PATH is not set: point it at a .gguf model file (RPBOT_ENGINE=llamacpp)")
        return cls(
            settings.model_path,
            context_tokens=settings.context_tokens,
            threads=settings.llamacpp_threads,
            gpu_layers=settings.llamacpp_gpu_layers,
        )

    @property
    def capacity(self) -> int:
        return 1

    @property
    def context_tokens(self) -> int:
        return self._n_ctx

    @property
    def broken(self) -> bool:
        return self._broken

    @property
    def llama(self) -> Any:
        """The loaded ``llama_cpp.Llama`` (None before start); for diagnostics and tests."""
        return self._llm

    async def start(self) -> None:
        if self._llm is not None:
            return
        self._lib = import_llama_cpp()
        check_gguf_file(self.model_path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llamacpp")
        loop = asyncio.get_running_loop()
        try:
            self._llm = await loop.run_in_executor(self._executor, self._load)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        self._broken = False
        log.info(
            "llama.cpp loaded %s (context %d tokens, %s threads, %d GPU layers)",
            self.model_path.name,
            self._n_ctx,
            self._llm.n_threads,
            self.gpu_layers,
        )

    def _load(self) -> Any:
        self._pieces = {}
        try:
            return self._lib.Llama(
                model_path=str(self.model_path),
                n_ctx=self._n_ctx,
                n_batch=min(self.batch_size, self._n_ctx),
                n_threads=self.threads,
                n_threads_batch=self.threads,
                n_gpu_layers=self.gpu_layers,
                verbose=False,
            )
        except Exception as exc:
            raise EngineError(
                f"llama.cpp could not load {self.model_path}: {exc}. Is the file complete, and a model "
                "architecture this llama-cpp-python version supports?"
            ) from None

    async def close(self) -> None:
        for stream in list(self._streams):
            stream.request_stop()
        llm, self._llm = self._llm, None
        executor, self._executor = self._executor, None
        if executor is None:
            return
        if llm is not None:
            # On the worker thread, after any generation still finishing its current token.
            await asyncio.get_running_loop().run_in_executor(executor, llm.close)
        executor.shutdown(wait=False)

    def _require(self) -> Any:
        if self._llm is None:
            raise EngineUnavailable("the llama.cpp engine is not started")
        return self._llm

    def tokenize(self, text: str, *, add_bos: bool = False) -> list[int]:
        """Token ids by the model's own tokenizer (role markers are plain text, as in the Metharme format)."""
        return list(self._require().tokenize(text.encode("utf-8"), add_bos=add_bos, special=False))

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text)) if text else 0

    def stream(self, request: GenerationRequest) -> GenerationStream:
        tokens = self.tokenize(request.prompt, add_bos=True)
        if len(tokens) + request.max_new_tokens > self._n_ctx:
            raise PromptTooLong(len(tokens), request.max_new_tokens, self._n_ctx)
        return _LlamaCppStream(self, request, tokens)


class _LlamaCppStream(GenerationStream):
    """Generation on the engine's worker thread; chunks cross to the event loop through an asyncio queue."""

    def __init__(self, engine: LlamaCppEngine, request: GenerationRequest, tokens: list[int]) -> None:
        self._engine = engine
        self._request = request
        self._tokens = tokens
        self._stop = threading.Event()
        self._future: asyncio.Future[GenerationResult] | None = None
        self._iterating = False
        self.result = None

    def request_stop(self) -> None:
        self._stop.set()

    def __aiter__(self) -> AsyncIterator[str]:
        if self._iterating:
            raise RuntimeError("a generation stream can be iterated only once")
        self._iterating = True
        return self._iterate()

    async def cancel(self) -> None:
        self._stop.set()
        if self._future is None:
            if self.result is None:
                self.result = GenerationResult("", "cancelled", prompt_tokens=len(self._tokens))
            return
        with contextlib.suppress(Exception):  # the iterator reports a failure
            self.result = await asyncio.shield(self._future)

    async def _iterate(self) -> AsyncIterator[str]:
        engine = self._engine
        if engine._executor is None or engine._llm is None:
            raise EngineUnavailable("the llama.cpp engine is not started")
        loop = asyncio.get_running_loop()
        # Text crosses from the worker in a shared buffer. Waking the loop costs a self-pipe write, a loop turn and
        # GIL hand-overs with the worker that slow it down: once per token that was a third of a fast model's
        # tokens/s, every 10 ms still 5-8% on the tiny test model. So the worker wakes the loop for the first text
        # and the end at once, and in between at most every CHUNK_INTERVAL (or at the next token, when tokens come
        # slower than that); the text that piled up arrives as one chunk. Discord shows a reply at most once a
        # second and a terminal 20 updates a second, so nobody sees the difference.
        lock = threading.Lock()
        buffer: list[object] = []
        ready = asyncio.Event()
        waking = False
        last_wake = 0.0

        def emit(item: object) -> None:
            nonlocal waking, last_wake
            now = time.monotonic()
            with lock:
                buffer.append(item)
                if waking or (item is not _DONE and last_wake and now - last_wake < CHUNK_INTERVAL):
                    return
                waking = True
                last_wake = now
            with contextlib.suppress(RuntimeError):  # the loop is gone (shutdown): nobody is listening
                loop.call_soon_threadsafe(ready.set)

        engine._streams.add(self)
        self._future = loop.run_in_executor(engine._executor, self._generate, engine._llm, emit)
        # A consumer that stops early never awaits the worker; retrieve its outcome so nothing is reported unseen.
        self._future.add_done_callback(lambda done: done.cancelled() or done.exception())
        try:
            finished = False
            while not finished:
                await ready.wait()
                with lock:
                    items, buffer[:] = buffer[:], []
                    waking = False
                    ready.clear()
                finished = items[-1] is _DONE if items else False
                text = "".join(item for item in items if isinstance(item, str))
                if text:
                    yield text
            self.result = await self._future
        finally:
            # Whatever ends the iteration (the end, a break, a cancelled task) also stops the worker.
            self._stop.set()
            engine._streams.discard(self)

    def _generate(self, llm: Any, emit: Any) -> GenerationResult:
        """Runs on the worker thread."""
        try:
            return self._generate_tokens(llm, emit)
        except EngineError:
            raise
        except Exception as exc:
            # A failed decode can leave the context inconsistent: have the queue reload the model.
            self._engine._broken = True
            log.exception("llama.cpp generation failed")
            raise EngineError(f"llama.cpp failed while generating: {exc}") from None
        finally:
            emit(_DONE)

    def _generate_tokens(self, llm: Any, emit: Any) -> GenerationResult:
        request, params = self._request, self._request.params
        lib, vocab, pieces = self._engine._lib, llm._model.vocab, self._engine._pieces
        began = time.monotonic()
        llm.set_seed(params.seed if params.seed is not None else random.randrange(2**31))
        stops = StopMatcher(request.stop)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        parts: list[str] = []
        first: float | None = None
        produced = 0
        reason: FinishReason = "length"

        def show(text: str) -> None:
            nonlocal first
            if text:
                if first is None:
                    first = time.monotonic() - began
                parts.append(text)
                emit(text)

        generator = llm.generate(
            self._tokens,
            top_k=params.top_k,
            top_p=params.top_p,
            min_p=params.min_p,
            typical_p=1.0,
            temp=params.temperature,
            repeat_penalty=params.repetition_penalty,
        )
        try:
            if self._stop.is_set():
                reason = "cancelled"
            else:
                for token in generator:
                    if self._stop.is_set():
                        reason = "cancelled"
                        break
                    piece = pieces.get(token)
                    if piece is None:
                        piece = pieces[token] = (llm.detokenize([token]), bool(lib.llama_vocab_is_eog(vocab, token)))
                    if piece[1]:
                        reason = "eos"
                        break
                    produced += 1
                    show(stops.feed(decoder.decode(piece[0])))
                    if stops.stopped:
                        reason = "stop"
                        break
                    if produced >= request.max_new_tokens:
                        break
        finally:
            generator.close()
        if reason in ("length", "eos"):
            show(stops.feed(decoder.decode(b"", final=True)))
            show(stops.flush())
            if stops.stopped:
                reason = "stop"
        return GenerationResult(
            text="".join(parts),
            finish_reason=reason,
            prompt_tokens=len(self._tokens),
            completion_tokens=produced,
            time_to_first_token=first,
            total_seconds=time.monotonic() - began,
        )
