"""SIGTERM to a real `rpbot run` process in the middle of a streaming reply.

The bot runs as a subprocess (`python -m bot run`) against the Discord emulator in this test process, with the
llama.cpp engine on the tiny GGUF model and a SQLite file both processes can read. Long replies (1,500 tokens) keep
it streaming for seconds, so the signal lands while the reply is being written. With a grace period the reply is
finished; with none it is replaced by an "interrupted" notice. Either way the process exits 0 without a traceback,
and the store is consistent: every generation finished, every message that arrived was stored.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.storage import Database
from bot.storage import channels as channel_repo
from bot.storage import generations as gen_repo
from bot.storage import messages as msg_repo
from bot.storage import personas as persona_repo
from bot.storage.migrate import upgrade_async
from bot.storage.models import Generation, GenerationStatus, MessageKind
from tests.discord_emulator import DiscordEmulator
from tests.support.rpbot_process import BotProcess, start_bot

EXIT_TIMEOUT = 60.0
INTERRUPTED = "*(Seraphina was interrupted because the bot is restarting. Press Try again.)*"


@dataclass
class RunningBot(BotProcess):
    """The bot process, with the database the test reads beside it."""

    db: Database | None = None

    async def generations(self) -> list[Generation]:
        assert self.db is not None
        async with self.db.session() as session:
            return list((await session.scalars(select(Generation).order_by(Generation.id))).all())


@pytest.fixture
async def world(emulator: DiscordEmulator, tmp_path: Path) -> AsyncIterator[dict]:
    guild = await emulator.create_guild("Tavern", channels=())
    channel = await emulator.create_channel(guild, "roleplay", nsfw=True)
    alice = await emulator.add_member(guild, "alice", nick="Alice")
    bob = await emulator.add_member(guild, "bob", nick="Bob")
    url = f"sqlite+aiosqlite:///{tmp_path / 'rpbot.sqlite3'}"
    await upgrade_async(url)
    db = Database(url)
    async with db.session() as session:
        persona = await persona_repo.create_persona(session, guild.id, "Seraphina", description="A forest guardian.")
        await channel_repo.set_active_persona(session, guild.id, channel.id, persona.id)
    try:
        yield {"guild": guild, "channel": channel, "alice": alice, "bob": bob, "url": url, "db": db}
    finally:
        await db.close()


async def _start(emulator: DiscordEmulator, world: dict, tiny_gguf: Path, tmp_path: Path, grace: float) -> RunningBot:
    env = {
        "RPBOT_ENGINE": "llamacpp",
        "RPBOT_MODEL_PATH": str(tiny_gguf),
        "RPBOT_LLAMACPP_THREADS": "1",
        "RPBOT_MAX_NEW_TOKENS": "1500",
        "RPBOT_SHUTDOWN_GRACE_SECONDS": str(grace),
    }
    proc = await start_bot(emulator, world["url"], tmp_path, env=env)
    return RunningBot(proc.process, proc.log_path, proc.metrics_port, world["db"])


@pytest.fixture
async def stop_leftovers() -> AsyncIterator[list[RunningBot]]:
    started: list[RunningBot] = []
    yield started
    for bot in started:
        if bot.process.returncode is None:
            bot.process.kill()
            await bot.process.wait()


async def _sigterm_mid_reply(emulator: DiscordEmulator, world: dict, bot: RunningBot) -> tuple[Any, Any, float]:
    channel = world["channel"]
    trigger = await emulator.user_message(channel, world["alice"], "Seraphina, tell me a long story.")
    reply = await emulator.wait_for_webhook_message(channel, timeout=30)
    # Streaming: the first part is up and still carries the typing cursor, no buttons yet.
    assert reply.content.endswith("…") and not reply.components
    signalled = asyncio.get_running_loop().time()
    bot.process.send_signal(signal.SIGTERM)
    return trigger, reply, signalled


async def _exited_cleanly(bot: RunningBot) -> None:
    code = await asyncio.wait_for(bot.process.wait(), EXIT_TIMEOUT)
    log = bot.log()
    assert code == 0, log[-4000:]
    assert "Traceback" not in log and " ERROR " not in log, log[-4000:]
    assert "shut down cleanly" in log
    async with bot.db.session() as session:
        assert not await gen_repo.unfinished(session), "a generation was left queued or running"


async def test_sigterm_lets_the_streaming_reply_finish(
    emulator: DiscordEmulator, world: dict, tiny_gguf: Path, tmp_path: Path, stop_leftovers: list[RunningBot]
) -> None:
    bot = await _start(emulator, world, tiny_gguf, tmp_path, grace=60)
    stop_leftovers.append(bot)
    trigger, reply, signalled = await _sigterm_mid_reply(emulator, world, bot)

    # While it drains: unhealthy (so an orchestrator stops routing to it), still streaming, still storing messages.
    status, body = await bot.until(lambda: _unhealthy(bot), "/healthz to say it is shutting down", 10)
    assert status == 503 and "shutting down" in body["problems"]
    late = await emulator.user_message(world["channel"], world["bob"], "Seraphina, are you still there?")
    await bot.until(lambda: _stored(bot, late.id), "the late message in the store", 10)

    await _exited_cleanly(bot)
    parts = [msg for msg in emulator.sent_messages(world["channel"], source="webhook") if not msg.deleted]
    assert parts and parts[0].id == reply.id
    edits_after_signal = [r for r in emulator.requests_matching("PATCH", r"/webhooks/.*") if r.time > signalled]
    assert edits_after_signal, "the reply was already finished when SIGTERM arrived: nothing was tested"
    assert parts[-1].components and "Regenerate" in str(parts[-1].components)
    assert not any(part.content.endswith("…") for part in parts)

    generations = await bot.generations()
    assert len(generations) == 1, "the message that arrived while shutting down must not trigger a reply"
    assert generations[0].status is GenerationStatus.DONE and generations[0].reply_message_ids == [p.id for p in parts]
    async with bot.db.session() as session:
        stored = {row.id: row for row in await msg_repo.latest_messages(session, world["channel"].id)}
    expected = {trigger.id: MessageKind.HUMAN, late.id: MessageKind.HUMAN} | {p.id: MessageKind.PERSONA for p in parts}
    assert {i: row.kind for i, row in stored.items()} == expected
    assert all(stored[p.id].content == p.content for p in parts)


async def test_sigterm_without_grace_cancels_the_reply_with_a_notice(
    emulator: DiscordEmulator, world: dict, tiny_gguf: Path, tmp_path: Path, stop_leftovers: list[RunningBot]
) -> None:
    bot = await _start(emulator, world, tiny_gguf, tmp_path, grace=0)
    stop_leftovers.append(bot)
    trigger, reply, _ = await _sigterm_mid_reply(emulator, world, bot)
    await _exited_cleanly(bot)

    assert reply.content == INTERRUPTED
    assert "Try again" in str(reply.components) and reply.allowed_mentions == {"parse": []}
    generations = await bot.generations()
    assert [g.status for g in generations] == [GenerationStatus.CANCELLED]
    async with bot.db.session() as session:
        stored = await msg_repo.latest_messages(session, world["channel"].id)
    # The trigger is kept; the interrupted text never entered the store (the next prompt does not see it).
    assert [(s.id, s.kind) for s in stored] == [(trigger.id, MessageKind.HUMAN)]


async def _unhealthy(bot: RunningBot) -> tuple[int, dict] | None:
    status, body = await bot.health()
    return (status, body) if status == 503 else None


async def _stored(bot: RunningBot, message_id: int) -> bool:
    assert bot.db is not None
    async with bot.db.session() as session:
        return await msg_repo.get_message(session, message_id) is not None
