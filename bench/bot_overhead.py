"""rpbot's own overhead: MESSAGE_CREATE to the first webhook POST, with an engine that costs nothing.

    PYTHONPATH=. python bench/bot_overhead.py [--messages 300] [--json bench/results/bot_overhead.json]

The real bot (every cog, SQLite store, prompt builder, queue) runs against the Discord API emulator in the same
process, with the scripted engine answering instantly, so what is measured is rpbot plus discord.py plus the
emulator's own HTTP/websocket handling — an upper bound on rpbot's share. For 1, 10 and 100 busy channels it sends
mention-triggers at a steady rate and reports median and p99 latency from the moment the emulator dispatches the
MESSAGE_CREATE to the moment it receives the first webhook POST of that reply. Then it raises the rate across 100
channels to find the highest one at which every trigger got its reply (none lost, none replaced).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import select

from bot.client import EXTENSIONS
from bot.storage import channels as channel_repo
from bot.storage import guilds as guild_repo
from bot.storage import personas as persona_repo
from bot.storage.models import Generation
from tests.discord_emulator import DiscordEmulator
from tests.discord_emulator.fixtures import BotRunner
from tests.support.scripted_engine import ScriptedEngine


def _webhook_posts(emu: DiscordEmulator, start: int = 0) -> list[Any]:
    return [r for r in emu.requests[start:] if r.method == "POST" and r.path.startswith("/webhooks/")]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def _world(emu: DiscordEmulator, runner: BotRunner, channels: int) -> tuple[Any, list[Any], Any]:
    guild = await emu.create_guild("Bench", channels=())
    chans = [await emu.create_channel(guild, f"rp-{i}", nsfw=True) for i in range(channels)]
    user = await emu.add_member(guild, "alice", nick="Alice")
    engine = ScriptedEngine("At your service.", capacity=64)
    bot = await runner(
        engine=engine,
        start_generation=True,
        extensions=EXTENSIONS,
        settings={"queue_max_size": 100_000, "stream_edit_interval": 1.0},
    )
    async with bot.db.session() as session:
        await guild_repo.update_guild(session, guild.id, ratelimit_count=0)
        persona = await persona_repo.create_persona(session, guild.id, "Seraphina", description="A guardian.")
        for chan in chans:
            await channel_repo.set_active_persona(session, guild.id, chan.id, persona.id)
    # Warm up: each channel's webhook is created (and its avatar set) on its first reply; not measured.
    for i, chan in enumerate(chans):
        await emu.user_message(chan, user, f"Seraphina warm{i}")
    await emu.wait_until(lambda: len(_webhook_posts(emu)) >= channels, "warm-up replies", timeout=60)
    return bot, chans, user


async def run_level(channels: int, rate: float, messages: int) -> dict[str, Any]:
    emu = DiscordEmulator()
    await emu.start()
    with tempfile.TemporaryDirectory() as tmp:
        runner = BotRunner(emu, Path(tmp))
        try:
            bot, chans, user = await _world(emu, runner, channels)
            loop = asyncio.get_running_loop()
            triggers: list[int] = []
            began = loop.time()
            for i in range(messages):
                delay = began + i / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                msg = await emu.user_message(chans[i % channels], user, f"Seraphina m{i}x")
                triggers.append(msg.id)

            async def answered() -> dict[int, int]:
                async with bot.db.session() as session:
                    rows = (
                        await session.execute(
                            select(Generation.trigger_message_id, Generation.reply_message_id).where(
                                Generation.trigger_message_id.in_(triggers), Generation.reply_message_id.is_not(None)
                            )
                        )
                    ).all()
                return {t: r for t, r in rows}

            deadline = loop.time() + 30
            replies = await answered()
            while loop.time() < deadline and len(replies) + bot.queue.stats.replaced < messages:
                await asyncio.sleep(0.2)
                replies = await answered()
            # Snowflakes carry their creation time in milliseconds: the trigger's is when the emulator dispatched
            # MESSAGE_CREATE, the reply's when it received the first webhook POST.
            latencies = [float((replies[t] >> 22) - (t >> 22)) for t in triggers if t in replies]
            stats = bot.queue.stats
            result = {
                "channels": channels,
                "rate_per_s": rate,
                "messages": messages,
                "replied": len(latencies),
                "replaced": stats.replaced,
                "lost": messages - len(latencies) - stats.replaced,
                "median_ms": round(statistics.median(latencies), 2) if latencies else None,
                "p99_ms": round(_percentile(latencies, 0.99), 2) if latencies else None,
                "max_ms": round(max(latencies), 2) if latencies else None,
            }
        finally:
            await runner.stop_all()
            await emu.stop()
    return result


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=300, help="triggers per measurement")
    parser.add_argument("--rate", type=float, default=50.0, help="messages per second for the channel sweep")
    parser.add_argument("--max-rate", type=float, default=400.0, help="highest rate tried in the rate sweep")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    rows = []
    for channels in (1, 10, 100):
        rows.append(await run_level(channels, args.rate, args.messages))
    sweep = []
    rate = 25.0
    while rate <= args.max_rate:
        row = await run_level(100, rate, max(args.messages, int(rate * 4)))
        sweep.append(row)
        if row["replied"] < row["messages"]:
            break
        rate *= 2

    header = ("channels", "msg/s", "sent", "replied", "replaced", "lost", "median ms", "p99 ms")
    print(" ".join(f"{h:>9}" for h in header))
    for row in rows + sweep:
        cells = ("channels", "rate_per_s", "messages", "replied", "replaced", "lost", "median_ms", "p99_ms")
        print(" ".join(f"{row[c]!s:>9}" for c in cells))
    held = [r["rate_per_s"] for r in sweep if r["replied"] == r["messages"]]
    print(f"highest rate with every trigger answered (100 channels): {max(held) if held else 'none'} msg/s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"channels": rows, "rate_sweep": sweep}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
