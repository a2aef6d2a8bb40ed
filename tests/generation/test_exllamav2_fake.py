"""A stand-in for the ``exllamav2`` package, installed into ``sys.modules`` by the engine tests (no CUDA here).

Only the library boundary is faked: the classes the engine touches, with the same constructor arguments and the same
behaviour where the engine depends on it, as read in exllamav2 0.3.2:
- the async generator's constructor starts its iteration task (so it must be built inside a running loop);
- ``enqueue`` registers the job in ``jobs`` before the inner generator accepts it;
- a generator exception is pushed to every job and the iteration task ends;
- ``cancel`` asserts the job is still registered (so cancelling a finished job raises);
- the job iterator stops only at an EOS result (or at its next turn after ``cancel``);
- EOS is a stop condition only when the caller lists its token id.

The fake model writes ``FakeState.pieces`` in turn; the piece ``EOS`` stands for the EOS token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

BOS, EOS_ID = 1, 2
EOS = "<EOS>"


@dataclass
class FakeState:
    paged: bool = True
    pieces: list[str] = field(default_factory=lambda: [f"w{i} " for i in range(8)])
    load_error: BaseException | None = None
    build_error: BaseException | None = None
    enqueue_error: BaseException | None = None
    fail_next_step: BaseException | None = None
    hold_steps: bool = False  # while True, the generator does not step (jobs stay in flight)
    configs: list[Any] = field(default_factory=list)
    models: list[Any] = field(default_factory=list)
    caches: list[Any] = field(default_factory=list)
    generators: list[Any] = field(default_factory=list)
    jobs: list[Any] = field(default_factory=list)
    cancelled: list[Any] = field(default_factory=list)
    progress_calls: list[tuple[int, int]] = field(default_factory=list)


STATE = FakeState()


class FakeIds:
    """What the tokenizer returns: only ``shape`` is read by the engine (a torch tensor in the real library)."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids
        self.shape = (1, len(ids))


class FakeConfig:
    def __init__(self, model_dir: str | None = None) -> None:
        self.model_dir = model_dir
        raw = json.loads(Path(model_dir, "config.json").read_text()) if model_dir else {}
        self.max_seq_len = int(raw.get("max_position_embeddings", 2048))
        self.max_input_len = 2048
        self.max_attention_size = 2048**2
        self.max_batch_size = 1
        self.no_flash_attn = False
        self.eos_token_id = raw.get("eos_token_id", EOS_ID)
        if "generation_eos" in raw:
            self.generation_config = {"eos_token_id": raw["generation_eos"]}
        STATE.configs.append(self)

    def arch_compat_overrides(self, quiet: bool = False, warn_only: bool = False) -> None:
        return None


class FakeModel:
    modules = 5

    def __init__(self, config: FakeConfig) -> None:
        self.config = config
        self.loaded = False
        self.unloaded = False
        STATE.models.append(self)

    def load_autosplit(
        self,
        cache: Any,
        reserve_vram: Any = None,
        last_id_only: bool = False,
        callback: Any = None,
        callback_gen: Any = None,
        progress: bool = False,
    ) -> None:
        assert cache.lazy, "load_autosplit needs a lazy cache"
        for index in range(self.modules):
            if callback is not None:
                callback(index, self.modules)
            STATE.progress_calls.append((index, self.modules))
            if STATE.load_error is not None and index == 2:
                raise STATE.load_error
        if callback is not None:
            callback(self.modules, self.modules)
        self.loaded = True

    def unload(self) -> None:
        self.unloaded = True


class FakeCacheBase:
    def __init__(
        self,
        model: FakeModel,
        batch_size: int = 1,
        max_seq_len: int = -1,
        copy_from: Any = None,
        lazy: bool = False,
        num_key_value_heads: int | None = None,
        fixed_device: int | None = None,
    ) -> None:
        self.model = model
        self.batch_size = batch_size
        self.max_seq_len = max_seq_len
        self.lazy = lazy
        STATE.caches.append(self)


class ExLlamaV2Cache(FakeCacheBase):
    pass


class ExLlamaV2Cache_Q8(FakeCacheBase):
    pass


class ExLlamaV2Cache_Q6(FakeCacheBase):
    pass


class ExLlamaV2Cache_Q4(FakeCacheBase):
    pass


class FakeTokenizer:
    """One token per character, BOS = 1, EOS = 2."""

    bos_token_id = BOS

    def __init__(self, config: FakeConfig) -> None:
        assert Path(config.model_dir or "", "tokenizer.json").is_file()
        self.eos_token_id = config.eos_token_id

    def encode(self, text: str, add_bos: bool = False, encode_special_tokens: bool = False, **_: Any) -> FakeIds:
        return FakeIds(([BOS] if add_bos else []) + [ord(c) for c in text])


@dataclass
class FakeSettings:
    """The library's defaults, which are not neutral."""

    token_repetition_penalty: float = 1.025
    token_repetition_range: int = -1
    temperature: float = 0.8
    top_k: int = 50
    top_p: float = 0.8
    min_p: float = 0.0
    mirostat_mu: Any = None


class FakeSampler:
    Settings = FakeSettings


class FakeInnerJob:
    def __init__(
        self,
        input_ids: FakeIds,
        max_new_tokens: int,
        min_new_tokens: int = 0,
        gen_settings: Any = None,
        seed: int | None = None,
        stop_conditions: list[Any] | None = None,
        decode_special_tokens: bool = False,
        banned_strings: list[str] | None = None,
        token_healing: bool = False,
        identifier: Any = None,
        **kwargs: Any,
    ) -> None:
        self.input_ids = input_ids
        self.max_new_tokens = max_new_tokens
        self.gen_settings = gen_settings
        self.seed = seed
        self.stop_conditions = list(stop_conditions or [])
        self.banned_strings = banned_strings
        self.decode_special_tokens = decode_special_tokens
        self.token_healing = token_healing
        self.extra = kwargs
        self.new_tokens = 0
        self.emitted = ""
        self.held = ""
        self.started = False

    def step(self, serial: int) -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        base = {"job": self, "serial": serial}
        if not self.started:
            self.started = True
            results.append({**base, "stage": "started", "eos": False})
        piece = STATE.pieces[self.new_tokens % len(STATE.pieces)]
        self.new_tokens += 1

        def end(reason: str, text: str) -> dict[str, Any]:
            self.emitted += text
            return {
                **base,
                "stage": "streaming",
                "eos": True,
                "eos_reason": reason,
                "text": text,
                "new_tokens": self.new_tokens,
                "full_completion": self.emitted,
            }

        if piece == EOS:
            if EOS_ID in self.stop_conditions:
                results.append(end("stop_token", ""))
                return results
            piece = ""  # EOS decodes to nothing and the library keeps sampling
        # Like the library, hold back text that may be the start of a stop string until it is resolved.
        stops = [s for s in self.stop_conditions if isinstance(s, str)]
        pending = self.held + piece
        hits = [pending.find(s) for s in stops if s in pending]
        if hits:
            self.held = ""
            results.append(end("stop_string", pending[: min(hits)]))
            return results
        if self.new_tokens >= self.max_new_tokens:
            self.held = ""
            results.append(end("max_new_tokens", pending))
            return results
        keep = max((n for s in stops for n in range(1, len(s)) if pending.endswith(s[:n])), default=0)
        text, self.held = pending[: len(pending) - keep], pending[len(pending) - keep :]
        self.emitted += text
        results.append({**base, "stage": "streaming", "eos": False, "text": text})
        return results


class FakePool:
    def __init__(self) -> None:
        self.shut_down = False

    def shutdown(self, wait: bool = True) -> None:
        self.shut_down = True


class FakeInnerGenerator:
    def __init__(self, cache: FakeCacheBase) -> None:
        self.cache = cache
        self.sampling_pool = FakePool()
        self.filter_pool = FakePool()
        self.serial = 0

    def enqueue(self, job: FakeInnerJob) -> int:
        if STATE.enqueue_error is not None:
            raise STATE.enqueue_error
        assert job.input_ids.shape[-1] + job.max_new_tokens <= self.cache.max_seq_len, "Job requires too many pages"
        self.serial += 1
        return self.serial


class ExLlamaV2DynamicGeneratorAsync:
    def __init__(
        self,
        model: FakeModel,
        cache: FakeCacheBase,
        tokenizer: FakeTokenizer,
        max_batch_size: int | None = None,
        max_chunk_size: int | None = None,
        paged: bool = True,
        **kwargs: Any,
    ) -> None:
        if STATE.build_error is not None:
            raise STATE.build_error
        self.model = model
        self.cache = cache
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_chunk_size = max_chunk_size
        self.paged = paged
        self.generator = FakeInnerGenerator(cache)
        self.jobs: dict[FakeInnerJob, FakeJobAsync] = {}
        self.condition = asyncio.Condition()
        self.closed = False
        self._notifiers: set[asyncio.Task[None]] = set()
        self.iteration_task = asyncio.create_task(self._run_iteration())
        STATE.generators.append(self)

    async def _run_iteration(self) -> None:
        try:
            while True:
                async with self.condition:
                    await self.condition.wait_for(lambda: len(self.jobs) > 0 and not STATE.hold_steps)
                if STATE.fail_next_step is not None:
                    error, STATE.fail_next_step = STATE.fail_next_step, None
                    raise error
                for inner, job in list(self.jobs.items())[: self.max_batch_size]:
                    for result in inner.step(self.generator.serial):
                        await job.put_result(result)
                        if result["eos"]:
                            del self.jobs[inner]
                await asyncio.sleep(0)
        except asyncio.CancelledError:
            return
        except Exception as exc:
            for job in self.jobs.values():
                await job.put_result(exc)

    def enqueue(self, job: FakeJobAsync) -> None:
        assert job.job not in self.jobs
        self.jobs[job.job] = job
        self.generator.enqueue(job.job)
        task = asyncio.create_task(self.notify())
        self._notifiers.add(task)
        task.add_done_callback(self._notifiers.discard)

    async def notify(self) -> None:
        async with self.condition:
            self.condition.notify_all()

    async def close(self) -> None:
        self.closed = True
        self.iteration_task.cancel()
        await self.notify()
        with contextlib.suppress(asyncio.CancelledError):
            await self.iteration_task

    async def cancel(self, job: FakeJobAsync) -> None:
        assert job.job in self.jobs
        STATE.cancelled.append(job)
        del self.jobs[job.job]


class FakeJobAsync:
    def __init__(self, generator: ExLlamaV2DynamicGeneratorAsync, *args: Any, **kwargs: Any) -> None:
        self.generator = generator
        self.job = FakeInnerJob(*args, **kwargs)
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.cancelled = False
        STATE.jobs.append(self)
        self.generator.enqueue(self)

    async def put_result(self, result: Any) -> None:
        await self.queue.put(result)

    async def __aiter__(self) -> Any:
        while True:
            if self.cancelled:
                break
            result = await self.queue.get()
            if isinstance(result, Exception):
                raise result
            yield result
            if result["eos"]:
                break

    async def cancel(self) -> None:
        await self.generator.cancel(self)
        self.cancelled = True


def install(monkeypatch: pytest.MonkeyPatch, *, paged: bool = True) -> FakeState:
    """Put the fake package into sys.modules (undone by monkeypatch) and return a fresh state."""
    global STATE
    STATE = FakeState(paged=paged)
    root = types.ModuleType("exllamav2")
    root.__path__ = []  # a package, so submodule imports resolve through sys.modules
    root.__version__ = "0.3.2+fake"
    root.ExLlamaV2Config = FakeConfig
    root.ExLlamaV2 = FakeModel
    root.ExLlamaV2Tokenizer = FakeTokenizer
    for cls in (ExLlamaV2Cache, ExLlamaV2Cache_Q8, ExLlamaV2Cache_Q6, ExLlamaV2Cache_Q4):
        setattr(root, cls.__name__, cls)
    generator = types.ModuleType("exllamav2.generator")
    generator.ExLlamaV2DynamicGeneratorAsync = ExLlamaV2DynamicGeneratorAsync
    generator.ExLlamaV2DynamicJobAsync = FakeJobAsync
    generator.ExLlamaV2Sampler = FakeSampler
    attn = types.ModuleType("exllamav2.attn")
    attn.has_flash_attn_with_paged = paged
    root.generator = generator
    root.attn = attn
    monkeypatch.setitem(sys.modules, "exllamav2", root)
    monkeypatch.setitem(sys.modules, "exllamav2.generator", generator)
    monkeypatch.setitem(sys.modules, "exllamav2.attn", attn)
    return STATE


def state() -> FakeState:
    return STATE


def make_model_dir(path: Path, *, max_position_embeddings: int = 4096, **extra: Any) -> Path:
    """A folder that passes the engine's checks: config.json, tokenizer.json and a .safetensors file."""
    path.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["LlamaForCausalLM"], "max_position_embeddings": max_position_embeddings, **extra}
    (path / "config.json").write_text(json.dumps(config))
    (path / "tokenizer.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"")
    return path


# ---- the fake's own contract: the library behaviours the engine relies on ----------------------------------------


def _job(generator: ExLlamaV2DynamicGeneratorAsync, text: str, max_new: int, stop: list[Any]) -> FakeJobAsync:
    ids = FakeIds([BOS] + [ord(c) for c in text])
    return FakeJobAsync(generator, input_ids=ids, max_new_tokens=max_new, stop_conditions=stop)


async def test_fake_stops_on_eos_only_when_listed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    state = install(monkeypatch)
    state.pieces = ["a", EOS, "b"]
    cache = ExLlamaV2Cache(FakeModel(FakeConfig(str(make_model_dir(tmp_path)))), max_seq_len=256, lazy=True)
    generator = ExLlamaV2DynamicGeneratorAsync(None, cache, None, max_batch_size=4)  # type: ignore[arg-type]
    with_eos = [r async for r in _job(generator, "x", 5, [EOS_ID])]
    without = [r async for r in _job(generator, "x", 5, [])]
    assert with_eos[-1]["eos_reason"] == "stop_token"
    assert without[-1]["eos_reason"] == "max_new_tokens"
    assert "".join(r.get("text", "") for r in without) == "aba"  # EOS decodes to nothing
    await generator.close()


async def test_fake_cancel_after_finish_raises(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    install(monkeypatch)
    cache = ExLlamaV2Cache(FakeModel(FakeConfig(str(make_model_dir(tmp_path)))), max_seq_len=256, lazy=True)
    generator = ExLlamaV2DynamicGeneratorAsync(None, cache, None, max_batch_size=4)  # type: ignore[arg-type]
    job = _job(generator, "x", 2, [])
    [r async for r in job]
    with pytest.raises(AssertionError):
        await job.cancel()
    await generator.close()


async def test_fake_generator_error_reaches_every_job_and_ends_its_task(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    state = install(monkeypatch)
    cache = ExLlamaV2Cache(FakeModel(FakeConfig(str(make_model_dir(tmp_path)))), max_seq_len=256, lazy=True)
    generator = ExLlamaV2DynamicGeneratorAsync(None, cache, None, max_batch_size=4)  # type: ignore[arg-type]
    state.fail_next_step = RuntimeError("CUDA error: an illegal memory access was encountered")
    jobs = [_job(generator, "x", 50, []), _job(generator, "y", 50, [])]
    for job in jobs:
        with pytest.raises(RuntimeError, match="illegal memory access"):
            [r async for r in job]
    await asyncio.wait_for(generator.iteration_task, 5)
    assert generator.iteration_task.done()
