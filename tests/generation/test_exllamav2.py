"""The ExLlamaV2 engine without CUDA: exllamav2 is replaced at the module boundary by a faithful stand-in."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.config import load_settings
from bot.generation.base import (
    EngineBroken,
    EngineError,
    EngineNotInstalled,
    EngineUnavailable,
    GenerationRequest,
    PromptTooLong,
    SamplerParams,
)
from bot.generation.exllamav2 import NEEDS_CUDA, ExLlamaV2Engine, import_exllamav2, make_sampler_settings
from tests.generation import test_exllamav2_fake as fake

WAIT = 10  # seconds; a safety net against hangs, not a speed check


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return fake.make_model_dir(tmp_path / "pygmalion-2-7b-exl2")


@pytest.fixture
def lib(monkeypatch: pytest.MonkeyPatch) -> fake.FakeState:
    return fake.install(monkeypatch, paged=True)


@pytest.fixture
async def engine(lib: fake.FakeState, model_dir: Path) -> AsyncIterator[ExLlamaV2Engine]:
    eng = ExLlamaV2Engine(model_dir, context_tokens=512, max_new_tokens=64, max_batch_size=4, show_progress=False)
    await eng.start()
    yield eng
    await eng.close()


async def collect(stream: object) -> str:
    return "".join([chunk async for chunk in stream])  # type: ignore[attr-defined]


# ---- import errors --------------------------------------------------------------------------------------------


def test_without_exllamav2_the_error_names_cuda_and_both_remedies(monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec("exllamav2") is not None:
        pytest.skip("exllamav2 is installed here")
    monkeypatch.delitem(sys.modules, "exllamav2", raising=False)
    with pytest.raises(EngineNotInstalled) as info:
        import_exllamav2()
    message = str(info.value)
    assert "ExLlamaV2 is not installed" in message
    assert "ExLlamaV2 needs an NVIDIA GPU with CUDA" in message
    assert "pip install 'rpbot[gpu]'" in message
    assert "RPBOT_ENGINE=llamacpp/openai" in message


async def test_start_without_exllamav2_raises_the_clear_message(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if importlib.util.find_spec("exllamav2") is not None:
        pytest.skip("exllamav2 is installed here")
    monkeypatch.delitem(sys.modules, "exllamav2", raising=False)
    eng = ExLlamaV2Engine(model_dir, show_progress=False)
    with pytest.raises(EngineNotInstalled, match="needs an NVIDIA GPU with CUDA"):
        await eng.start()
    assert not eng.started


def _package_raising(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    """A real ``exllamav2`` package on sys.path whose import fails the way the library's does."""
    package = tmp_path / "site" / "exllamav2"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "exllamav2", raising=False)


def test_oserror_at_import_means_no_cuda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _package_raising(tmp_path, monkeypatch, "raise OSError('CUDA_HOME environment variable is not set')\n")
    with pytest.raises(EngineNotInstalled) as info:
        import_exllamav2()
    message = str(info.value)
    assert message.startswith(NEEDS_CUDA)
    assert "found no CUDA" in message and "CUDA_HOME" in message
    assert "not installed" not in message


def test_missing_dependency_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _package_raising(tmp_path, monkeypatch, "import torch_that_is_not_there\n")
    with pytest.raises(EngineNotInstalled) as info:
        import_exllamav2()
    assert "cannot import 'torch_that_is_not_there'" in str(info.value)
    assert NEEDS_CUDA in str(info.value)


def test_extension_build_failure_is_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _package_raising(tmp_path, monkeypatch, "raise RuntimeError('Error building extension exllamav2_ext')\n")
    with pytest.raises(EngineNotInstalled, match="failed to load: RuntimeError: Error building extension"):
        import_exllamav2()


# ---- settings and model folder ------------------------------------------------------------------------------


def test_from_settings_maps_every_setting(model_dir: Path) -> None:
    settings = load_settings(
        None,
        model_path=model_dir,
        context_tokens=2048,
        max_new_tokens=200,
        exllamav2_cache_type="Q6",
        exllamav2_cache_tokens=8192,
        exllamav2_max_batch_size=3,
        exllamav2_chunk_size=1024,
    )
    eng = ExLlamaV2Engine.from_settings(settings)
    assert eng.model_path == model_dir
    assert (eng.requested_context, eng.max_new_tokens) == (2048, 200)
    assert (eng.cache_type, eng.requested_cache_tokens) == ("q6", 8192)
    assert (eng.requested_batch_size, eng.requested_chunk_size) == (3, 1024)


def test_from_settings_without_model_path() -> None:
    with pytest.raises(EngineError, match="RPBOT_MODEL_PATH is not set"):
        ExLlamaV2Engine.from_settings(load_settings(None))


def test_unknown_cache_type_lists_the_choices(model_dir: Path) -> None:
    with pytest.raises(EngineError, match="use one of fp16, q8, q6, q4"):
        ExLlamaV2Engine(model_dir, cache_type="q3")


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda d: d / "missing", "does not exist"),
        (lambda d: (d / "model.gguf").write_bytes(b"GGUF") and d / "model.gguf", "RPBOT_ENGINE=llamacpp"),
        (lambda d: (d / "config.json").unlink() or d, "has no config.json"),
        (lambda d: (d / "tokenizer.json").unlink() or d, "has no tokenizer.json"),
        (lambda d: (d / "model.safetensors").unlink() or d, "has no .safetensors weights"),
    ],
)
async def test_model_folder_problems_are_specific(
    lib: fake.FakeState, model_dir: Path, setup: object, expected: str
) -> None:
    path = setup(model_dir)  # type: ignore[operator]
    eng = ExLlamaV2Engine(path, show_progress=False)
    with pytest.raises(EngineError, match=expected) as info:
        await eng.start()
    assert "RPBOT_MODEL_PATH" in str(info.value)
    assert lib.models == []


@pytest.mark.parametrize(
    ("cache_type", "cls"),
    [
        ("fp16", fake.ExLlamaV2Cache),
        ("q8", fake.ExLlamaV2Cache_Q8),
        ("q6", fake.ExLlamaV2Cache_Q6),
        ("q4", fake.ExLlamaV2Cache_Q4),
    ],
)
async def test_cache_type_selects_the_cache_class(
    lib: fake.FakeState, model_dir: Path, cache_type: str, cls: type
) -> None:
    eng = ExLlamaV2Engine(
        model_dir, context_tokens=1000, max_new_tokens=100, cache_type=cache_type, max_batch_size=3, show_progress=False
    )
    await eng.start()
    try:
        (cache,) = lib.caches
        assert type(cache) is cls
        assert cache.lazy and cache.batch_size == 1
        assert cache.max_seq_len == 3072  # 3 x 1000 rounded up to whole 256-token pages
        assert eng.plan is not None and eng.plan.cache_tokens == 3072
    finally:
        await eng.close()


async def test_model_config_is_sized_from_the_plan(lib: fake.FakeState, model_dir: Path) -> None:
    eng = ExLlamaV2Engine(
        model_dir, context_tokens=2048, max_new_tokens=100, chunk_size=1000, max_batch_size=2, show_progress=False
    )
    await eng.start()
    try:
        config = lib.configs[0]
        assert config.max_seq_len == 2048
        assert config.max_input_len == 768  # chunk rounded down to whole pages
        assert config.max_attention_size == 768**2
        generator = lib.generators[0]
        assert (generator.max_batch_size, generator.max_chunk_size, generator.paged) == (2, 768, True)
    finally:
        await eng.close()


async def test_context_longer_than_the_model_is_clamped_with_a_warning(
    lib: fake.FakeState, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = fake.make_model_dir(tmp_path / "short", max_position_embeddings=1024)
    eng = ExLlamaV2Engine(path, context_tokens=4096, max_new_tokens=100, show_progress=False)
    with caplog.at_level(logging.WARNING):
        await eng.start()
    try:
        assert eng.context_tokens == 1024
        assert "trained for 1024 tokens" in caplog.text
    finally:
        await eng.close()


async def test_load_progress_reaches_the_callback(lib: fake.FakeState, model_dir: Path) -> None:
    eng = ExLlamaV2Engine(model_dir, context_tokens=512, max_new_tokens=64, show_progress=True)
    await eng.start()
    await eng.close()
    assert lib.progress_calls == [(i, fake.FakeModel.modules) for i in range(fake.FakeModel.modules)]


async def test_out_of_memory_while_loading_names_the_settings(lib: fake.FakeState, model_dir: Path) -> None:
    class OutOfMemoryError(RuntimeError):  # torch.cuda.OutOfMemoryError's name
        pass

    lib.load_error = OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    eng = ExLlamaV2Engine(model_dir, context_tokens=512, max_new_tokens=64, show_progress=False)
    with pytest.raises(EngineError) as info:
        await eng.start()
    assert "not enough GPU memory" in str(info.value)
    assert "RPBOT_EXLLAMAV2_CACHE_TOKENS" in str(info.value)
    assert lib.models[0].unloaded
    assert not eng.started


async def test_other_load_failures_keep_their_reason(lib: fake.FakeState, model_dir: Path) -> None:
    lib.load_error = ValueError("Unknown dtype I8")
    eng = ExLlamaV2Engine(model_dir, context_tokens=512, max_new_tokens=64, show_progress=False)
    with pytest.raises(EngineError, match=r"could not load .*ValueError: Unknown dtype I8"):
        await eng.start()


async def test_start_is_idempotent_and_close_frees_everything(lib: fake.FakeState, model_dir: Path) -> None:
    eng = ExLlamaV2Engine(model_dir, context_tokens=512, max_new_tokens=64, show_progress=False)
    await eng.start()
    await eng.start()
    assert len(lib.models) == 1 and len(lib.generators) == 1
    generator = lib.generators[0]
    await eng.close()
    await eng.close()
    assert generator.closed and generator.iteration_task.done()
    assert generator.generator.sampling_pool.shut_down and generator.generator.filter_pool.shut_down
    assert lib.models[0].unloaded
    assert not eng.started
    with pytest.raises(EngineUnavailable, match="not started"):
        eng.stream(GenerationRequest(prompt="hi"))


# ---- paged / unpaged ------------------------------------------------------------------------------------------


async def test_paged_mode_reports_the_batch_as_capacity(lib: fake.FakeState, model_dir: Path) -> None:
    eng = ExLlamaV2Engine(model_dir, context_tokens=512, max_new_tokens=64, max_batch_size=6, show_progress=False)
    await eng.start()
    try:
        assert eng.capacity == 6
        assert lib.generators[0].paged is True
    finally:
        await eng.close()


async def test_without_flash_attn_it_runs_unpaged_one_at_a_time_and_says_so(
    monkeypatch: pytest.MonkeyPatch, model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lib = fake.install(monkeypatch, paged=False)
    eng = ExLlamaV2Engine(model_dir, context_tokens=1000, max_new_tokens=64, max_batch_size=6, show_progress=False)
    with caplog.at_level(logging.WARNING):
        await eng.start()
    try:
        assert eng.capacity == 1
        generator = lib.generators[0]
        assert (generator.paged, generator.max_batch_size) == (False, 1)
        assert lib.caches[0].max_seq_len == 1024  # one context is all an unpaged generator can use
        warning = [r for r in caplog.records if r.levelno == logging.WARNING and "flash-attn" in r.getMessage()]
        assert warning and "one generation at a time" in warning[0].getMessage()
    finally:
        await eng.close()


async def test_flash_attn_disabled_in_the_model_config_means_unpaged(
    lib: fake.FakeState, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = fake.FakeConfig.arch_compat_overrides

    def disable(self: fake.FakeConfig, quiet: bool = False, warn_only: bool = False) -> None:
        original(self, quiet, warn_only)
        self.no_flash_attn = True

    monkeypatch.setattr(fake.FakeConfig, "arch_compat_overrides", disable)
    eng = ExLlamaV2Engine(model_dir, context_tokens=512, max_new_tokens=64, max_batch_size=4, show_progress=False)
    await eng.start()
    try:
        assert eng.capacity == 1 and lib.generators[0].paged is False
    finally:
        await eng.close()


async def test_generator_is_built_inside_the_running_loop(lib: fake.FakeState, model_dir: Path) -> None:
    eng = ExLlamaV2Engine(model_dir, context_tokens=512, max_new_tokens=64, show_progress=False)
    await eng.start()
    try:
        assert lib.generators[0].iteration_task.get_loop() is asyncio.get_running_loop()
    finally:
        await eng.close()


# ---- per-job settings -----------------------------------------------------------------------------------------


def test_sampler_settings_override_the_library_defaults() -> None:
    params = SamplerParams(temperature=0.7, top_p=0.95, top_k=40, min_p=0.1, repetition_penalty=1.15)
    settings = make_sampler_settings(fake.FakeSettings, params)
    assert (settings.temperature, settings.top_p, settings.top_k) == (0.7, 0.95, 40)
    assert (settings.min_p, settings.token_repetition_penalty) == (0.1, 1.15)


def test_neutral_params_switch_the_library_samplers_off() -> None:
    settings = make_sampler_settings(
        fake.FakeSettings, SamplerParams(top_p=1.0, top_k=0, min_p=0.0, repetition_penalty=1.0)
    )
    assert (settings.top_p, settings.top_k, settings.min_p, settings.token_repetition_penalty) == (1.0, 0, 0.0, 1.0)


def test_temperature_zero_is_greedy() -> None:
    settings = make_sampler_settings(fake.FakeSettings, SamplerParams(temperature=0.0))
    assert (settings.top_k, settings.temperature) == (1, 1.0)


async def test_each_job_gets_a_fresh_settings_object(engine: ExLlamaV2Engine, lib: fake.FakeState) -> None:
    params = SamplerParams(temperature=0.6, seed=7)
    streams = [engine.stream(GenerationRequest(prompt=f"p{i}", params=params, max_new_tokens=3)) for i in range(2)]
    for stream in streams:
        await collect(stream)
    first, second = (job.job.gen_settings for job in lib.jobs)
    assert first is not second
    assert first == second and first.temperature == 0.6
    assert [job.job.seed for job in lib.jobs] == [7, 7]


async def test_stop_conditions_are_our_strings_plus_eos(engine: ExLlamaV2Engine, lib: fake.FakeState) -> None:
    request = GenerationRequest(prompt="hi", stop=["<|user|>", "", "\nAlice:", "<|user|>"], banned_strings=["", "Bob:"])
    await collect(engine.stream(request))
    job = lib.jobs[0].job
    assert job.stop_conditions == ["<|user|>", "\nAlice:", fake.EOS_ID]
    assert job.banned_strings == ["Bob:"]
    assert job.decode_special_tokens is False and job.token_healing is False


async def test_generation_config_eos_ids_are_stop_tokens_too(lib: fake.FakeState, tmp_path: Path) -> None:
    path = fake.make_model_dir(tmp_path / "m", generation_eos=[2, 32000])
    eng = ExLlamaV2Engine(path, context_tokens=512, max_new_tokens=64, show_progress=False)
    await eng.start()
    try:
        assert eng.stop_conditions(["x"]) == ["x", 2, 32000]
    finally:
        await eng.close()


async def test_no_banned_strings_pass_none(engine: ExLlamaV2Engine, lib: fake.FakeState) -> None:
    await collect(engine.stream(GenerationRequest(prompt="hi", max_new_tokens=2)))
    assert lib.jobs[0].job.banned_strings is None


# ---- length checks --------------------------------------------------------------------------------------------


async def test_prompt_too_long_is_refused_before_enqueueing(engine: ExLlamaV2Engine, lib: fake.FakeState) -> None:
    prompt = "x" * 500  # 501 tokens with BOS, + 64 > 512
    with pytest.raises(PromptTooLong) as info:
        engine.stream(GenerationRequest(prompt=prompt, max_new_tokens=64))
    assert (info.value.prompt_tokens, info.value.max_new_tokens, info.value.context) == (501, 64, 512)
    assert lib.jobs == []
    assert engine.active_streams == 0


async def test_a_prompt_that_exactly_fits_is_accepted(engine: ExLlamaV2Engine, lib: fake.FakeState) -> None:
    stream = engine.stream(GenerationRequest(prompt="x" * (512 - 64 - 1), max_new_tokens=64))
    await stream.cancel()
    assert len(lib.jobs) == 1


async def test_counts_exclude_bos_and_the_fit_check_includes_it(engine: ExLlamaV2Engine) -> None:
    assert engine.count_tokens("") == 0
    assert engine.count_tokens("hello") == 5
    assert engine.check_fits(GenerationRequest(prompt="hello", max_new_tokens=10)) == 6
    with pytest.raises(PromptTooLong):
        engine.check_fits(GenerationRequest(prompt="x" * 448, max_new_tokens=64))


def test_count_tokens_before_start_is_a_clear_error(model_dir: Path) -> None:
    with pytest.raises(EngineUnavailable, match="not started"):
        ExLlamaV2Engine(model_dir).count_tokens("hi")


async def test_zero_max_new_tokens_is_refused(engine: ExLlamaV2Engine) -> None:
    with pytest.raises(EngineError, match="max_new_tokens must be at least 1"):
        engine.stream(GenerationRequest(prompt="hi", max_new_tokens=0))


async def test_a_job_the_generator_refuses_leaves_no_stale_entry(engine: ExLlamaV2Engine, lib: fake.FakeState) -> None:
    lib.enqueue_error = AssertionError("Job requires 9 pages (only 8 available)")
    with pytest.raises(EngineError, match="refused the generation: AssertionError: Job requires 9 pages"):
        engine.stream(GenerationRequest(prompt="hi", max_new_tokens=4))
    generator = lib.generators[0]
    assert generator.jobs == {}
    lib.enqueue_error = None
    assert await collect(engine.stream(GenerationRequest(prompt="hi", max_new_tokens=2))) == "w0 w1 "


# ---- streaming and finish reasons ---------------------------------------------------------------------------


async def test_chunks_make_up_the_result(engine: ExLlamaV2Engine) -> None:
    stream = engine.stream(GenerationRequest(prompt="hello", max_new_tokens=5))
    text = await collect(stream)
    assert text == "w0 w1 w2 w3 w4 "
    result = stream.result
    assert result is not None
    assert (result.text, result.finish_reason) == (text, "length")
    assert (result.prompt_tokens, result.completion_tokens) == (6, 5)
    assert result.time_to_first_token is not None and result.total_seconds >= result.time_to_first_token


async def test_eos_token_finishes_with_eos(engine: ExLlamaV2Engine, lib: fake.FakeState) -> None:
    lib.pieces = ["Hi", " there", fake.EOS, "never"]
    stream = engine.stream(GenerationRequest(prompt="x", max_new_tokens=50))
    assert await collect(stream) == "Hi there"
    assert stream.result is not None and stream.result.finish_reason == "eos"
    assert stream.result.completion_tokens == 3


async def test_stop_string_finishes_with_stop(engine: ExLlamaV2Engine, lib: fake.FakeState) -> None:
    lib.pieces = ["Sure", ".", "\nAli", "ce: hey"]
    stream = engine.stream(GenerationRequest(prompt="x", stop=["\nAlice:"], max_new_tokens=50))
    assert await collect(stream) == "Sure."
    assert stream.result is not None and stream.result.finish_reason == "stop"


async def test_iterating_twice_ends_the_same_way(engine: ExLlamaV2Engine) -> None:
    stream = engine.stream(GenerationRequest(prompt="x", max_new_tokens=2))
    assert await collect(stream) == "w0 w1 "
    assert await collect(stream) == ""


async def test_concurrent_streams_each_get_their_own_text(engine: ExLlamaV2Engine, lib: fake.FakeState) -> None:
    streams = [engine.stream(GenerationRequest(prompt=f"p{i}", max_new_tokens=3 + i)) for i in range(4)]
    texts = await asyncio.wait_for(asyncio.gather(*(collect(s) for s in streams)), WAIT)
    assert texts == ["w0 w1 w2 ", "w0 w1 w2 w3 ", "w0 w1 w2 w3 w4 ", "w0 w1 w2 w3 w4 w5 "]
    assert engine.active_streams == 0


# ---- cancellation ---------------------------------------------------------------------------------------------


async def test_cancel_mid_stream_stops_the_job_and_ends_iteration(engine: ExLlamaV2Engine, lib: fake.FakeState) -> None:
    stream = engine.stream(GenerationRequest(prompt="x", max_new_tokens=400))
    seen = []
    async for chunk in stream:
        seen.append(chunk)
        if len(seen) == 3:
            await stream.cancel()
    assert stream.result is not None and stream.result.finish_reason == "cancelled"
    assert stream.result.text.startswith("w0 w1 w2 ")
    assert stream.result.completion_tokens < 400
    assert lib.cancelled == [lib.jobs[0]]
    assert lib.generators[0].jobs == {}
    # The generator goes on serving.
    assert await collect(engine.stream(GenerationRequest(prompt="y", max_new_tokens=2))) == "w0 w1 "


async def test_cancel_from_another_task_wakes_a_waiting_consumer(engine: ExLlamaV2Engine, lib: fake.FakeState) -> None:
    lib.hold_steps = True  # nothing arrives, so the consumer waits
    stream = engine.stream(GenerationRequest(prompt="x", max_new_tokens=5))
    consumer = asyncio.create_task(collect(stream))
    await asyncio.sleep(0)
    await stream.cancel()
    assert await asyncio.wait_for(consumer, WAIT) == ""
    assert stream.result is not None and stream.result.finish_reason == "cancelled"
    assert stream.result.time_to_first_token is None


async def test_cancel_after_finish_is_safe(engine: ExLlamaV2Engine, lib: fake.FakeState) -> None:
    stream = engine.stream(GenerationRequest(prompt="x", max_new_tokens=2))
    await collect(stream)
    result = stream.result
    await stream.cancel()
    await stream.cancel()
    assert stream.result is result and result is not None and result.finish_reason == "length"
    assert lib.cancelled == []


async def test_cancel_before_iterating(engine: ExLlamaV2Engine, lib: fake.FakeState) -> None:
    stream = engine.stream(GenerationRequest(prompt="x", max_new_tokens=50))
    await stream.cancel()
    assert await collect(stream) == ""
    assert stream.result is not None and stream.result.finish_reason == "cancelled"
    assert lib.generators[0].jobs == {}


async def test_a_consumer_that_stops_reading_cancels_the_job(engine: ExLlamaV2Engine, lib: fake.FakeState) -> None:
    stream = engine.stream(GenerationRequest(prompt="x", max_new_tokens=400))
    iterator = stream.__aiter__()
    assert await iterator.__anext__() == "w0 "
    await iterator.aclose()
    assert stream.result is not None and stream.result.finish_reason == "cancelled"
    assert lib.generators[0].jobs == {}


# ---- generator failure ----------------------------------------------------------------------------------------


async def test_generator_exception_fails_in_flight_jobs_and_rebuilds(
    engine: ExLlamaV2Engine, lib: fake.FakeState, caplog: pytest.LogCaptureFixture
) -> None:
    lib.hold_steps = True
    streams = [engine.stream(GenerationRequest(prompt=f"p{i}", max_new_tokens=100)) for i in range(3)]
    lib.fail_next_step = RuntimeError("CUDA error: an illegal memory access was encountered")
    lib.hold_steps = False
    first = lib.generators[0]
    with caplog.at_level(logging.ERROR):
        await first.notify()
        for stream in streams:
            with pytest.raises(EngineError, match=r"GPU generator failed .*illegal memory access"):
                await asyncio.wait_for(collect(stream), WAIT)
    assert all(s.result is not None and s.result.finish_reason == "error" for s in streams)
    assert engine.rebuilds == 1 and not engine.broken
    assert len(lib.generators) == 2
    assert first.generator.sampling_pool.shut_down
    assert sum("rebuilding" in r.getMessage() for r in caplog.records) == 1
    assert engine.active_streams == 0
    # Cancelling a failed stream is a no-op, and the new generator serves.
    await streams[0].cancel()
    assert await collect(engine.stream(GenerationRequest(prompt="again", max_new_tokens=2))) == "w0 w1 "
    assert lib.jobs[-1].generator is lib.generators[1]


async def test_failed_rebuild_marks_the_engine_broken_until_restarted(
    engine: ExLlamaV2Engine, lib: fake.FakeState
) -> None:
    stream = engine.stream(GenerationRequest(prompt="x", max_new_tokens=400))
    lib.fail_next_step = RuntimeError("CUDA error: device-side assert triggered")
    lib.build_error = RuntimeError("CUDA error: device-side assert triggered")
    with pytest.raises(EngineError):
        await asyncio.wait_for(collect(stream), WAIT)
    assert engine.broken
    with pytest.raises(EngineBroken, match="must restart"):
        engine.stream(GenerationRequest(prompt="x"))
    # What the queue does with a broken engine: close() and start() again.
    lib.build_error = None
    await engine.close()
    await engine.start()
    assert not engine.broken
    assert await collect(engine.stream(GenerationRequest(prompt="x", max_new_tokens=1))) == "w0 "
    assert len(lib.models) == 2 and lib.models[0].unloaded


async def test_a_generator_task_that_died_idle_is_rebuilt_before_the_next_job(
    engine: ExLlamaV2Engine, lib: fake.FakeState
) -> None:
    first = lib.generators[0]
    first.iteration_task.cancel()
    await asyncio.sleep(0)
    assert first.iteration_task.done()
    assert await collect(engine.stream(GenerationRequest(prompt="x", max_new_tokens=2))) == "w0 w1 "
    assert engine.rebuilds == 1 and lib.jobs[0].generator is lib.generators[1]


async def test_close_cancels_in_flight_streams(lib: fake.FakeState, model_dir: Path) -> None:
    eng = ExLlamaV2Engine(model_dir, context_tokens=512, max_new_tokens=64, show_progress=False)
    await eng.start()
    lib.hold_steps = True
    stream = eng.stream(GenerationRequest(prompt="x", max_new_tokens=50))
    consumer = asyncio.create_task(collect(stream))
    await asyncio.sleep(0)
    await eng.close()
    assert await asyncio.wait_for(consumer, WAIT) == ""
    assert stream.result is not None and stream.result.finish_reason == "cancelled"
    await stream.cancel()  # safe after close
