"""Which guilds a process serves when the bot runs as several processes (RPBOT_SHARD_IDS of RPBOT_SHARD_COUNT)."""

from __future__ import annotations

from collections.abc import Callable, Collection

from bot.config import Settings


def shard_for_guild(guild_id: int | None, shard_count: int) -> int:
    """Discord's routing: a guild's events go to shard ``(guild_id >> 22) % shard_count``; direct messages to 0."""
    if guild_id is None or guild_id == 0:
        return 0
    return (guild_id >> 22) % shard_count


def guild_owner(shard_count: int, shard_ids: Collection[int]) -> Callable[[int | None], bool]:
    """A test for "this process serves that guild", for clean-up that must not touch other processes' rows."""
    mine = frozenset(shard_ids)
    return lambda guild_id: shard_for_guild(guild_id, shard_count) in mine


def owned_guilds(settings: Settings) -> Callable[[int | None], bool] | None:
    """The guild test for this process, or None when it runs every shard (nothing is another process's)."""
    if settings.shard_count is None or settings.shard_ids is None:
        return None
    if set(settings.shard_ids) >= set(range(settings.shard_count)):
        return None
    return guild_owner(settings.shard_count, settings.shard_ids)
