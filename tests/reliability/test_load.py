"""Load: 200 busy channels against the instant (scripted) engine, for ``RPBOT_LOAD_SECONDS`` (10 in CI; the long
run is 60: ``RPBOT_LOAD_SECONDS=60 python -m pytest tests/reliability/test_load.py -s``).

The bot is a real process (``rpbot run`` with the scripted engine for a model), so its memory is its own. Every
channel always has one trigger waiting for its reply; when the reply is complete the channel sends the next. At the
end every trigger must have exactly one reply and one finished generation, everything said must be in the store,
and the bot's memory must stay within bounds that do not grow with the number of messages.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from bot.storage import Database
from bot.storage import channels as channel_repo
from bot.storage import guilds as guild_repo
from bot.storage import personas as persona_repo
from bot.storage.migrate import upgrade_async
from bot.storage.models import Generation, GenerationStatus, StoredMessage
from tests.discord_emulator import DiscordEmulator
from tests.reliability.helpers import integrity_check
from tests.support.rpbot_process import start_bot

GUILDS = 10
CHANNELS_PER_GUILD = 20
SECONDS = float(os.environ.get("RPBOT_LOAD_SECONDS", "10"))
REPLY = "At your service, traveller."
# Resident memory the bot may add between the first quarter of the run and its end. The history it keeps is capped
# (400 messages per channel), so a longer run must not need more; measured: see docs/RELIABILITY.md.
MAX_GROWTH_MIB = 96


@dataclass
class Lane:
    """One busy channel: the trigger waiting for its reply, and everything sent."""

    channel: Any
    member: Any
    triggers: list[Any] = field(default_factory=list)
    waiting_since: int = 0  # index in the channel's message list where the reply to the last trigger can start
    reply: Any = None


async def _setup(emu: DiscordEmulator, url: str) -> list[Lane]:
    lanes: list[Lane] = []
    db = Database(url)
    try:
        for g in range(GUILDS):
            guild = await emu.create_guild(f"Guild {g}", channels=())
            member = await emu.add_member(guild, f"user{g}", nick=f"User {g}")
            async with db.session() as session:
                persona = await persona_repo.create_persona(session, guild.id, "Seraphina", description="A guardian.")
                await guild_repo.update_guild(session, guild.id, ratelimit_count=0)  # no per-user reply limit
                for c in range(CHANNELS_PER_GUILD):
                    channel = await emu.create_channel(guild, f"rp-{c}", nsfw=True)
                    await channel_repo.set_active_persona(session, guild.id, channel.id, persona.id)
                    lanes.append(Lane(channel, member))
    finally:
        await db.close()
    return lanes


def _reply_done(emu: DiscordEmulator, lane: Lane) -> bool:
    """Whether the reply to the lane's last trigger is complete (found by scanning only what is new)."""
    if lane.reply is None:
        msgs = emu.channel_messages.get(lane.channel.id, [])
        for msg in msgs[lane.waiting_since :]:
            if msg.source == "webhook":
                lane.reply = msg
                break
        else:
            lane.waiting_since = len(msgs)
            return False
    return lane.reply.content == REPLY and bool(lane.reply.components)


async def _send(emu: DiscordEmulator, lane: Lane, n: int) -> None:
    lane.reply = None
    lane.waiting_since = len(emu.channel_messages.get(lane.channel.id, []))
    lane.triggers.append(await emu.user_message(lane.channel, lane.member, f"Seraphina, line {n}?"))


@pytest.mark.slow
async def test_200_busy_channels_every_trigger_answered_once(
    emulator: DiscordEmulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "rpbot.sqlite3"
    url = f"sqlite+aiosqlite:///{path}"
    await upgrade_async(url)
    lanes = await _setup(emulator, url)
    env = {"RPBOT_TEST_REPLY": REPLY, "RPBOT_TEST_CAPACITY": "8", "RPBOT_LOG_LEVEL": "WARNING"}
    bot = await start_bot(emulator, url, tmp_path, module="tests.reliability.scripted_bot", env=env)
    samples: list[tuple[float, int]] = []
    try:
        loop = asyncio.get_running_loop()
        began = loop.time()
        for n, lane in enumerate(lanes):
            await _send(emulator, lane, n)
        sent = len(lanes)
        last_sample = 0.0
        while True:
            now = loop.time()
            running = now - began < SECONDS
            if now - last_sample >= 0.5:
                samples.append((now - began, bot.rss_kib()[0]))
                last_sample = now
            pending = 0
            for lane in lanes:
                if not _reply_done(emulator, lane):
                    pending += 1
                elif running:
                    await _send(emulator, lane, sent)
                    sent += 1
            if not running and pending == 0:
                break
            if now - began > SECONDS + 60:
                stuck = [lane.channel.name for lane in lanes if not _reply_done(emulator, lane)]
                pytest.fail(f"{len(stuck)} channels never got their last reply, e.g. {stuck[:5]}\n{bot.log()[-3000:]}")
            await asyncio.sleep(0.02)
        elapsed = loop.time() - began
        rss, peak = bot.rss_kib()
        cpu = bot.cpu_seconds()

        # Every trigger: one reply message in its channel, one finished generation naming it, all stored.
        for lane in lanes:
            replies = [m for m in emulator.messages_in(lane.channel) if m.source == "webhook"]
            assert len(replies) == len(lane.triggers), (lane.channel.name, len(replies), len(lane.triggers))
            assert all(m.content == REPLY for m in replies)
        triggers = {t.id for lane in lanes for t in lane.triggers}
        db = Database(url)
        try:

            async def store_complete() -> bool:
                async with db.session() as session:
                    stored = await session.scalar(select(func.count()).select_from(StoredMessage))
                return stored == 2 * len(triggers)

            await bot.until(store_complete, "every trigger and reply in the store", timeout=30)
            async with db.session() as session:
                gens = (await session.execute(select(Generation.trigger_message_id, Generation.status))).all()
        finally:
            await db.close()
        assert sorted(t for t, _ in gens) == sorted(triggers), "a trigger without exactly one generation"
        assert {s for _, s in gens} == {GenerationStatus.DONE}
        assert await bot.stop() == 0
        assert integrity_check(path) == "ok"
        assert not bot.errors(), bot.errors()[:10]  # e.g. no "database is locked" among 200 channels' writes
    finally:
        if bot.process.returncode is None:
            await bot.kill()

    warm = next(kib for t, kib in samples if t >= elapsed / 4)
    growth_mib = (max(k for _, k in samples) - warm) / 1024
    with capsys.disabled():
        print(
            f"\nload: {len(lanes)} channels, {SECONDS:g}s: {len(triggers)} triggers answered "
            f"({len(triggers) / elapsed:.0f}/s), bot RSS {warm / 1024:.0f} MiB after a quarter, "
            f"{rss / 1024:.0f} MiB at the end, peak {peak / 1024:.0f} MiB (growth {growth_mib:.0f} MiB); "
            f"bot CPU {cpu:.1f} s in all ({1000 * cpu / len(triggers):.0f} ms per reply, start-up included)"
        )
    assert growth_mib < MAX_GROWTH_MIB, samples
