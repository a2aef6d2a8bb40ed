"""GenerationQueue against the scripted engine: fairness, replacement, cancellation, timeouts, failures."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.generation.base import (
    EngineBroken,
    EngineError,
    EngineOutOfMemory,
    EngineUnavailable,
    GenerationRequest,
    PromptTooLong,
)
from bot.generation.queue import (
    GenerationJob,
    GenerationQueue,
    QueueClosed,
    QueuedRequest,
    QueueFull,
    RequestCancelled,
    RequestReplaced,
    RequestStatus,
    RequestTimedOut,
)
from tests.support.scripted_engine import ScriptedEngine

_ids = itertools.count(1)


def job(guild: int | None, channel: int, prompt: str | None = None, trigger: int | None = None) -> GenerationJob:
    prompt = prompt or f"g{guild}-c{channel}-{next(_ids)}"
    return GenerationJob(GenerationRequest(prompt), guild_id=guild, channel_id=channel, trigger_message_id=trigger)


def echo(prompt: str) -> str:
    return f"reply to {prompt}"


@pytest.fixture
async def engine() -> ScriptedEngine:
    engine = ScriptedEngine(echo, delay=0.001)
    await engine.start()
    return engine


@pytest.fixture
async def queue(engine: ScriptedEngine) -> AsyncIterator[GenerationQueue]:
    queue = GenerationQueue(engine, max_size=100, timeout=10, restart_backoff=(0.01,))
    await queue.start()
    yield queue
    await queue.close()


async def settle(queue: GenerationQueue) -> None:
    """Let running tasks reach their next await (several loop turns)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def until(condition: object, what: str) -> None:
    for _ in range(2000):
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"gave up waiting for {what}")


async def test_a_request_streams_and_returns_its_reply(queue: GenerationQueue) -> None:
    req = queue.submit(job(1, 10, "hello"))
    chunks = [chunk async for chunk in req.chunks()]
    result = await req.wait()
    assert result.text == "reply to hello" == "".join(chunks)
    assert len(chunks) > 1
    assert req.status is RequestStatus.DONE and req.position == 0
    assert result.finish_reason == "eos" and result.completion_tokens == len(chunks)
    # A late reader still gets every chunk.
    assert [chunk async for chunk in req.chunks()] == chunks


async def test_three_guilds_take_turns_under_load(engine: ScriptedEngine, queue: GenerationQueue) -> None:
    engine.pause()
    heavy = [queue.submit(job(1, 100 + i)) for i in range(12)]
    light_b = [queue.submit(job(2, 200 + i)) for i in range(4)]
    light_c = [queue.submit(job(3, 300 + i)) for i in range(4)]
    everything = heavy + light_b + light_c
    await settle(queue)
    predicted = sorted(everything, key=lambda r: r.position)
    assert predicted[0] is heavy[0] and heavy[0].status is RequestStatus.RUNNING
    engine.resume()
    results = await asyncio.gather(*(r.wait() for r in everything))

    started = [prompt.split("-")[0] for prompt in engine.prompts]
    expected = ["g1"] + ["g2", "g3", "g1"] * 4 + ["g1"] * 7
    assert started == expected
    # The positions shown while waiting were the real start order.
    assert engine.prompts == [r.job.request.prompt for r in predicted]
    # Nothing lost, nothing doubled, every reply to its own prompt.
    assert Counter(engine.prompts) == Counter(r.job.request.prompt for r in everything)
    assert [res.text for res in results] == [echo(r.job.request.prompt) for r in everything]


async def test_a_guild_that_was_just_served_waits_behind_the_others(
    engine: ScriptedEngine, queue: GenerationQueue
) -> None:
    engine.pause()
    first = queue.submit(job(1, 1))
    again = queue.submit(job(1, 2))
    other = queue.submit(job(2, 3))
    assert (first.position, other.position, again.position) == (0, 1, 2)
    engine.resume()
    await asyncio.gather(first.wait(), again.wait(), other.wait())
    assert [p.split("-")[0] for p in engine.prompts] == ["g1", "g2", "g1"]


async def test_direct_messages_count_as_one_more_guild(engine: ScriptedEngine, queue: GenerationQueue) -> None:
    engine.pause()
    reqs = [queue.submit(job(1, 10 + i)) for i in range(3)] + [queue.submit(job(None, 50 + i)) for i in range(2)]
    engine.resume()
    await asyncio.gather(*(r.wait() for r in reqs))
    assert [p.split("-")[0] for p in engine.prompts] == ["g1", "gNone", "g1", "gNone", "g1"]


async def test_a_newer_trigger_replaces_the_waiting_request_of_its_channel(
    engine: ScriptedEngine, queue: GenerationQueue
) -> None:
    engine.pause()
    running = queue.submit(job(1, 10, "first"))
    waiting = queue.submit(job(1, 10, "second"))
    other = queue.submit(job(1, 20, "other channel"))
    assert waiting.position == 1 and other.position == 2
    latest = queue.submit(job(1, 10, "third"))
    # The newer one keeps the older one's place in line.
    assert latest.position == 1 and other.position == 2
    assert waiting.status is RequestStatus.REPLACED
    with pytest.raises(RequestReplaced):
        await waiting.wait()
    assert [c async for c in waiting.chunks()] == []
    engine.resume()
    assert (await latest.wait()).text == "reply to third"
    await asyncio.gather(running.wait(), other.wait())
    assert engine.prompts == ["first", "third", "other channel"]
    assert queue.stats.replaced == 1 and queue.stats.completed == 3


async def test_a_channel_never_runs_two_requests_at_once(queue: GenerationQueue) -> None:
    engine = ScriptedEngine(echo, capacity=2)
    await engine.start()
    queue = GenerationQueue(engine, max_size=10, timeout=10)
    await queue.start()
    engine.pause()
    first = queue.submit(job(1, 10))
    second = queue.submit(job(1, 10))
    elsewhere = queue.submit(job(1, 20))
    await settle(queue)
    assert first.status is RequestStatus.RUNNING and elsewhere.status is RequestStatus.RUNNING
    assert second.status is RequestStatus.QUEUED and second.position == 1
    engine.resume()
    await asyncio.gather(first.wait(), second.wait(), elsewhere.wait())
    assert engine.prompts.index(second.job.request.prompt) == 2
    await queue.close()


async def test_concurrency_is_the_engine_capacity() -> None:
    engine = ScriptedEngine(echo, capacity=3, delay=0.002)
    await engine.start()
    queue = GenerationQueue(engine, max_size=50, timeout=10)
    await queue.start()
    reqs = [queue.submit(job(i % 4, i)) for i in range(12)]
    await asyncio.gather(*(r.wait() for r in reqs))
    assert engine.max_active == 3
    assert queue.stats.completed == 12 and queue.in_flight == 0 and queue.depth == 0
    await queue.close()


async def test_cancelling_a_waiting_request(engine: ScriptedEngine, queue: GenerationQueue) -> None:
    engine.pause()
    running = queue.submit(job(1, 10))
    waiting = queue.submit(job(1, 20))
    assert waiting.cancel() is True
    with pytest.raises(RequestCancelled):
        await waiting.wait()
    assert waiting.cancel() is False
    engine.resume()
    await running.wait()
    assert waiting.job.request.prompt not in engine.prompts
    assert queue.stats.cancelled == 1


async def test_cancelling_a_running_request_stops_the_engine_and_keeps_the_partial_text(
    engine: ScriptedEngine, queue: GenerationQueue
) -> None:
    engine.hang_next(after_chunks=2)
    running = queue.submit(job(1, 10, "long"))
    after = queue.submit(job(2, 20, "next"))
    seen = []
    async for chunk in running.chunks():
        seen.append(chunk)
        if len(seen) == 2:
            assert running.cancel() is True
    with pytest.raises(RequestCancelled) as caught:
        await running.wait()
    assert caught.value.partial == "".join(seen) == "reply to"
    assert (await after.wait()).text == "reply to next"
    assert engine.cancelled == 1 and engine.active == 0
    assert running.cancel() is False


async def test_cancel_by_channel_guild_and_trigger(engine: ScriptedEngine, queue: GenerationQueue) -> None:
    engine.pause()
    a1 = queue.submit(job(1, 10, trigger=1001))  # running
    a2 = queue.submit(job(1, 10, trigger=1002))  # waiting, same channel
    b1 = queue.submit(job(1, 11, trigger=1003))
    c1 = queue.submit(job(2, 12, trigger=1004))
    c2 = queue.submit(job(2, 13, trigger=1005))
    assert queue.cancel_channel(10) == 2
    assert queue.cancel_trigger(1004) is True
    assert queue.cancel_trigger(1004) is False
    assert queue.cancel_trigger(999) is False
    assert queue.cancel_guild(1) == 1  # b1; the channel 10 ones are gone already
    engine.resume()
    assert (await c2.wait()).text.startswith("reply to")
    for req in (a1, a2, b1, c1):
        with pytest.raises(RequestCancelled):
            await req.wait()
    assert queue.requests() == []
    assert queue.stats.cancelled == 4 and queue.stats.completed == 1


async def test_a_request_that_runs_too_long_times_out(engine: ScriptedEngine) -> None:
    queue = GenerationQueue(engine, max_size=10, timeout=0.2)
    await queue.start()
    engine.hang_next(after_chunks=1)
    stuck = queue.submit(job(1, 10))
    fine = queue.submit(job(2, 20))
    with pytest.raises(RequestTimedOut) as caught:
        await stuck.wait()
    assert caught.value.partial == "reply"
    assert stuck.status is RequestStatus.FAILED
    assert (await fine.wait()).text.startswith("reply to")
    assert engine.cancelled == 1  # the hung stream was told to stop
    assert queue.stats.timed_out == 1 and queue.stats.failed == 1
    await queue.close()


async def test_a_request_that_waits_too_long_is_dropped(engine: ScriptedEngine) -> None:
    queue = GenerationQueue(engine, max_size=10, timeout=10, max_wait=0.05)
    await queue.start()
    engine.pause()
    running = queue.submit(job(1, 10))
    waiting = queue.submit(job(1, 20))
    with pytest.raises(RequestTimedOut):
        await waiting.wait()
    assert running.status is RequestStatus.RUNNING  # the wait bound does not touch running requests
    engine.resume()
    await running.wait()
    assert waiting.job.request.prompt not in engine.prompts
    await queue.close()


async def test_an_engine_error_fails_only_its_request(engine: ScriptedEngine, queue: GenerationQueue) -> None:
    engine.fail_next(EngineError("the GPU caught fire"), after_chunks=1)
    failing = queue.submit(job(1, 10))
    fine = queue.submit(job(1, 20))
    with pytest.raises(EngineError, match="caught fire"):
        await failing.wait()
    assert failing.status is RequestStatus.FAILED and failing.text == "reply"
    assert (await fine.wait()).text.startswith("reply to")
    assert engine.starts == 1 and queue.stats.engine_restarts == 0


async def test_out_of_memory_is_a_typed_error(engine: ScriptedEngine, queue: GenerationQueue) -> None:
    engine.oom_next()
    with pytest.raises(EngineOutOfMemory):
        await queue.submit(job(1, 10)).wait()
    assert (await queue.submit(job(1, 10)).wait()).text.startswith("reply to")


async def test_a_bug_in_the_engine_becomes_an_engine_error(engine: ScriptedEngine, queue: GenerationQueue) -> None:
    engine.fail_next(ZeroDivisionError("oops"))
    with pytest.raises(EngineError, match="ZeroDivisionError"):
        await queue.submit(job(1, 10)).wait()
    assert (await queue.submit(job(1, 10)).wait()).text.startswith("reply to")


async def test_prompt_too_long_fails_the_request_before_it_runs() -> None:
    engine = ScriptedEngine(echo, context_tokens=50)
    await engine.start()
    queue = GenerationQueue(engine, max_size=10, timeout=10)
    await queue.start()
    request = queue.submit(GenerationJob(GenerationRequest("word " * 40, max_new_tokens=20), 1, 10))
    with pytest.raises(PromptTooLong) as caught:
        await request.wait()
    assert caught.value.context == 50 and engine.prompts == []
    await queue.close()


async def test_a_broken_engine_is_restarted_and_serving_goes_on(engine: ScriptedEngine, queue: GenerationQueue) -> None:
    engine.fail_next(broken=True, after_chunks=1)
    broken = queue.submit(job(1, 10))
    waiting = queue.submit(job(2, 20))
    with pytest.raises(EngineBroken):
        await broken.wait()
    assert (await waiting.wait()).text.startswith("reply to")
    assert engine.starts == 2 and engine.closes == 1
    assert queue.stats.engine_restarts == 1 and not engine.broken


async def test_restart_failures_fail_the_waiting_requests_and_retry(
    engine: ScriptedEngine, queue: GenerationQueue
) -> None:
    engine.fail_next(broken=True)
    engine.fail_starts(2)
    broken = queue.submit(job(1, 10))
    waiting = queue.submit(job(2, 20))
    with pytest.raises(EngineBroken):
        await broken.wait()
    with pytest.raises(EngineUnavailable, match="could not be restarted"):
        await waiting.wait()
    await until(lambda: not queue.restarting, "the engine restart")
    assert engine.starts == 4  # the first start, two failed restarts, one that worked
    assert (await queue.submit(job(3, 30)).wait()).text.startswith("reply to")
    assert queue.stats.engine_restarts == 1


async def test_an_engine_that_breaks_between_requests_is_restarted_before_the_next(
    engine: ScriptedEngine, queue: GenerationQueue
) -> None:
    engine.mark_broken()
    assert (await queue.submit(job(1, 10)).wait()).text.startswith("reply to")
    assert engine.starts == 2


async def test_a_full_queue_refuses_new_channels_but_takes_replacements(engine: ScriptedEngine) -> None:
    queue = GenerationQueue(engine, max_size=2, timeout=10)
    await queue.start()
    engine.pause()
    queue.submit(job(1, 10))  # running: not counted in the waiting line
    queue.submit(job(1, 11))
    queue.submit(job(1, 12))
    with pytest.raises(QueueFull, match="full"):
        queue.submit(job(2, 13))
    replacement = queue.submit(job(1, 12))
    assert replacement.status is RequestStatus.QUEUED and queue.depth == 2
    assert queue.stats.rejected == 1
    await queue.close()


async def test_close_cancels_everything_and_refuses_new_work(engine: ScriptedEngine) -> None:
    queue = GenerationQueue(engine, max_size=10, timeout=10)
    await queue.start()
    engine.pause()
    running = queue.submit(job(1, 10))
    waiting = queue.submit(job(1, 20))
    await settle(queue)
    await queue.close()
    for req in (running, waiting):
        with pytest.raises(RequestCancelled, match="shutting down"):
            await req.wait()
    assert engine.active == 0 and queue.in_flight == 0
    with pytest.raises(QueueClosed):
        queue.submit(job(1, 30))
    await queue.close()  # twice is fine


async def test_requests_lists_running_then_waiting_in_start_order(
    engine: ScriptedEngine, queue: GenerationQueue
) -> None:
    engine.pause()
    a = queue.submit(job(1, 10))
    b = queue.submit(job(1, 11))
    c = queue.submit(job(2, 20))
    d = queue.submit(job(2, 21))
    assert queue.requests() == [a, c, b, d]
    assert [r.position for r in queue.requests()] == [0, 1, 2, 3]
    assert queue.requests(guild_id=2) == [c, d]
    engine.resume()
    await asyncio.gather(*(r.wait() for r in (a, b, c, d)))
    assert queue.requests() == []


async def test_stats_count_and_report_observations(engine: ScriptedEngine, queue: GenerationQueue) -> None:
    seen: list[tuple[str, float]] = []
    queue.stats.subscribe(lambda name, value: seen.append((name, value)))
    reqs = [queue.submit(job(1, 10 + i)) for i in range(3)]
    results = await asyncio.gather(*(r.wait() for r in reqs))
    stats = queue.stats
    assert stats.submitted == 3 and stats.completed == 3 and stats.failed == 0
    assert stats.completion_tokens == sum(r.completion_tokens for r in results)
    assert stats.prompt_tokens == sum(r.prompt_tokens for r in results)
    names = Counter(name for name, _ in seen)
    assert names == {"wait_seconds": 3, "time_to_first_token": 3, "tokens_per_second": 3}
    assert len(stats.recent_time_to_first_token) == 3 and all(v > 0 for v in stats.recent_tokens_per_second)
    assert stats.snapshot()["completed"] == 3.0 and stats.depth == 0 and stats.in_flight == 0


async def test_depth_and_in_flight_gauges(engine: ScriptedEngine, queue: GenerationQueue) -> None:
    engine.pause()
    reqs = [queue.submit(job(1, 10 + i)) for i in range(4)]
    assert (queue.stats.depth, queue.stats.in_flight) == (3, 1)
    engine.resume()
    await asyncio.gather(*(r.wait() for r in reqs))
    assert (queue.stats.depth, queue.stats.in_flight) == (0, 0)


# ---- a random workload: nothing is lost or doubled, whatever happens -------------------------------------------

_action = st.one_of(
    st.tuples(st.just("submit"), st.integers(0, 2), st.integers(0, 4)),
    st.tuples(st.just("cancel"), st.integers(0, 40), st.just(0)),
    st.tuples(st.just("cancel_channel"), st.integers(0, 4), st.just(0)),
    st.tuples(st.just("fail"), st.booleans(), st.integers(0, 2)),
    st.tuples(st.just("sleep"), st.integers(0, 3), st.just(0)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_action, min_size=1, max_size=40), st.integers(1, 3))
def test_random_workloads_never_lose_or_double_a_request(actions: list[tuple[str, int, int]], capacity: int) -> None:
    asyncio.run(_random_workload(actions, capacity))


async def _random_workload(actions: list[tuple[str, int, int]], capacity: int) -> None:
    engine = ScriptedEngine(echo, capacity=capacity, delay=0.0005)
    await engine.start()
    queue = GenerationQueue(engine, max_size=1000, timeout=10, restart_backoff=(0.001,))
    await queue.start()
    submitted: list[QueuedRequest] = []
    for index, (action, a, b) in enumerate(actions):
        if action == "submit":
            submitted.append(queue.submit(job(a, a * 10 + b, prompt=f"p{index}")))
        elif action == "cancel" and submitted:
            submitted[a % len(submitted)].cancel()
        elif action == "cancel_channel":
            queue.cancel_channel(a)
        elif action == "fail":
            engine.fail_next(broken=bool(a), after_chunks=b)
        else:
            await asyncio.sleep(a * 0.001)
    outcomes = await asyncio.gather(*(r.wait() for r in submitted), return_exceptions=True)
    await until(lambda: not queue.restarting and queue.in_flight == 0, "the queue to go idle")

    prompts = [r.job.request.prompt for r in submitted]
    assert len(set(engine.prompts)) == len(engine.prompts), "a request ran twice"
    for req, outcome in zip(submitted, outcomes, strict=True):
        assert req.finished
        ran = req.job.request.prompt in engine.prompts
        if req.status is RequestStatus.DONE:
            assert ran and outcome.text == echo(req.job.request.prompt)
        elif req.status is RequestStatus.REPLACED:
            assert not ran and isinstance(outcome, RequestReplaced)
        elif req.status is RequestStatus.CANCELLED:
            # Cancelled while waiting: never reached the engine. (Once started, it may or may not have.)
            assert isinstance(outcome, RequestCancelled) and (req.started_at is not None or not ran)
        else:
            assert isinstance(outcome, EngineError | RequestTimedOut)
    assert set(engine.prompts) <= set(prompts)
    stats = queue.stats
    assert stats.submitted == len(submitted)
    assert stats.completed + stats.failed + stats.cancelled + stats.replaced == len(submitted)
    await queue.close()
