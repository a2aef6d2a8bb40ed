"""Sizing the ExLlamaV2 generator, and the load progress bar."""

from __future__ import annotations

import io
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.generation._exl_plan import MAX_Q_SIZE, PAGE_SIZE, plan_generator, round_up
from bot.generation._exl_progress import LoadProgress
from bot.generation.base import EngineError


def plan(**overrides: object):  # type: ignore[no-untyped-def]
    args: dict[str, object] = {
        "context_tokens": 4096,
        "model_max_seq_len": 4096,
        "max_new_tokens": 300,
        "cache_tokens": None,
        "max_batch_size": 8,
        "chunk_size": 2048,
        "paged": True,
    }
    args.update(overrides)
    return plan_generator(**args)  # type: ignore[arg-type]


def test_defaults_for_pygmalion_on_one_gpu() -> None:
    p = plan()
    assert (p.paged, p.context_tokens, p.max_batch_size, p.chunk_size) == (True, 4096, 8, 2048)
    assert p.cache_tokens == 8 * 4096
    assert p.full_contexts == 8
    assert p.notes == ()


def test_default_cache_rounds_up_to_whole_pages() -> None:
    assert plan(context_tokens=1000, max_batch_size=3).cache_tokens == 3072
    assert plan(context_tokens=1000, max_batch_size=1).cache_tokens == 1024


def test_explicit_cache_must_be_whole_pages() -> None:
    with pytest.raises(
        EngineError, match=r"RPBOT_EXLLAMAV2_CACHE_TOKENS \(1000\) must be a multiple of 256, e.g. 1024"
    ):
        plan(cache_tokens=1000)


def test_explicit_cache_must_hold_one_context() -> None:
    with pytest.raises(EngineError, match="cannot hold one full 4096-token context; set it to at least 4096"):
        plan(cache_tokens=2048)


def test_explicit_cache_smaller_than_the_batch_is_allowed() -> None:
    # The generator then runs fewer long generations at once; short ones still batch.
    p = plan(cache_tokens=8192)
    assert (p.cache_tokens, p.max_batch_size, p.full_contexts) == (8192, 8, 2)


def test_unpaged_runs_one_at_a_time_with_a_note() -> None:
    p = plan(paged=False)
    assert (p.max_batch_size, p.cache_tokens) == (1, 4096)
    assert any("flash-attn" in note and "one generation at a time" in note for note in p.notes)


def test_unpaged_with_batch_one_needs_no_note() -> None:
    assert plan(paged=False, max_batch_size=1).notes == ()


def test_unpaged_caps_a_large_explicit_cache() -> None:
    p = plan(paged=False, cache_tokens=65536)
    assert p.cache_tokens == 4096
    assert any("waste GPU memory" in note for note in p.notes)


def test_context_beyond_the_model_is_clamped() -> None:
    p = plan(context_tokens=8192, model_max_seq_len=4096)
    assert p.context_tokens == 4096
    assert any("trained for 4096" in note for note in p.notes)


def test_max_new_tokens_must_leave_room_after_clamping() -> None:
    with pytest.raises(EngineError, match="RPBOT_MAX_NEW_TOKENS \\(2048\\) leaves no room"):
        plan(context_tokens=8192, model_max_seq_len=2048, max_new_tokens=2048)


def test_chunk_not_in_whole_pages_is_rounded_down_with_a_note() -> None:
    p = plan(chunk_size=1000)
    assert p.chunk_size == 768
    assert any("CHUNK_SIZE 1000" in note for note in p.notes)


def test_chunk_never_exceeds_the_context() -> None:
    assert plan(context_tokens=1000, chunk_size=4096).chunk_size == 768


def test_batch_limited_by_the_chunk() -> None:
    p = plan(max_batch_size=64, chunk_size=256, context_tokens=512, max_new_tokens=100)
    assert p.max_batch_size == 256 // MAX_Q_SIZE
    assert any("MAX_BATCH_SIZE 64" in note for note in p.notes)


def test_context_below_one_page_is_refused() -> None:
    with pytest.raises(EngineError, match="at least 256"):
        plan(context_tokens=200, max_new_tokens=10)


@given(
    context=st.integers(256, 32768),
    model_len=st.integers(256, 32768),
    new_fraction=st.floats(0.0, 0.95),
    batch=st.integers(1, 256),
    chunk=st.integers(64, 16384),
    paged=st.booleans(),
    cache_pages=st.none() | st.integers(1, 1024),
)
def test_plans_always_satisfy_the_generator(
    context: int, model_len: int, new_fraction: float, batch: int, chunk: int, paged: bool, cache_pages: int | None
) -> None:
    effective = min(context, model_len)
    max_new = max(1, int(effective * new_fraction))
    cache = None if cache_pages is None else cache_pages * PAGE_SIZE
    try:
        p = plan(
            context_tokens=context,
            model_max_seq_len=model_len,
            max_new_tokens=max_new,
            cache_tokens=cache,
            max_batch_size=batch,
            chunk_size=chunk,
            paged=paged,
        )
    except EngineError as exc:
        # The only refusals: a cache that cannot hold one context.
        assert cache is not None and cache < round_up(effective), exc
        return
    assert p.context_tokens == effective
    assert p.cache_tokens % PAGE_SIZE == 0
    assert p.cache_tokens >= round_up(p.context_tokens)  # any single generation fits
    assert p.chunk_size % PAGE_SIZE == 0 and PAGE_SIZE <= p.chunk_size <= max(PAGE_SIZE, p.context_tokens)
    assert p.max_batch_size * MAX_Q_SIZE <= p.chunk_size
    assert 1 <= p.max_batch_size <= batch
    if not paged:
        assert p.max_batch_size == 1 and p.cache_tokens == round_up(p.context_tokens)
    elif cache is None:
        assert p.cache_tokens >= p.max_batch_size * p.context_tokens
        assert p.cache_tokens - p.max_batch_size * p.context_tokens < PAGE_SIZE
    else:
        assert p.cache_tokens == cache


# ---- progress bar ---------------------------------------------------------------------------------------------


def test_progress_bar_redraws_one_line_on_a_terminal() -> None:
    out = io.StringIO()
    progress = LoadProgress("Loading m", stream=out, width=10, tty=True)
    for done in range(5):
        progress(done, 4)
    lines = out.getvalue().split("\r")[1:]
    assert lines[0] == "Loading m [..........] 0/4 modules   0%"
    assert lines[2] == "Loading m [#####.....] 2/4 modules  50%"
    assert lines[-1] == "Loading m [##########] 4/4 modules 100%\n"
    assert out.getvalue().count("\n") == 1


def test_progress_logs_quarters_when_not_a_terminal(caplog: pytest.LogCaptureFixture) -> None:
    out = io.StringIO()
    progress = LoadProgress("Loading m", stream=out, tty=False)
    with caplog.at_level(logging.INFO):
        for done in range(101):
            progress(done, 100)
        progress(100, 100)  # ignored after the end
    assert out.getvalue() == ""
    counts = [r.getMessage() for r in caplog.records if "modules loaded" in r.getMessage()]
    assert counts == [f"Loading m: {n}/100 modules loaded" for n in (0, 25, 50, 75, 100)]
    assert sum("loaded in" in r.getMessage() for r in caplog.records) == 1


@given(done=st.integers(-5, 500), total=st.integers(0, 400))
def test_progress_render_never_overflows(done: int, total: int) -> None:
    text = LoadProgress("L", stream=io.StringIO(), width=20, tty=True).render(done, total)
    bar = text[text.index("[") + 1 : text.index("]")]
    assert len(bar) == 20 and set(bar) <= {"#", "."}
