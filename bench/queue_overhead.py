"""The generation queue: its cost per request with 1,000 waiting, and its fairness, each beside a plain FIFO queue.

    PYTHONPATH=. python bench/queue_overhead.py [--waiting 1000] [--json PATH]

Both schedulers drive the same scripted engine (no model: an instant one for the cost, one that takes a fixed time
per request for fairness) in the same run, so the difference is the scheduling alone. The FIFO baseline is what a
bot without a scheduler does: one asyncio.Queue and as many workers as the engine has slots.

* Cost: ``--waiting`` requests (one per channel, spread over 50 guilds) are submitted at once and run to the end on
  an instant engine with 8 slots; the figure is the event loop's CPU time per request (submit, dispatch, the
  stream's chunks, the result), median of several rounds. Also: one submit() and one position lookup (the queue
  notice shown to waiting users) while that many wait.
* Fairness: a heavy guild floods ``--waiting`` requests at once (one per channel) while a light guild asks once
  every 50 ms; each request takes 5 ms on an engine with 4 slots. The figure is the light guild's worst and median
  wait from submit to its first token.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._results import write_json
from bot.generation.base import Engine, GenerationRequest, GenerationResult
from bot.generation.queue import GenerationJob, GenerationQueue
from tests.support.scripted_engine import ScriptedEngine

GUILDS = 50
HEAVY, LIGHT = 1, 2


# ---- the baseline: one FIFO line, as many workers as the engine has slots -----------------------------------------


@dataclass(slots=True)
class FifoRequest:
    job: GenerationJob
    done: asyncio.Future[GenerationResult]
    on_first: Any = None  # called with nothing at the first chunk


class FifoQueue:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.line: asyncio.Queue[FifoRequest] = asyncio.Queue()
        self.workers: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.workers = [asyncio.create_task(self._work()) for _ in range(self.engine.capacity)]

    def submit(self, job: GenerationJob, on_first: Any = None) -> FifoRequest:
        req = FifoRequest(job, asyncio.get_running_loop().create_future(), on_first)
        self.line.put_nowait(req)
        return req

    async def _work(self) -> None:
        while True:
            req = await self.line.get()
            stream = self.engine.stream(req.job.request)
            first = True
            async for _chunk in stream:
                if first and req.on_first is not None:
                    req.on_first()
                first = False
            assert stream.result is not None
            req.done.set_result(stream.result)

    async def close(self) -> None:
        for worker in self.workers:
            worker.cancel()
        await asyncio.gather(*self.workers, return_exceptions=True)


def job(guild: int, channel: int) -> GenerationJob:
    return GenerationJob(GenerationRequest("hi", max_new_tokens=8), guild_id=guild, channel_id=channel)


# ---- cost per request -----------------------------------------------------------------------------------------------


async def cost_rpbot(waiting: int) -> float:
    engine = ScriptedEngine("ok", capacity=8)
    await engine.start()
    queue = GenerationQueue(engine, max_size=waiting, timeout=60)
    await queue.start()
    began = time.thread_time()
    requests = [queue.submit(job(i % GUILDS, i)) for i in range(waiting)]
    for req in requests:
        await req.wait()
    cost = (time.thread_time() - began) / waiting
    await queue.close()
    return cost


async def cost_fifo(waiting: int) -> float:
    engine = ScriptedEngine("ok", capacity=8)
    await engine.start()
    queue = FifoQueue(engine)
    await queue.start()
    began = time.thread_time()
    requests = [queue.submit(job(i % GUILDS, i)) for i in range(waiting)]
    for req in requests:
        await req.done
    cost = (time.thread_time() - began) / waiting
    await queue.close()
    return cost


async def lookups(waiting: int) -> dict[str, float]:
    """submit() and position with ``waiting`` requests waiting (the engine paused, so nothing starts)."""
    engine = ScriptedEngine("ok", capacity=8)
    await engine.start()
    queue = GenerationQueue(engine, max_size=waiting + 200, timeout=60)
    await queue.start()
    engine.pause()
    requests = [queue.submit(job(i % GUILDS, i)) for i in range(waiting)]
    rounds = 200
    began = time.perf_counter()
    extra = [queue.submit(job(i % GUILDS, waiting + i)) for i in range(rounds)]
    submit = (time.perf_counter() - began) / rounds
    began = time.perf_counter()
    for req in extra:
        # A new request changed the line, so each lookup recomputes the round-robin order (the worst case).
        queue.submit(job(req.job.guild_id, req.job.channel_id))
        _ = requests[-1].position
    position = (time.perf_counter() - began) / rounds - submit
    engine.resume()
    await queue.close()
    return {"submit_us": round(submit * 1e6, 1), "position_after_a_change_us": round(position * 1e6, 1)}


# ---- fairness -------------------------------------------------------------------------------------------------------


async def fairness(flood: int, scheduler: str, service: float = 0.005, every: float = 0.05) -> dict[str, Any]:
    engine = ScriptedEngine("ok", capacity=4, delay=service)
    await engine.start()
    loop = asyncio.get_running_loop()
    light_waits: list[float] = []
    heavy_done = asyncio.Event()
    remaining = flood

    def heavy_finished(_: Any) -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0:
            heavy_done.set()

    if scheduler == "rpbot":
        queue: Any = GenerationQueue(engine, max_size=flood + 100, timeout=120)
    else:
        queue = FifoQueue(engine)
    await queue.start()

    async def first_token(channel: int, guild: int) -> float:
        submitted = loop.time()
        if scheduler == "rpbot":
            chunks = queue.submit(job(guild, channel)).chunks()
            await anext(chunks)
            await chunks.aclose()
            return loop.time() - submitted
        started: asyncio.Future[float] = loop.create_future()

        def first() -> None:
            if not started.done():
                started.set_result(loop.time())

        queue.submit(job(guild, channel), on_first=first)
        return await started - submitted

    heavy = []
    for i in range(flood):
        if scheduler == "rpbot":
            req = queue.submit(job(HEAVY, 10_000 + i))
            task = asyncio.ensure_future(req.wait())
        else:
            task = asyncio.ensure_future(queue.submit(job(HEAVY, 10_000 + i)).done)
        task.add_done_callback(heavy_finished)
        heavy.append(task)
    began = loop.time()
    light = []
    while not heavy_done.is_set():
        # On a schedule, whether or not the previous light request has started (people do not wait their turn).
        light.append(asyncio.ensure_future(first_token(len(light) + 1, LIGHT)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(heavy_done.wait(), max(0.0, began + len(light) * every - loop.time()))
    drained = loop.time() - began
    light_waits.extend(await asyncio.gather(*light))
    await asyncio.gather(*heavy)
    await queue.close()
    light_waits.sort()
    return {
        "scheduler": scheduler,
        "light_requests": len(light_waits),
        "light_worst_wait_ms": round(light_waits[-1] * 1000, 1),
        "light_median_wait_ms": round(statistics.median(light_waits) * 1000, 1),
        "heavy_flood": flood,
        "flood_drained_s": round(drained, 2),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rounds = {"rpbot": [], "fifo": []}
    for _ in range(args.rounds):
        rounds["rpbot"].append(await cost_rpbot(args.waiting))
        rounds["fifo"].append(await cost_fifo(args.waiting))
    cost = {name: round(statistics.median(values) * 1e6, 1) for name, values in rounds.items()}
    results: dict[str, Any] = {
        "settings": {"waiting": args.waiting, "guilds": GUILDS, "rounds": args.rounds},
        "cost_us_per_request": {"rpbot": cost["rpbot"], "fifo": cost["fifo"]},
        "scheduling_overhead_us_per_request": round(cost["rpbot"] - cost["fifo"], 1),
        "lookups": await lookups(args.waiting),
        "fairness": [await fairness(args.waiting, "rpbot"), await fairness(args.waiting, "fifo")],
    }
    print(
        f"  cost per request with {args.waiting} waiting (event-loop CPU, instant engine, 8 slots): "
        f"rpbot queue {cost['rpbot']:.0f} µs, plain FIFO {cost['fifo']:.0f} µs "
        f"(scheduling overhead {results['scheduling_overhead_us_per_request']:.0f} µs)"
    )
    look = results["lookups"]
    print(
        f"  with {args.waiting} waiting: submit {look['submit_us']:.0f} µs, queue position after a change "
        f"{look['position_after_a_change_us']:.0f} µs"
    )
    for row in results["fairness"]:
        print(
            f"  fairness, {row['scheduler']:>5}: light guild worst wait {row['light_worst_wait_ms']:7.1f} ms, median "
            f"{row['light_median_wait_ms']:6.1f} ms ({row['light_requests']} requests while a {row['heavy_flood']}"
            f"-request flood drained in {row['flood_drained_s']} s)"
        )
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--waiting", type=int, default=1000, help="requests queued at once (default 1000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the cost measurement (default 5)")
    parser.add_argument("--json", type=Path, help="write the results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = asyncio.run(run(args))
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
