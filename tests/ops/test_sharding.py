"""Which process owns which guild, and start-up clean-up that leaves other processes' replies alone."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bot.config import Settings
from bot.ops.sharding import guild_owner, owned_guilds, shard_for_guild
from bot.storage import Database
from bot.storage import generations as gen_repo
from bot.storage.models import GenerationStatus
from tests.storage.conftest import db, db_url  # noqa: F401  (SQLite, and PostgreSQL when CI provides one)

snowflakes = st.integers(min_value=1 << 22, max_value=(1 << 63) - 1)


def test_a_guild_goes_to_the_shard_of_its_timestamp_bits() -> None:
    # Discord: shard_id = (guild_id >> 22) % num_shards; the low 22 bits (worker, process, counter) do not count.
    assert shard_for_guild(5 << 22, 4) == 1
    assert shard_for_guild((5 << 22) + (1 << 22) - 1, 4) == 1
    assert shard_for_guild(6 << 22, 4) == 2
    assert shard_for_guild(None, 4) == 0  # direct messages go to shard 0


@given(guild_id=snowflakes, shard_count=st.integers(1, 64), processes=st.integers(1, 8))
def test_disjoint_processes_own_each_guild_exactly_once(guild_id: int, shard_count: int, processes: int) -> None:
    # Shards dealt out to processes the way docs/SCALING.md describes: disjoint RPBOT_SHARD_IDS covering them all.
    owners = [guild_owner(shard_count, range(p, shard_count, processes)) for p in range(processes)]
    assert sum(owns(guild_id) for owns in owners) == 1


def test_a_process_with_every_shard_owns_everything() -> None:
    assert owned_guilds(Settings(_env_file=None)) is None  # type: ignore[call-arg]
    assert owned_guilds(Settings(_env_file=None, shard_count=2, shard_ids="0,1")) is None  # type: ignore[call-arg]
    owns = owned_guilds(Settings(_env_file=None, shard_count=2, shard_ids="1"))  # type: ignore[call-arg]
    assert owns is not None and not owns(None) and owns(1 << 22) and not owns(2 << 22)


async def test_start_up_clean_up_leaves_other_shards_replies_running(db: Database) -> None:  # noqa: F811
    mine, theirs = 0 << 22, 1 << 22  # shard 0 and shard 1 of 2
    async with db.session() as session:
        ids = {}
        for label, guild_id in (("mine", mine), ("theirs", theirs)):
            gen = await gen_repo.create_generation(session, guild_id=guild_id, channel_id=guild_id + 1)
            gen.status = GenerationStatus.RUNNING
            ids[label] = gen.id
        done = await gen_repo.create_generation(session, guild_id=mine, channel_id=5, status=GenerationStatus.DONE)
    async with db.session() as session:
        assert await gen_repo.fail_unfinished(session, guilds=guild_owner(2, [0])) == 1
    async with db.session() as session:
        statuses = {label: (await gen_repo.get_generation(session, gen_id)).status for label, gen_id in ids.items()}  # type: ignore[union-attr]
        assert (await gen_repo.get_generation(session, done.id)).status is GenerationStatus.DONE  # type: ignore[union-attr]
    assert statuses == {"mine": GenerationStatus.FAILED, "theirs": GenerationStatus.RUNNING}
