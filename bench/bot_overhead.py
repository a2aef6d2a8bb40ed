"""rpbot's own overhead: from a user's MESSAGE_CREATE to the first webhook POST of the persona's reply.

    PYTHONPATH=. python bench/bot_overhead.py [--messages 1000] [--history 100] [--json PATH] [--in-process]
                                              [--compare-in-process]

The real bot (every cog, a SQLite file, the prompt builder, the queue) runs in this process with the scripted
engine answering instantly, so nothing but rpbot (and discord.py) sits between the two events. The Discord API
emulator and the load generator run in a subprocess (``bench/discord_side.py``) so their work does not share the
bot's CPU and event loop; ``--in-process`` runs them in this process instead (the emulator's cost is then counted
too, as in the first version of this benchmark).

The persona is the real Seraphina card (with its lorebook); each channel starts with ``--history`` stored messages,
so prompts are full-sized from the first trigger. For 1, 10 and 100 busy channels it sends triggers (messages that
name the persona) at a steady rate and reports the median and p99 latency, the bot process's CPU time per trigger,
and how many triggers were answered, replaced (a newer trigger in the same channel took the place of one still
waiting: the product answers the latest message) or lost. Then it raises the rate across 100 channels to find the
highest one held: nothing lost and p99 under a second.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import inspect
import json
import logging
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import select

from bench._results import write_json
from bot.cards import card_to_persona_fields, parse_card
from bot.client import EXTENSIONS, RPBot
from bot.config import Settings
from bot.storage import Database
from bot.storage import channels as channel_repo
from bot.storage import guilds as guild_repo
from bot.storage import messages as msg_repo
from bot.storage import personas as persona_repo
from bot.storage.messages import MessageRecord
from bot.storage.migrate import upgrade_async
from bot.storage.models import Generation, MessageKind
from tests.support.conversation import VOCABULARY
from tests.support.scripted_engine import ScriptedEngine

HERE = Path(__file__).resolve().parent
CARD = HERE.parent / "tests" / "fixtures" / "cards" / "default_Seraphina.png"
DRAIN_SECONDS = 30.0  # how long the bot may take to answer the last triggers of a load
HELD_P99_MS = 1000.0

log = logging.getLogger("bench.bot_overhead")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


# ---- the Discord side: a subprocess, or the same object in this process -------------------------------------------


class RemoteSide:
    """``bench/discord_side.py`` in a subprocess, one JSON line per command and per answer."""

    def __init__(self, channels: int) -> None:
        self.channels = channels
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> dict[str, Any]:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(HERE / "discord_side.py"),
            str(self.channels),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=64 * 1024 * 1024,
        )
        return await self._read()

    async def _read(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the Discord side exited (status {await self.proc.wait()}); see its stderr above")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"the Discord side failed: {answer['error']}")
        return answer

    async def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"cmd": cmd, **args}) + "\n").encode())
        await self.proc.stdin.drain()
        return await self._read()

    async def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None and self.proc.stdin is not None:
            self.proc.stdin.write(b'{"cmd": "stop"}\n')
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


class LocalSide:
    """The same Discord side in this process and event loop."""

    def __init__(self, channels: int) -> None:
        from bench.discord_side import DiscordSide

        self.side = DiscordSide(channels)

    async def start(self) -> dict[str, Any]:
        return await self.side.start()

    async def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        if cmd == "warmup":
            return await self.side.warmup()
        if cmd == "load":
            return await self.side.load(**args)
        if cmd == "latencies":
            return {"latencies": self.side.latencies([tuple(p) for p in args["pairs"]])}
        if cmd == "errors":
            return {"errors": self.side.emu.internal_errors}
        raise ValueError(cmd)

    async def stop(self) -> None:
        await self.side.stop()


# ---- the bot -------------------------------------------------------------------------------------------------------


class ErrorCounter(logging.Handler):
    """ERROR records from the bot while it is measured (a load with errors is not "held"; they are reported)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.name}: {record.getMessage()}")


async def start_bot(info: dict[str, Any], folder: Path) -> RPBot:
    url = f"sqlite+aiosqlite:///{folder / 'rpbot.sqlite3'}"
    await upgrade_async(url)
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        discord_token=info["token"],
        database_url=url,
        discord_api_url=info["api_url"],
        discord_gateway_url=info["gateway_url"],
        engine="openai",  # not used: the scripted engine is passed in
        openai_base_url="http://127.0.0.1:9/v1",
        queue_max_size=100_000,
        stream_edit_interval=1.0,
    )
    # As `rpbot run` does (older versions of the bot, measured for comparison, lack the option).
    freeze = {"freeze_gc": True} if "freeze_gc" in inspect.signature(RPBot.__init__).parameters else {}
    bot = RPBot(
        settings,
        Database(url),
        engine=ScriptedEngine("At your service. The glade is quiet tonight.", capacity=64),
        extensions=EXTENSIONS,
        identify_delay=0,
        start_generation=True,
        guild_ready_timeout=0.05,
        **freeze,
    )
    await bot.login(info["token"])
    bot._bench_task = asyncio.create_task(bot.connect())  # type: ignore[attr-defined]
    await asyncio.wait_for(bot.wait_until_ready(), 30)
    deadline = time.monotonic() + 30
    while (guild := bot.get_guild(info["guild_id"])) is None or guild.unavailable:
        if time.monotonic() > deadline:
            raise TimeoutError("the bench guild never became available to the bot")
        await asyncio.sleep(0.05)
    return bot


async def stop_bot(bot: RPBot) -> None:
    await bot.close()
    task = getattr(bot, "_bench_task", None)
    if task is not None:
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, 15)


async def seed(bot: RPBot, info: dict[str, Any], history: int) -> None:
    """The persona, active in every channel, and ``history`` earlier messages per channel (in the store only)."""
    fields = card_to_persona_fields(parse_card(CARD.read_bytes(), CARD.name))
    fields.update(avatar=None, avatar_mime=None)
    name = str(fields.pop("name"))
    guild_id = info["guild_id"]
    rng = random.Random(7)
    start = datetime.now(UTC) - timedelta(days=1)
    # Snowflakes for "yesterday": older than anything the emulator makes now, so they sort before the benchmark's.
    base_id = int(start.timestamp() * 1000 - 1_420_070_400_000) << 22
    async with bot.db.session() as session:
        await guild_repo.update_guild(session, guild_id, ratelimit_count=0)
        persona = await persona_repo.create_persona(session, guild_id, name, **fields)
        for channel_id in info["channel_ids"]:
            await channel_repo.set_active_persona(session, guild_id, channel_id, persona.id)
        records: list[MessageRecord] = []
        for c, channel_id in enumerate(info["channel_ids"]):
            for i in range(history):
                own = i % 2 == 1
                length = rng.randint(30, 80) if own else rng.randint(5, 30)
                words = " ".join(rng.choice(VOCABULARY) for _ in range(length))
                records.append(
                    MessageRecord(
                        id=base_id + ((c * history + i) << 12),
                        guild_id=guild_id,
                        channel_id=channel_id,
                        author_id=bot.user.id if own else info["user_id"],
                        author_name=name if own else "Alice",
                        kind=MessageKind.PERSONA if own else MessageKind.HUMAN,
                        persona_id=persona.id if own else None,
                        content=words.capitalize() + ".",
                        created_at=start + timedelta(seconds=c * history + i),
                    )
                )
        for at in range(0, len(records), 2000):
            await msg_repo.save_messages(session, records[at : at + 2000])


@dataclass(frozen=True, slots=True)
class Load:
    rate: float
    messages: int
    busy: int  # channels the triggers go to


async def measure(bot: RPBot, side: RemoteSide | LocalSide, load: Load) -> dict[str, Any]:
    assert bot.queue is not None
    replaced_before = bot.queue.stats.replaced
    cpu_before = time.process_time()
    main_before = time.thread_time()
    wall_before = time.monotonic()
    sent = await side.call("load", rate=load.rate, messages=load.messages, busy=load.busy)
    triggers: list[int] = sent["sent"]

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

    deadline = time.monotonic() + DRAIN_SECONDS
    replies = await answered()
    while time.monotonic() < deadline and len(replies) + bot.queue.stats.replaced - replaced_before < load.messages:
        await asyncio.sleep(0.25)
        replies = await answered()
    cpu = time.process_time() - cpu_before
    main_cpu = time.thread_time() - main_before
    wall = time.monotonic() - wall_before
    pairs = [[t, replies[t]] for t in triggers if t in replies]
    latencies: list[float] = (await side.call("latencies", pairs=pairs))["latencies"] if pairs else []
    replaced = bot.queue.stats.replaced - replaced_before
    return {
        "channels": load.busy,
        "rate_per_s": load.rate,
        "messages": load.messages,
        "replied": len(latencies),
        "replaced": replaced,
        "lost": load.messages - len(latencies) - replaced,
        "median_ms": round(statistics.median(latencies), 2) if latencies else None,
        "p99_ms": round(percentile(latencies, 0.99), 2) if latencies else None,
        "max_ms": round(max(latencies), 2) if latencies else None,
        "bot_cpu_ms_per_trigger": round(cpu * 1000 / load.messages, 3),
        "bot_cpu_share": round(cpu / wall, 3),
        "bot_loop_cpu_ms_per_trigger": round(main_cpu * 1000 / load.messages, 3),
        "max_send_lag_ms": sent["max_send_lag_ms"],
    }


async def run_world(
    channels: int, loads: list[Load], *, history: int, in_process: bool, sweep_from: int | None = None
) -> list[dict[str, Any]]:
    """Start a Discord side with ``channels`` channels and a bot, warm up, then run the loads in order. From load
    number ``sweep_from`` on, stop at the first one not held."""
    side: RemoteSide | LocalSide = LocalSide(channels) if in_process else RemoteSide(channels)
    errors = ErrorCounter()
    watched = [logging.getLogger(name) for name in ("bot", "cogs", "discord", "asyncio")]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rpbot-bench-") as tmp:
        info = await side.start()
        bot: RPBot | None = None
        try:
            bot = await start_bot(info, Path(tmp))
            await seed(bot, info, history)
            await side.call("warmup")
            for logger in watched:
                logger.addHandler(errors)
            for index, load in enumerate(loads):
                before = len(errors.messages)
                row = await measure(bot, side, load)
                row["emulator"] = "in-process" if in_process else "subprocess"
                row["error_count"] = len(errors.messages) - before
                row["errors"] = errors.messages[before:][:3]
                rows.append(row)
                log.info("measured %s", row)
                if sweep_from is not None and index >= sweep_from and not held(row):
                    break
            problems = (await side.call("errors"))["errors"]
            if problems:
                raise RuntimeError("the Discord emulator reported problems:\n" + "\n".join(problems))
        finally:
            for logger in watched:
                logger.removeHandler(errors)
            if bot is not None:
                await stop_bot(bot)
            await side.stop()
            gc.unfreeze()  # the bot froze its heap at READY, as `rpbot run` does; the next world starts afresh
    return rows


def held(row: dict[str, Any]) -> bool:
    return row["lost"] == 0 and not row["error_count"] and row["p99_ms"] is not None and row["p99_ms"] < HELD_P99_MS


def table(rows: list[dict[str, Any]]) -> str:
    cells = (
        ("emulator", "emulator", 10),
        ("channels", "channels", 8),
        ("msg/s", "rate_per_s", 6),
        ("sent", "messages", 5),
        ("replied", "replied", 7),
        ("replaced", "replaced", 8),
        ("lost", "lost", 4),
        ("median ms", "median_ms", 9),
        ("p99 ms", "p99_ms", 8),
        ("bot CPU ms/msg", "bot_cpu_ms_per_trigger", 14),
    )
    lines = [" ".join(f"{title:>{width}}" for title, _, width in cells) + "  errors"]
    for row in rows:
        errors = f"  {row['error_count']}: {row['errors'][0].splitlines()[0][:90]}" if row["errors"] else "  0"
        lines.append(" ".join(f"{row[key]!s:>{width}}" for _, key, width in cells) + errors)
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rate, count = args.rate, args.messages
    results: dict[str, Any] = {
        "settings": {"rate": rate, "messages": count, "history": args.history, "channels": args.channels}
    }
    levels: list[dict[str, Any]] = []
    *smaller, largest = args.channels
    for channels in smaller:
        levels += await run_world(
            channels, [Load(rate, count, channels)], history=args.history, in_process=args.in_process
        )
    # The largest world also runs the rate sweep, after its level above, with the same warm bot.
    rates = []
    step = 25.0
    while step <= args.max_rate:
        rates.append(step)
        step *= 2
    sweep_loads = [Load(r, max(100, int(r * args.sweep_seconds)), largest) for r in rates]
    big = await run_world(
        largest,
        [Load(rate, count, largest), *sweep_loads],
        history=args.history,
        in_process=args.in_process,
        sweep_from=1,
    )
    levels.append(big[0])
    sweep = big[1:]
    results["channels"] = levels
    results["rate_sweep"] = sweep
    kept = [r["rate_per_s"] for r in sweep if held(r)]
    results["highest_rate_held"] = max(kept) if kept else None
    if args.compare_in_process and not args.in_process:
        results["in_process"] = await run_world(
            largest, [Load(rate, count, largest)], history=args.history, in_process=True
        )
    return results


def report(results: dict[str, Any]) -> str:
    rows = results["channels"] + results["rate_sweep"] + results.get("in_process", [])
    held_rate = results["highest_rate_held"]
    return (
        table(rows)
        + f"\nhighest rate held over {results['settings']['channels'][-1]} channels (nothing lost, p99 under 1 s): "
        + (f"{held_rate:g} msg/s" if held_rate else "none")
    )


def _counts(text: str) -> list[int]:
    try:
        counts = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers, e.g. 1,10,100") from None
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError("channel counts must be whole numbers of at least 1, e.g. 1,10,100")
    return counts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000, help="triggers per level (default 1000)")
    parser.add_argument("--rate", type=float, default=50.0, help="messages per second at each channel count")
    parser.add_argument(
        "--channels", type=_counts, default=[1, 10, 100], help="busy channel counts, comma-separated (default 1,10,100)"
    )
    parser.add_argument("--history", type=int, default=100, help="stored messages per channel before the run")
    parser.add_argument(
        "--max-rate", type=float, default=800.0, help="highest rate the sweep tries, doubling from 25 (0: no sweep)"
    )
    parser.add_argument("--sweep-seconds", type=float, default=4.0, help="seconds of load per sweep step")
    parser.add_argument("--in-process", action="store_true", help="run the emulator in this process")
    parser.add_argument(
        "--compare-in-process", action="store_true", help="also measure 100 channels with the emulator in-process"
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    return parser.parse_args(argv)


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    results = await run(args)
    print(report(results))
    write_json(args.json, results)
    return results


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("discord").setLevel(logging.ERROR)  # "PyNaCl is not installed" and the like
    asyncio.run(main_async(parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
