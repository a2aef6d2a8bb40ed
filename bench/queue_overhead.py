"""How much the generation queue costs per request, with an engine that costs nothing (the scripted engine).

    PYTHONPATH=. python bench/queue_overhead.py [--requests 20000] [--guilds 50] [--capacity 8]

Prints requests/s through submit -> run -> wait, the cost of reading one waiting request's position with a full
line, and the cost of a replacement submit. Results depend on the machine; compare runs on the same one.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from bot.generation.base import GenerationRequest
from bot.generation.queue import GenerationJob, GenerationQueue
from tests.support.scripted_engine import ScriptedEngine


async def throughput(requests: int, guilds: int, capacity: int) -> float:
    engine = ScriptedEngine("ok", capacity=capacity)
    await engine.start()
    queue = GenerationQueue(engine, max_size=requests, timeout=60)
    await queue.start()
    began = time.perf_counter()
    pending = [
        queue.submit(GenerationJob(GenerationRequest("hi"), guild_id=i % guilds, channel_id=i)) for i in range(requests)
    ]
    for req in pending:
        await req.wait()
    elapsed = time.perf_counter() - began
    await queue.close()
    return requests / elapsed


async def position_cost(waiting: int, guilds: int) -> tuple[float, float]:
    engine = ScriptedEngine("ok")
    await engine.start()
    queue = GenerationQueue(engine, max_size=waiting + 1, timeout=60)
    await queue.start()
    engine.pause()
    reqs = [
        queue.submit(GenerationJob(GenerationRequest("hi"), guild_id=i % guilds, channel_id=i)) for i in range(waiting)
    ]
    last = reqs[-1]
    rounds = 200
    began = time.perf_counter()
    for _ in range(rounds):
        # Each replacement changes the line, so each position read recomputes the order (the worst case).
        last = queue.submit(
            GenerationJob(GenerationRequest("again"), guild_id=last.job.guild_id, channel_id=last.job.channel_id)
        )
        _ = last.position
    per_read = (time.perf_counter() - began) / rounds
    began = time.perf_counter()
    for _ in range(rounds):
        _ = last.position
    cached = (time.perf_counter() - began) / rounds
    await queue.close()
    return per_read, cached


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--guilds", type=int, default=50)
    parser.add_argument("--capacity", type=int, default=8)
    parser.add_argument("--waiting", type=int, default=256)
    args = parser.parse_args()
    rate = await throughput(args.requests, args.guilds, args.capacity)
    print(
        f"throughput: {rate:,.0f} requests/s ({args.requests} requests, {args.guilds} guilds, capacity {args.capacity})"
    )
    per_read, cached = await position_cost(args.waiting, args.guilds)
    print(
        f"replace + position with {args.waiting} waiting: {per_read * 1e6:,.0f} µs; "
        f"position again (cached): {cached * 1e6:,.1f} µs"
    )


if __name__ == "__main__":
    asyncio.run(main())
