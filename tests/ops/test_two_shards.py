"""Two bot processes, each with one shard of two, on one emulator and one database (SQLite file or PostgreSQL).

They stand in for two `rpbot run` processes with RPBOT_SHARD_COUNT=2 and RPBOT_SHARD_IDS=0 / 1 (docs/SCALING.md):
each must see only its own guilds and handle only their events, and both must write to the shared database at the
same time without a conflict.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import discord
from sqlalchemy import func, select

from bot.client import RPBot
from bot.storage import Database
from bot.storage import generations as gen_repo
from bot.storage import messages as msg_repo
from bot.storage.migrate import is_at_head, upgrade_async
from bot.storage.models import AuditEntry, BlockedUser, GenerationStatus
from tests.cogs._world import eventually
from tests.discord_emulator import DiscordEmulator
from tests.discord_emulator import models as m
from tests.discord_emulator.fixtures import BotRunner
from tests.storage.conftest import db_url  # noqa: F401  (SQLite, and PostgreSQL when CI provides one)
from tests.support.scripted_engine import ScriptedEngine

SHARDS = 2
GUILDS_PER_SHARD = 2
USERS_PER_GUILD = 6
ADMIN = 0x20  # Manage Server


def shard_of(guild_id: int) -> int:
    return (guild_id >> 22) % SHARDS


async def _guilds_on_both_shards(
    emulator: DiscordEmulator, channels: tuple[str, ...] = ("general",)
) -> dict[int, list]:
    by_shard: dict[int, list] = {shard: [] for shard in range(SHARDS)}
    while any(len(guilds) < GUILDS_PER_SHARD for guilds in by_shard.values()):
        guild = await emulator.create_guild(f"Guild {sum(map(len, by_shard.values()))}", channels=channels)
        if len(by_shard[shard_of(guild.id)]) < GUILDS_PER_SHARD:
            by_shard[shard_of(guild.id)].append(guild)
        else:
            await emulator.remove_guild(guild)
        await asyncio.sleep(0.001)  # snowflakes follow the clock: let it move so both shards get guilds
    return by_shard


def _count_interactions(bot: RPBot) -> Counter[int]:
    seen: Counter[int] = Counter()

    async def on_interaction(interaction: discord.Interaction) -> None:
        seen[interaction.guild_id or 0] += 1

    bot.add_listener(on_interaction)
    return seen


async def test_two_shard_processes_share_one_database(
    db_url: str,  # noqa: F811  (first: torn down last, after the bots stopped)
    emulator: DiscordEmulator,
    run_bot: BotRunner,
) -> None:
    run_bot.database_url = db_url
    by_shard = await _guilds_on_both_shards(emulator)
    guilds = [g for shard in sorted(by_shard) for g in by_shard[shard]]
    admins = {g.id: await emulator.add_member(g, "admin", permissions=ADMIN) for g in guilds}
    users = {g.id: [await emulator.add_member(g, f"user{i}") for i in range(USERS_PER_GUILD)] for g in guilds}

    bots: list[RPBot] = []
    for shard in range(SHARDS):
        if shard:
            await upgrade_async(db_url)  # every process upgrades at start; the second finds nothing to do
        bot = await run_bot(
            extensions=("cogs.errors", "cogs.admin"), settings={"shard_count": SHARDS, "shard_ids": [shard]}
        )
        bots.append(bot)
    assert (await is_at_head(db_url))[0]
    identifies = sorted((e.shard_id, e.detail["shard_count"]) for e in emulator.gateway_events if e.kind == "identify")
    assert identifies == [(0, SHARDS), (1, SHARDS)]
    for shard, bot in enumerate(bots):
        assert bot.shard_ids == [shard]
        assert {g.id for g in bot.guilds} == {g.id for g in by_shard[shard]}
    seen = [_count_interactions(bot) for bot in bots]

    # Every admin blocks every user of their guild, all at once, across both processes.
    handles = await asyncio.gather(
        *(
            emulator.slash_command(
                g.channel("general"), admins[g.id], "admin", {"user": u, "reason": "spam"}, subcommand="block"
            )
            for g in guilds
            for u in users[g.id]
        )
    )
    await asyncio.gather(*(h.wait_response() for h in handles))
    for handle in handles:
        assert handle.ephemeral and handle.content.startswith("Blocked"), handle.content

    for shard, counter in enumerate(seen):
        assert set(counter) == {g.id for g in by_shard[shard]}, "a process handled another shard's guild"
        assert all(count == USERS_PER_GUILD for count in counter.values())

    check = Database(db_url)
    try:
        async with check.session() as session:
            rows = await session.execute(select(BlockedUser.guild_id, func.count()).group_by(BlockedUser.guild_id))
            blocked = {guild_id: count for guild_id, count in rows.all()}
            audits = await session.scalar(
                select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "admin.block")
            )
    finally:
        await check.close()
    assert blocked == {g.id: USERS_PER_GUILD for g in guilds}
    assert audits == len(guilds) * USERS_PER_GUILD

    # One process stopping (a rolling restart) leaves the other serving its guilds.
    await run_bot.stop(bots[0])
    g1 = by_shard[1][0]
    handle = await emulator.slash_command(
        g1.channel("general"), admins[g1.id], "admin", {"user": users[g1.id][0]}, subcommand="unblock"
    )
    await handle.wait_response()
    assert handle.content.startswith("Unblocked")


async def test_two_shard_processes_chat_on_one_database(
    db_url: str,  # noqa: F811  (first: torn down last, after the bots stopped)
    emulator: DiscordEmulator,
    run_bot: BotRunner,
) -> None:
    """Personas created and chatted with in guilds of both shards at once; one process restarts mid-reply."""
    run_bot.database_url = db_url
    by_shard = await _guilds_on_both_shards(emulator, channels=())
    guilds = [g for shard in sorted(by_shard) for g in by_shard[shard]]
    for g in guilds:
        await emulator.create_channel(g, "roleplay", nsfw=True)
    staff = {
        g.id: await emulator.add_member(g, "staff", permissions=m.MANAGE_GUILD | m.MANAGE_CHANNELS) for g in guilds
    }
    alice = {g.id: await emulator.add_member(g, "alice", nick="Alice") for g in guilds}
    engines = [ScriptedEngine(f"Shard {shard} here.") for shard in range(SHARDS)]

    async def start(shard: int) -> RPBot:
        return await run_bot(
            engine=engines[shard],
            start_generation=True,
            extensions=("cogs.errors", "cogs.chat", "cogs.personas"),
            settings={"shard_count": SHARDS, "shard_ids": [shard], "stream_edit_interval": 0.2},
        )

    bots = [await start(shard) for shard in range(SHARDS)]

    async def command(g: Any, name: str, options: dict[str, Any]) -> Any:
        handle = await emulator.slash_command(g.channel("roleplay"), staff[g.id], "persona", options, subcommand=name)
        await handle.wait_content()
        return handle

    created = await asyncio.gather(
        *(command(g, "create", {"name": "Seraphina", "description": "A forest guardian."}) for g in guilds)
    )
    assert all("Seraphina" in h.content for h in created), [h.content for h in created]
    await asyncio.gather(*(command(g, "use", {"name": "Seraphina"}) for g in guilds))

    # Chatter in every guild at once, each ending with a message addressed to the persona.
    sent: dict[int, list[int]] = {}

    async def chatter(g: Any) -> None:
        ids = []
        for i in range(4):
            ids.append((await emulator.user_message(g.channel("roleplay"), alice[g.id], f"line {i}")).id)
        ids.append((await emulator.user_message(g.channel("roleplay"), alice[g.id], "Seraphina, hello?")).id)
        sent[g.id] = ids

    await asyncio.gather(*(chatter(g) for g in guilds))
    for g in guilds:
        expected = f"Shard {shard_of(g.id)} here."
        await emulator.wait_until(
            lambda g=g, expected=expected: any(
                msg.content == expected and msg.components
                for msg in emulator.sent_messages(g.channel("roleplay"), source="webhook")
            ),
            f"the reply in {g.name} from its own shard",
        )
    check = Database(db_url)
    try:

        async def recorded() -> bool:
            # The reply is visible on Discord a moment before its record is written (writes are batched).
            async with check.session() as session:
                for g in guilds:
                    stored = {row.id for row in await msg_repo.latest_messages(session, g.channel("roleplay").id)}
                    gen = await gen_repo.latest_in_channel(session, g.channel("roleplay").id)
                    if not set(sent[g.id]) <= stored or gen is None or gen.status is not GenerationStatus.DONE:
                        return False
            return True

        await eventually(recorded, "every guild's messages and finished reply in the database")

        # Shard 1 is mid-reply when the shard 0 process restarts: its start-up clean-up must leave that reply alone.
        g1 = by_shard[1][0]
        engines[1].pause()
        again = await emulator.user_message(g1.channel("roleplay"), alice[g1.id], "Seraphina, one more?")
        await emulator.wait_until(lambda: engines[1].active == 1, "shard 1 to be generating")

        async def its_generation() -> Any:
            async with check.session() as session:
                row = await gen_repo.latest_in_channel(session, g1.channel("roleplay").id)
            return row if row is not None and row.trigger_message_id == again.id else None

        gen_id = (await eventually(its_generation, "shard 1's generation record")).id
        await run_bot.stop(bots[0])
        bots[0] = await start(0)
        async with check.session() as session:
            running = await gen_repo.get_generation(session, gen_id)
        assert running is not None and running.status in (GenerationStatus.QUEUED, GenerationStatus.RUNNING)
        engines[1].resume()

        async def finished() -> bool:
            async with check.session() as session:
                row = await gen_repo.get_generation(session, gen_id)
            return row is not None and row.status is GenerationStatus.DONE

        await eventually(finished, "shard 1's reply to finish")
    finally:
        await check.close()
