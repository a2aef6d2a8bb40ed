"""SIGKILL in the middle of a streaming reply, then a restart: a real ``rpbot run`` process with the llama.cpp
engine on the tiny GGUF model, against the emulator in this process, on a SQLite file both can read.

Nothing runs at a SIGKILL: no drain, no store flush. After the restart the database must be intact, the reply that
was being written must be marked failed (in the store and in Discord, where its half-written message would
otherwise keep its typing cursor forever), and everything people said (also while the bot was down) must be
in the store.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from bot.storage import Database
from bot.storage import channels as channel_repo
from bot.storage import messages as msg_repo
from bot.storage import personas as persona_repo
from bot.storage.migrate import upgrade_async
from bot.storage.models import Generation, GenerationStatus
from tests.discord_emulator import DiscordEmulator
from tests.reliability.helpers import integrity_check
from tests.support.rpbot_process import start_bot

pytestmark = pytest.mark.slow


async def test_sigkill_mid_reply_then_restart(emulator: DiscordEmulator, tmp_path: Path, tiny_gguf: Path) -> None:
    guild = await emulator.create_guild("Tavern", channels=())
    channel = await emulator.create_channel(guild, "roleplay", nsfw=True)
    alice = await emulator.add_member(guild, "alice", nick="Alice")
    bob = await emulator.add_member(guild, "bob", nick="Bob")
    path = tmp_path / "rpbot.sqlite3"
    url = f"sqlite+aiosqlite:///{path}"
    await upgrade_async(url)
    db = Database(url)
    async with db.session() as session:
        persona = await persona_repo.create_persona(session, guild.id, "Seraphina", description="A forest guardian.")
        await channel_repo.set_active_persona(session, guild.id, channel.id, persona.id)
    env = {
        "RPBOT_ENGINE": "llamacpp",
        "RPBOT_MODEL_PATH": str(tiny_gguf),
        "RPBOT_LLAMACPP_THREADS": "1",
        "RPBOT_MAX_NEW_TOKENS": "1500",  # seconds of streaming: the kill lands mid-reply
    }
    try:
        bot = await start_bot(emulator, url, tmp_path, env=env)
        trigger = await emulator.user_message(channel, alice, "Seraphina, tell me a long story.")
        partial = await emulator.wait_for_webhook_message(channel, timeout=30)
        assert partial.content.endswith("…") and not partial.components  # streaming
        # Words said a moment before the kill sit in the store's write-behind batch, or not even that far.
        said = [await emulator.user_message(channel, bob, f"Bob's line {i}") for i in range(3)]
        await bot.kill()
        said += [await emulator.user_message(channel, bob, "Said while the bot was down.")]
        assert integrity_check(path) == "ok"

        # Shorter replies from now on, so the one after the restart is quick.
        async with db.session() as session:
            await channel_repo.update_channel(session, guild.id, channel.id, sampler={"max_new_tokens": 8})
        bot = await start_bot(emulator, url, tmp_path, env=env, name="restarted")

        async def interrupted() -> Generation | None:
            async with db.session() as session:
                gens = list((await session.scalars(select(Generation))).all())
            return gens[0] if gens and gens[0].status is GenerationStatus.FAILED else None

        gen = await bot.until(interrupted, "the interrupted reply marked failed")
        assert gen.trigger_message_id == trigger.id and "interrupted" in (gen.error or "")
        # Its half-written message says so and offers to try again, instead of streaming forever.
        await emulator.wait_until(
            lambda: "interrupted" in partial.content and partial.components, "the partial reply marked interrupted"
        )
        assert not partial.content.endswith("…")

        async def all_stored() -> bool:
            async with db.session() as session:
                rows = await msg_repo.latest_messages(session, channel.id, limit=100)
            return {trigger.id, *(m.id for m in said)} <= {r.id for r in rows}

        await bot.until(all_stored, "every message, including those said around the kill, in the store")

        # And it answers again.
        await emulator.user_message(channel, alice, "Seraphina, are you back?")
        await emulator.wait_until(
            lambda: any(m.components and m.id != partial.id for m in emulator.sent_messages(channel, source="webhook")),
            "a reply after the restart",
            timeout=60,
        )
        assert await bot.stop() == 0
        assert integrity_check(path) == "ok"
        assert not bot.errors(), bot.errors()[:10]  # the restarted process: a clean start, a clean stop
        async with db.session() as session:
            statuses = [g.status for g in (await session.scalars(select(Generation))).all()]
        assert statuses == [GenerationStatus.FAILED, GenerationStatus.DONE]
    finally:
        if bot.process.returncode is None:
            await bot.kill()
        await db.close()


async def test_sigkill_mid_regenerate_then_restart_shows_the_recorded_version(
    emulator: DiscordEmulator, tmp_path: Path, tiny_gguf: Path
) -> None:
    """A Regenerate streams into the recorded reply's own message. Killed half-way, the restart puts the recorded
    version back, with its buttons, instead of leaving half a new one with its typing cursor."""
    from tests.discord_emulator import models as m

    guild = await emulator.create_guild("Tavern", channels=())
    channel = await emulator.create_channel(guild, "roleplay", nsfw=True)
    alice = await emulator.add_member(guild, "alice", nick="Alice")
    mod = await emulator.add_member(guild, "mod", nick="Mod", permissions=m.MANAGE_CHANNELS)
    path = tmp_path / "rpbot.sqlite3"
    url = f"sqlite+aiosqlite:///{path}"
    await upgrade_async(url)
    db = Database(url)
    async with db.session() as session:
        persona = await persona_repo.create_persona(session, guild.id, "Seraphina", description="A forest guardian.")
        await channel_repo.set_active_persona(session, guild.id, channel.id, persona.id)
        await channel_repo.update_channel(session, guild.id, channel.id, sampler={"max_new_tokens": 16})
    env = {"RPBOT_ENGINE": "llamacpp", "RPBOT_MODEL_PATH": str(tiny_gguf), "RPBOT_LLAMACPP_THREADS": "1"}
    try:
        bot = await start_bot(emulator, url, tmp_path, env=env)
        await emulator.user_message(channel, alice, "Seraphina, hello.")
        reply = await emulator.wait_until(
            lambda: next((r for r in emulator.sent_messages(channel, source="webhook") if r.components), None),
            "the first reply, final",
            timeout=60,
        )
        recorded = reply.content
        regen = next(
            c["custom_id"] for row in reply.components for c in row["components"] if "regen" in c.get("custom_id", "")
        )
        # Long replies from now on (the command clears the bot's cached settings), so the kill lands mid-stream.
        settings = await emulator.slash_command(channel, mod, "chat", {"max_new_tokens": 1500}, subcommand="settings")
        await settings.wait_response()
        click = await emulator.click_button(reply, regen, alice)
        await click.wait_response()
        await emulator.wait_until(
            lambda: reply.content != recorded and reply.content.endswith("…"), "the regenerate streaming", timeout=30
        )
        await bot.kill()

        bot = await start_bot(emulator, url, tmp_path, env=env, name="restarted")
        await emulator.wait_until(
            lambda: reply.content == recorded and reply.components,
            "the recorded version back, with its buttons",
            timeout=60,
        )

        async def done() -> Generation | None:
            async with db.session() as session:
                gen = (await session.scalars(select(Generation))).first()
            return gen if gen is not None and gen.status is GenerationStatus.DONE else None

        gen = await bot.until(done, "the reply recorded as done again")
        assert gen.alternatives == [recorded] and gen.error is None
        assert await bot.stop() == 0
        assert not bot.errors(), bot.errors()[:10]
        assert integrity_check(path) == "ok"
    finally:
        if bot.process.returncode is None:
            await bot.kill()
        await db.close()
