"""The ExLlamaV2 engine: an EXL2/FP16 model on an NVIDIA GPU, serving many channels through one dynamic generator.

``exllamav2`` is imported lazily, in :meth:`ExLlamaV2Engine.start`: importing it compiles a CUDA extension (minutes
the first time) and fails with ``OSError`` on machines without CUDA, which is turned into a clear
:class:`~bot.generation.base.EngineNotInstalled`.

With flash-attn (2.5.7 or later) the generator runs paged: continuous batching of up to ``max_batch_size``
generations and reuse of cached prompt prefixes in 256-token pages. Without it, it runs unpaged, one generation at a
time, and :attr:`ExLlamaV2Engine.capacity` tells the queue so.

Each generation is one ``ExLlamaV2DynamicJobAsync`` with a fresh sampler ``Settings`` (DRY and mirostat keep state
on it), our stop strings plus the EOS token id as stop conditions (the library does not stop on EOS by itself), and
a prompt length checked before the job is enqueued (the library asserts on jobs larger than the cache). A generator
exception reaches every job: the engine fails those generations and builds a fresh generator on the loaded model;
only when that fails too is the engine :attr:`~ExLlamaV2Engine.broken`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.generation._exl_plan import GeneratorPlan, plan_generator
from bot.generation._exl_progress import LoadProgress
from bot.generation.base import (
    Engine,
    EngineBroken,
    EngineError,
    EngineNotInstalled,
    EngineUnavailable,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    GenerationStream,
    PromptTooLong,
    SamplerParams,
)

if TYPE_CHECKING:
    from bot.config import Settings

log = logging.getLogger(__name__)

INSTALL_HINT = "install with pip install 'rpbot[gpu]' or use RPBOT_ENGINE=llamacpp/openai"
NEEDS_CUDA = f"ExLlamaV2 needs an NVIDIA GPU with CUDA; {INSTALL_HINT}"

# RPBOT_EXLLAMAV2_CACHE_TYPE -> exllamav2 cache class. Quantized caches hold 2-4x the tokens in the same memory.
CACHE_CLASS_NAMES: dict[str, str] = {
    "fp16": "ExLlamaV2Cache",
    "q8": "ExLlamaV2Cache_Q8",
    "q6": "ExLlamaV2Cache_Q6",
    "q4": "ExLlamaV2Cache_Q4",
}

# exllamav2's eos_reason -> our finish reason.
_FINISH_REASONS: dict[str, FinishReason] = {
    "stop_token": "eos",
    "stop_string": "stop",
    "max_new_tokens": "length",
    "end_filter": "stop",
}


def _describe(exc: BaseException) -> str:
    """One short line for logs and user-facing errors: the type and the first line of the message."""
    text = str(exc).strip().splitlines()[0].strip() if str(exc).strip() else ""
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(frozen=True, slots=True)
class ExLlamaV2Library:
    """The parts of exllamav2 the engine uses."""

    version: str
    config_cls: Any
    model_cls: Any
    tokenizer_cls: Any
    cache_classes: dict[str, Any]
    generator_cls: Any
    job_cls: Any
    sampler_settings_cls: Any
    has_paged_attention: bool


def import_exllamav2() -> ExLlamaV2Library:
    """Import exllamav2, turning every way that fails into EngineNotInstalled with the remedy."""
    try:
        import exllamav2  # type: ignore[import-not-found, unused-ignore]
        from exllamav2 import attn  # type: ignore[import-not-found, unused-ignore]
        from exllamav2.generator import (  # type: ignore[import-not-found, unused-ignore]
            ExLlamaV2DynamicGeneratorAsync,
            ExLlamaV2DynamicJobAsync,
            ExLlamaV2Sampler,
        )
    except ModuleNotFoundError as exc:
        missing = (exc.name or "exllamav2").split(".")[0]
        if missing == "exllamav2":
            raise EngineNotInstalled(f"ExLlamaV2 is not installed. {NEEDS_CUDA}") from None
        raise EngineNotInstalled(f"ExLlamaV2 is installed but cannot import {missing!r}. {NEEDS_CUDA}") from None
    except OSError as exc:  # CUDA_HOME unset or the CUDA libraries missing: a machine without CUDA
        raise EngineNotInstalled(f"{NEEDS_CUDA} (exllamav2 found no CUDA: {_describe(exc)})") from None
    except Exception as exc:  # e.g. its CUDA extension failed to compile
        raise EngineNotInstalled(f"{NEEDS_CUDA} (exllamav2 failed to load: {_describe(exc)})") from None
    return ExLlamaV2Library(
        version=str(getattr(exllamav2, "__version__", "?")),
        config_cls=exllamav2.ExLlamaV2Config,
        model_cls=exllamav2.ExLlamaV2,
        tokenizer_cls=exllamav2.ExLlamaV2Tokenizer,
        cache_classes={key: getattr(exllamav2, name) for key, name in CACHE_CLASS_NAMES.items()},
        generator_cls=ExLlamaV2DynamicGeneratorAsync,
        job_cls=ExLlamaV2DynamicJobAsync,
        sampler_settings_cls=ExLlamaV2Sampler.Settings,
        has_paged_attention=bool(getattr(attn, "has_flash_attn_with_paged", False)),
    )


def make_sampler_settings(settings_cls: Any, params: SamplerParams) -> Any:
    """A new exllamav2 ``Settings`` from a channel's params (never shared: DRY/mirostat keep state on it).

    The library's defaults are not neutral (temperature 0.8, top_k 50, top_p 0.8, repetition penalty 1.025), so
    every field we have is set. Temperature 0 means greedy decoding.
    """
    settings = settings_cls()
    if params.temperature <= 0.0:
        settings.temperature = 1.0
        settings.top_k = 1
        settings.top_p = 0.0
        settings.min_p = 0.0
    else:
        settings.temperature = float(params.temperature)
        settings.top_k = int(params.top_k)  # 0 = off in both
        settings.top_p = float(params.top_p)  # 1.0 = off in both
        settings.min_p = float(params.min_p)
    settings.token_repetition_penalty = float(params.repetition_penalty)
    return settings


def _cuda_missing() -> str | None:
    """Why PyTorch cannot use a GPU, or None. exllamav2 imported torch already; a stand-in library has none."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if not torch.cuda.is_available():
            return "PyTorch sees no CUDA GPU"
    except Exception as exc:
        return f"PyTorch cannot query CUDA: {_describe(exc)}"
    return None


def _is_out_of_memory(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


class ExLlamaV2Stream(GenerationStream):
    """One generation on the dynamic generator.

    A pump task moves the job's results into a local queue as they arrive, so timing does not depend on how fast
    the consumer reads, and :meth:`cancel` can end iteration at once (the library's job iterator would wait forever
    after a cancel).
    """

    def __init__(self, engine: ExLlamaV2Engine, generator: Any, request: GenerationRequest, prompt_tokens: int) -> None:
        self.engine = engine
        self.generator = generator
        self.request = request
        self.prompt_tokens = prompt_tokens
        self.result: GenerationResult | None = None
        self._items: asyncio.Queue[str | BaseException | None] = asyncio.Queue()
        self._text: list[str] = []
        self._job: Any = None
        self._pump: asyncio.Task[None] | None = None
        self._started = time.monotonic()
        self._first_text_at: float | None = None
        self._tokens = 0

    @property
    def finished(self) -> bool:
        return self.result is not None

    def _begin(self, job: Any) -> None:
        self._job = job
        self._pump = asyncio.create_task(self._run(), name="exllamav2-stream")

    async def _run(self) -> None:
        try:
            async for result in self._job:
                if self._on_result(result):
                    return
            self._finish("cancelled")  # the job iterator only ends without EOS when the job was cancelled
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.engine._generator_failed(self.generator, exc)
            self._fail(EngineError(f"the GPU generator failed ({_describe(exc)})"))

    def _on_result(self, result: dict[str, Any]) -> bool:
        """Handle one result dict; True when the generation ended."""
        if result.get("stage") != "streaming":
            return False  # "started" and "prefill" progress
        self._tokens += 1
        text = result.get("text") or ""
        if text:
            if self._first_text_at is None:
                self._first_text_at = time.monotonic()
            self._text.append(text)
            self._items.put_nowait(text)
        if not result.get("eos"):
            return False
        reason = _FINISH_REASONS.get(str(result.get("eos_reason")), "stop")
        self._finish(reason, completion_tokens=int(result.get("new_tokens", self._tokens)))
        return True

    def _finish(
        self, reason: FinishReason, *, completion_tokens: int | None = None, error: BaseException | None = None
    ) -> None:
        if self.result is not None:
            return
        now = time.monotonic()
        self.result = GenerationResult(
            text="".join(self._text),
            finish_reason=reason,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self._tokens if completion_tokens is None else completion_tokens,
            time_to_first_token=None if self._first_text_at is None else self._first_text_at - self._started,
            total_seconds=now - self._started,
        )
        self.engine._streams.discard(self)
        self._items.put_nowait(error)  # None ends iteration; an exception is raised to the consumer

    def _fail(self, error: BaseException) -> None:
        self._finish("error", error=error)
        if self._pump is not None and self._pump is not asyncio.current_task():
            self._pump.cancel()

    async def __aiter__(self) -> AsyncIterator[str]:
        try:
            while True:
                item = await self._items.get()
                if isinstance(item, str):
                    yield item
                    continue
                self._items.put_nowait(item)  # a second iteration ends the same way
                if item is not None:
                    raise item
                return
        finally:
            if self.result is None:  # the consumer stopped reading: nobody wants the rest
                await self.cancel()

    async def cancel(self) -> None:
        """Stop the generation; safe at any time, also after it finished or failed."""
        if self.result is not None:
            return
        self._finish("cancelled")
        if self._pump is not None and self._pump is not asyncio.current_task():
            self._pump.cancel()
        if self._job is not None:
            await self.engine._cancel_job(self.generator, self._job)


class ExLlamaV2Engine(Engine):
    """Pygmalion-2 (or any Llama-family EXL2/GPTQ/FP16 model) on the GPU via ExLlamaV2's dynamic generator."""

    name = "exllamav2"

    def __init__(
        self,
        model_path: Path | str,
        *,
        context_tokens: int = 4096,
        max_new_tokens: int = 300,
        cache_type: str = "q4",
        cache_tokens: int | None = None,
        max_batch_size: int = 8,
        chunk_size: int = 2048,
        show_progress: bool = True,
    ) -> None:
        cache_key = str(getattr(cache_type, "value", cache_type)).strip().lower()
        if cache_key not in CACHE_CLASS_NAMES:
            raise EngineError(
                f"RPBOT_EXLLAMAV2_CACHE_TYPE {cache_type!r} is not known; use one of {', '.join(CACHE_CLASS_NAMES)}"
            )
        self.model_path = Path(model_path)
        self.requested_context = context_tokens
        self.max_new_tokens = max_new_tokens
        self.cache_type = cache_key
        self.requested_cache_tokens = cache_tokens
        self.requested_batch_size = max_batch_size
        self.requested_chunk_size = chunk_size
        self.show_progress = show_progress
        self.rebuilds = 0  # generators rebuilt after a failure, for metrics and tests
        self.library_version: str | None = None
        self._lib: ExLlamaV2Library | None = None
        self._config: Any = None
        self._model: Any = None
        self._cache: Any = None
        self._tokenizer: Any = None
        self._generator: Any = None
        self._plan: GeneratorPlan | None = None
        self._eos_ids: tuple[int, ...] = ()
        self._streams: set[ExLlamaV2Stream] = set()
        self._broken = False
        self._lifecycle = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> ExLlamaV2Engine:
        if settings.model_path is None:
            raise EngineError("RPBOT_MODEL_PATH is not set: point it at an EXL2/FP16 model folder")
        return cls(
            settings.model_path,
            context_tokens=settings.context_tokens,
            max_new_tokens=settings.max_new_tokens,
            cache_type=settings.exllamav2_cache_type,
            cache_tokens=settings.exllamav2_cache_tokens,
            max_batch_size=settings.exllamav2_max_batch_size,
            chunk_size=settings.exllamav2_chunk_size,
        )

    # ---- Engine interface ----------------------------------------------------------------------------------------

    @property
    def plan(self) -> GeneratorPlan | None:
        """The sizes in use once started."""
        return self._plan

    @property
    def capacity(self) -> int:
        """Generations run at once: the batch size when paged, 1 when unpaged (certain only after start())."""
        return self._plan.max_batch_size if self._plan is not None else self.requested_batch_size

    @property
    def context_tokens(self) -> int:
        return self._plan.context_tokens if self._plan is not None else self.requested_context

    @property
    def broken(self) -> bool:
        return self._broken

    @property
    def started(self) -> bool:
        return self._generator is not None

    @property
    def active_streams(self) -> int:
        return len(self._streams)

    async def start(self) -> None:
        async with self._lifecycle:
            if self._generator is not None and not self._broken:
                return
            if self._model is not None or self._broken:
                await self._release()
            self._check_model_dir()
            lib = await asyncio.to_thread(import_exllamav2)
            self._lib = lib
            self.library_version = lib.version
            await asyncio.to_thread(self._load, lib)
            try:
                self._generator = self._build_generator()
            except Exception as exc:
                await self._release()
                raise EngineError(f"ExLlamaV2 could not build its generator: {_describe(exc)}") from None
            self._broken = False
            plan = self._plan
            assert plan is not None
            log.info(
                "ExLlamaV2 %s ready: %s, %s, batch %d, context %d, %s cache of %d tokens (%d full contexts), chunk %d",
                lib.version,
                self.model_path.name,
                "paged (continuous batching)" if plan.paged else "unpaged (one generation at a time)",
                plan.max_batch_size,
                plan.context_tokens,
                self.cache_type,
                plan.cache_tokens,
                plan.full_contexts,
                plan.chunk_size,
            )

    async def close(self) -> None:
        async with self._lifecycle:
            await self._release()

    def count_tokens(self, text: str) -> int:
        if not text:
            return 0
        return int(self._require_tokenizer().encode(text, add_bos=False, encode_special_tokens=False).shape[-1])

    def check_fits(self, request: GenerationRequest) -> int:
        """Prompt tokens including BOS; raises PromptTooLong when prompt + max_new_tokens exceed the context."""
        tokens = int(self._encode_prompt(request.prompt).shape[-1])
        if tokens + request.max_new_tokens > self.context_tokens:
            raise PromptTooLong(tokens, request.max_new_tokens, self.context_tokens)
        return tokens

    def stream(self, request: GenerationRequest) -> ExLlamaV2Stream:
        if self._broken:
            raise EngineBroken("the ExLlamaV2 generator failed and could not be rebuilt; the engine must restart")
        if self._generator is None or self._lib is None:
            raise EngineUnavailable("the ExLlamaV2 engine is not started")
        if request.max_new_tokens < 1:
            raise EngineError(f"max_new_tokens must be at least 1 (got {request.max_new_tokens})")
        input_ids = self._encode_prompt(request.prompt)
        prompt_tokens = int(input_ids.shape[-1])
        # The generator asserts on a job larger than the cache and would leave itself spinning: check first.
        if prompt_tokens + request.max_new_tokens > self.context_tokens:
            raise PromptTooLong(prompt_tokens, request.max_new_tokens, self.context_tokens)
        generator = self._live_generator()
        stream = ExLlamaV2Stream(self, generator, request, prompt_tokens)
        registered = set(generator.jobs)
        try:
            job = self._lib.job_cls(
                generator,
                input_ids=input_ids,
                max_new_tokens=request.max_new_tokens,
                min_new_tokens=0,
                gen_settings=make_sampler_settings(self._lib.sampler_settings_cls, request.params),
                seed=request.params.seed,
                stop_conditions=self.stop_conditions(request.stop),
                banned_strings=[s for s in request.banned_strings if s] or None,
                decode_special_tokens=False,
                token_healing=False,
            )
        except Exception as exc:
            # The async wrapper registers a job before the generator accepts it; a leftover entry would keep its
            # loop spinning with nothing to do.
            for key in set(generator.jobs) - registered:
                generator.jobs.pop(key, None)
            raise EngineError(f"ExLlamaV2 refused the generation: {_describe(exc)}") from None
        self._streams.add(stream)
        stream._begin(job)
        return stream

    # ---- helpers -------------------------------------------------------------------------------------------------

    def stop_conditions(self, stop: Iterable[str]) -> list[str | int]:
        """Our stop strings (deduplicated, non-empty) and the EOS token ids, which the library needs spelled out."""
        conditions: list[str | int] = [s for s in dict.fromkeys(stop) if s]
        conditions.extend(self._eos_ids)
        return conditions

    def _require_tokenizer(self) -> Any:
        if self._tokenizer is None:
            raise EngineUnavailable("the ExLlamaV2 engine is not started")
        return self._tokenizer

    def _encode_prompt(self, prompt: str) -> Any:
        # The prompt builder writes no BOS; role markers are plain text, and "</s>" typed by a user stays text.
        return self._require_tokenizer().encode(prompt, add_bos=True, encode_special_tokens=False)

    def _check_model_dir(self) -> None:
        path = self.model_path
        if not path.exists():
            raise EngineError(f"RPBOT_MODEL_PATH: {path} does not exist")
        if not path.is_dir():
            raise EngineError(
                f"RPBOT_MODEL_PATH: {path} is a file; ExLlamaV2 needs a model folder (for a .gguf file use "
                "RPBOT_ENGINE=llamacpp)"
            )
        if not (path / "config.json").is_file():
            raise EngineError(f"RPBOT_MODEL_PATH: {path} has no config.json (needs a Hugging Face model folder)")
        if not (path / "tokenizer.json").is_file():
            raise EngineError(
                f"RPBOT_MODEL_PATH: {path} has no tokenizer.json; ExLlamaV2 cannot use a SentencePiece-only "
                "tokenizer, so copy tokenizer.json from the original model"
            )
        if not any(path.glob("*.safetensors")):
            raise EngineError(
                f"RPBOT_MODEL_PATH: {path} has no .safetensors weights (ExLlamaV2 loads EXL2, GPTQ or FP16 "
                "safetensors; for a .gguf file use RPBOT_ENGINE=llamacpp)"
            )

    def _load(self, lib: ExLlamaV2Library) -> None:
        """Read the config, size the generator, load weights and cache. Runs in a worker thread."""
        problem = _cuda_missing()
        if problem is not None:
            raise EngineNotInstalled(f"{NEEDS_CUDA} ({problem})")
        try:
            config = lib.config_cls(str(self.model_path))
        except Exception as exc:
            raise EngineError(f"RPBOT_MODEL_PATH: ExLlamaV2 cannot read {self.model_path}: {_describe(exc)}") from None
        with contextlib.suppress(AttributeError):
            config.arch_compat_overrides(quiet=True)
        paged = lib.has_paged_attention and not getattr(config, "no_flash_attn", False)
        plan = plan_generator(
            context_tokens=self.requested_context,
            model_max_seq_len=int(config.max_seq_len),
            max_new_tokens=self.max_new_tokens,
            cache_tokens=self.requested_cache_tokens,
            max_batch_size=self.requested_batch_size,
            chunk_size=self.requested_chunk_size,
            paged=paged,
        )
        for note in plan.notes:
            log.warning("%s", note)
        config.max_seq_len = plan.context_tokens
        config.max_input_len = plan.chunk_size
        config.max_attention_size = plan.chunk_size**2
        model = lib.model_cls(config)
        try:
            cache = lib.cache_classes[self.cache_type](model, max_seq_len=plan.cache_tokens, lazy=True)
            progress = LoadProgress(f"Loading {self.model_path.name}") if self.show_progress else None
            model.load_autosplit(cache, callback=progress)
            tokenizer = lib.tokenizer_cls(config)
        except Exception as exc:
            with contextlib.suppress(Exception):
                model.unload()
            if _is_out_of_memory(exc):
                raise EngineError(
                    f"not enough GPU memory for the model and a {plan.cache_tokens}-token {self.cache_type} cache: "
                    "lower RPBOT_EXLLAMAV2_CACHE_TOKENS or RPBOT_EXLLAMAV2_MAX_BATCH_SIZE, or use "
                    "RPBOT_EXLLAMAV2_CACHE_TYPE=q4"
                ) from None
            raise EngineError(f"ExLlamaV2 could not load {self.model_path}: {_describe(exc)}") from None
        eos: list[int] = []
        for value in (getattr(tokenizer, "eos_token_id", None), *self._generation_config_eos(config)):
            if isinstance(value, int) and value >= 0 and value not in eos:
                eos.append(value)
        if not eos:
            log.warning("the model defines no EOS token; generations end only on stop strings or max_new_tokens")
        self._config, self._model, self._cache, self._tokenizer = config, model, cache, tokenizer
        self._plan, self._eos_ids = plan, tuple(eos)
        summary = self._vram_summary()
        if summary:
            log.info("VRAM: %s", summary)

    @staticmethod
    def _generation_config_eos(config: Any) -> list[Any]:
        generation_config = getattr(config, "generation_config", None)
        if not isinstance(generation_config, dict):
            return []
        ids = generation_config.get("eos_token_id")
        return list(ids) if isinstance(ids, list) else []

    def _vram_summary(self) -> str | None:
        torch = sys.modules.get("torch")
        if torch is None or self._cache is None:
            return None
        try:
            gib = 1024**3
            parts = []
            for index in range(torch.cuda.device_count()):
                allocated = torch.cuda.memory_allocated(index)
                if not allocated:
                    continue
                free, total = torch.cuda.mem_get_info(index)
                parts.append(
                    f"GPU {index} ({torch.cuda.get_device_name(index)}): {allocated / gib:.2f} GiB held by rpbot, "
                    f"{(total - free) / gib:.2f} of {total / gib:.2f} GiB in use"
                )
            cache_bytes = sum(t.numel() * t.element_size() for t in self._cache.all_tensors())
            parts.append(f"KV cache {cache_bytes / gib:.2f} GiB")
            return "; ".join(parts)
        except Exception as exc:
            log.debug("no VRAM summary: %s", _describe(exc))
            return None

    def _build_generator(self) -> Any:
        """A new async dynamic generator; its constructor starts a task, so this runs inside the event loop."""
        asyncio.get_running_loop()
        assert self._lib is not None and self._plan is not None
        return self._lib.generator_cls(
            model=self._model,
            cache=self._cache,
            tokenizer=self._tokenizer,
            max_batch_size=self._plan.max_batch_size,
            max_chunk_size=self._plan.chunk_size,
            paged=self._plan.paged,
        )

    def _live_generator(self) -> Any:
        """The current generator, rebuilt first if its task died while idle."""
        generator = self._generator
        task = getattr(generator, "iteration_task", None)
        if task is not None and task.done():
            self._generator_failed(generator, None)
            if self._broken or self._generator is None:
                raise EngineBroken("the ExLlamaV2 generator failed and could not be rebuilt; the engine must restart")
            generator = self._generator
        return generator

    def _generator_failed(self, generator: Any, exc: BaseException | None) -> None:
        """Fail every generation on ``generator`` and replace it (once, however many jobs report the error)."""
        if generator is not self._generator:
            return
        detail = _describe(exc) if exc is not None else "its task stopped"
        victims = [s for s in self._streams if s.generator is generator]
        log.error("ExLlamaV2 generator failed (%s); failing %d generation(s) and rebuilding it", detail, len(victims))
        error = EngineError(f"the GPU generator failed ({detail})")
        for stream in victims:
            stream._fail(error)
        self._generator = None
        self._discard(generator)
        try:
            self._generator = self._build_generator()
        except Exception as rebuild_exc:
            self._broken = True
            log.error(
                "could not rebuild the ExLlamaV2 generator (%s); the engine needs a restart", _describe(rebuild_exc)
            )
            return
        self.rebuilds += 1

    @staticmethod
    def _discard(generator: Any) -> None:
        """Stop a generator's task and its thread pools (the library has no close for those)."""
        task = getattr(generator, "iteration_task", None)
        if task is not None and not task.done():
            task.cancel()
        inner = getattr(generator, "generator", None)
        for name in ("sampling_pool", "filter_pool"):
            pool = getattr(inner, name, None)
            if pool is not None:
                pool.shutdown(wait=False)

    async def _cancel_job(self, generator: Any, job: Any) -> None:
        if generator is not self._generator or job.job not in generator.jobs:
            return  # finished, failed with its generator, or the engine closed
        try:
            await job.cancel()
        except Exception as exc:
            log.debug("cancelling an ExLlamaV2 job: %s", _describe(exc))

    async def _release(self) -> None:
        """Cancel in-flight generations and free the generator, model and cache."""
        for stream in list(self._streams):
            stream._finish("cancelled")
            if stream._pump is not None:
                stream._pump.cancel()
        self._streams.clear()
        generator, self._generator = self._generator, None
        if generator is not None:
            try:
                await generator.close()
            except Exception as exc:
                log.debug("closing the ExLlamaV2 generator: %s", _describe(exc))
            self._discard(generator)
        model, self._model = self._model, None
        if model is not None:
            try:
                await asyncio.to_thread(model.unload)
            except Exception as exc:
                log.warning("unloading the model failed: %s", _describe(exc))
        self._cache = self._tokenizer = self._config = None
        self._plan = None
        self._eos_ids = ()
        self._broken = False
        torch = sys.modules.get("torch")
        if torch is not None:
            with contextlib.suppress(Exception):
                torch.cuda.empty_cache()
