"""/admin, /forget-me and "Reply info" through the Discord emulator: each works for an admin, each is refused at run
time for everyone else (the emulator, like a server whose admin changed the defaults, does not enforce
default_member_permissions), and what they change is really changed in the database."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from bot.client import RPBot
from bot.generation.base import GenerationRequest
from bot.generation.queue import GenerationJob, QueuedRequest
from bot.storage import generations as gen_repo
from bot.storage import guilds as guild_repo
from bot.storage import messages as msg_repo
from bot.storage import moderation as mod_repo
from bot.storage.messages import MessageRecord
from bot.storage.models import AuditEntry, BlockedUser, GuildSettings, MessageKind, OutputFilter, StoredMessage
from tests.cogs.conftest import World
from tests.discord_emulator import DiscordEmulator
from tests.discord_emulator import models as m
from tests.discord_emulator.fixtures import BotRunner
from tests.discord_emulator.interactions import InteractionHandle
from tests.support.scripted_engine import ScriptedEngine

ADMIN_ONLY = ("cogs.errors", "cogs.admin")
NEED_MANAGE_SERVER = "You need the Manage Server permission for that."


@pytest.fixture
async def admin_bot(run_bot: BotRunner, world: World, scripted_engine: ScriptedEngine) -> RPBot:
    """The admin cog alone (no chat cog), with a running generation queue for /admin queue and cancel."""
    return await run_bot(engine=scripted_engine, start_generation=True, extensions=ADMIN_ONLY)


async def admin(
    emu: DiscordEmulator, where: m.Channel, who: m.Member | m.User, sub: str, /, **options: Any
) -> InteractionHandle:
    """Run ``/admin <sub>`` and return the answered handle; every answer must be ephemeral."""
    handle = await emu.slash_command(where, who, "admin", options, subcommand=sub)
    await handle.wait_response()
    assert handle.ephemeral, f"/admin {sub} answered in public: {handle.content!r}"
    return handle


async def count(bot: RPBot, model: type, *where: Any) -> int:
    async with bot.db.session() as session:
        return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


async def audit_rows(bot: RPBot, guild_id: int | None = None) -> list[AuditEntry]:
    async with bot.db.session() as session:
        stmt = select(AuditEntry).order_by(AuditEntry.id)
        if guild_id is not None:
            stmt = stmt.where(AuditEntry.guild_id == guild_id)
        return list((await session.scalars(stmt)).all())


def stored(
    message_id: int, guild_id: int, channel_id: int, author: m.Member | m.User, text: str, *, age_days: float = 0
) -> MessageRecord:
    user = author.user if isinstance(author, m.Member) else author
    return MessageRecord(
        id=message_id,
        guild_id=guild_id,
        channel_id=channel_id,
        author_id=user.id,
        author_name=user.username,
        kind=MessageKind.HUMAN,
        content=text,
        created_at=datetime.now(UTC) - timedelta(days=age_days),
    )


async def save(bot: RPBot, *records: MessageRecord) -> None:
    async with bot.db.session() as session:
        await msg_repo.save_messages(session, list(records))


def hold_job(bot: RPBot, guild_id: int, channel_id: int, user_id: int, label: str) -> QueuedRequest:
    """Submit a generation straight to the queue (the engine is paused by the caller, so it stays queued/running)."""
    assert bot.queue is not None
    request = GenerationRequest(prompt="<|system|>test<|user|>hi<|model|>", max_new_tokens=20)
    return bot.queue.submit(
        GenerationJob(request=request, guild_id=guild_id, channel_id=channel_id, user_id=user_id, label=label)
    )


# ---- what Discord is told --------------------------------------------------------------------------------------


async def test_synced_commands_carry_default_permissions(emulator: DiscordEmulator, admin_bot: RPBot) -> None:
    admin_cmd = emulator.command("admin")
    assert admin_cmd is not None
    assert int(admin_cmd.data["default_member_permissions"]) == m.MANAGE_GUILD
    assert admin_cmd.data["contexts"] == [0]  # guild only

    reply_info = emulator.command("Reply info", type=3)
    assert reply_info is not None
    assert int(reply_info.data["default_member_permissions"]) == m.MANAGE_MESSAGES
    assert reply_info.data["contexts"] == [0]

    forget_me = emulator.command("forget-me")
    assert forget_me is not None
    assert forget_me.data.get("default_member_permissions") is None  # anyone may forget themselves


# ---- refused at run time ---------------------------------------------------------------------------------------


def _synced_subcommands(emu: DiscordEmulator) -> set[str]:
    names: set[str] = set()
    for option in emu.command("admin").data["options"]:  # type: ignore[union-attr]
        if option["type"] == 1:
            names.add(option["name"])
        elif option["type"] == 2:
            names.update(f"{option['name']} {sub['name']}" for sub in option["options"])
    return names


async def test_every_admin_command_is_refused_for_members_without_manage_server(
    emulator: DiscordEmulator, admin_bot: RPBot, world: World, scripted_engine: ScriptedEngine
) -> None:
    gid = world.guild.id
    await save(admin_bot, stored(1, gid, world.general.id, world.admin, "the admin's own words"))
    scripted_engine.pause()
    held = hold_job(admin_bot, gid, world.general.id, world.admin.user.id, "held")
    valid_options: dict[str, dict[str, Any]] = {
        "block": {"user": world.admin},
        "unblock": {"user": world.admin},
        "blocklist": {},
        "forget": {"user": world.admin},
        "pause": {},
        "resume": {},
        "ratelimit": {"count": 1, "seconds": 60},
        "nsfw-only": {"enabled": False},
        "persona-role": {},
        "queue": {},
        "cancel": {},
        "audit": {},
        "filter add": {"pattern": "dragon"},
        "filter remove": {"pattern": "dragon"},
        "filter list": {},
    }
    assert _synced_subcommands(emulator) == set(valid_options), "a new /admin subcommand needs a refusal check here"

    for who in (world.member, world.mod):  # Manage Messages is not enough either
        for sub, options in valid_options.items():
            handle = await admin(emulator, world.general, who, sub, **options)
            assert handle.content == NEED_MANAGE_SERVER, (who.user.username, sub, handle.content)

    # Nothing changed: no settings, blocks, filters or audit entries; the message and the queued reply survive.
    async with admin_bot.db.session() as session:
        settings = await session.get(GuildSettings, gid)
    assert settings is None or (settings.nsfw_only and not settings.paused and settings.ratelimit_count == 6)
    assert await count(admin_bot, BlockedUser) == 0
    assert await count(admin_bot, OutputFilter) == 0
    assert await count(admin_bot, AuditEntry) == 0
    assert await count(admin_bot, StoredMessage) == 1
    assert not held.finished
    scripted_engine.resume()


async def test_refusal_is_explained_after_a_restart_in_the_same_process(
    emulator: DiscordEmulator, run_bot: BotRunner, world: World
) -> None:
    # discord.py re-executes extension modules on every load; the error classes must survive that.
    for _ in range(2):
        bot = await run_bot(extensions=ADMIN_ONLY)
        handle = await admin(emulator, world.general, world.member, "pause")
        assert handle.content == NEED_MANAGE_SERVER
        await run_bot.stop(bot)


async def test_filter_autocomplete_reveals_nothing_to_members(
    emulator: DiscordEmulator, admin_bot: RPBot, world: World
) -> None:
    await admin(emulator, world.general, world.admin, "filter add", pattern="dragon")
    for who, expected in ((world.admin, ["dragon"]), (world.member, [])):
        handle = await emulator.autocomplete(
            world.general, who, "admin", {"pattern": "dra"}, "pattern", subcommand="filter remove"
        )
        await handle.wait_response()
        assert [c["value"] for c in handle.choices] == expected


async def test_administrators_may_use_admin_commands(emulator: DiscordEmulator, admin_bot: RPBot, world: World) -> None:
    boss = await emulator.add_member(world.guild, "boss", admin=True)
    handle = await admin(emulator, world.general, boss, "blocklist")
    assert handle.content == "Nobody is blocked."


# ---- each command, as an admin ---------------------------------------------------------------------------------


async def test_block_unblock_and_blocklist(
    emulator: DiscordEmulator, admin_bot: RPBot, world: World, scripted_engine: ScriptedEngine
) -> None:
    gid, nell = world.guild.id, world.member.user
    scripted_engine.pause()
    theirs = hold_job(admin_bot, gid, world.general.id, nell.id, "for nell")
    others = hold_job(admin_bot, gid, world.nsfw.id, world.admin.user.id, "for ada")

    handle = await admin(emulator, world.general, world.admin, "block", user=world.member, reason="spamming")
    assert handle.content == (
        f"Blocked <@{nell.id}>: personas will ignore them here. 1 pending replies to them were cancelled."
    )
    assert theirs.finished and not others.finished
    others.cancel()
    scripted_engine.resume()
    assert handle.original is not None and handle.original.mention_ids == []  # the mention does not ping
    assert await count(admin_bot, BlockedUser, BlockedUser.guild_id == gid, BlockedUser.user_id == nell.id) == 1

    again = await admin(emulator, world.general, world.admin, "block", user=world.member)
    assert again.content == f"<@{nell.id}> is already blocked."

    listing = await admin(emulator, world.general, world.admin, "blocklist")
    assert listing.content.startswith("**Blocked users**")
    assert f"<@{nell.id}>" in listing.content and "spamming" in listing.content

    bot_user = emulator.bot_user
    refused = await admin(emulator, world.general, world.admin, "block", user=bot_user)
    assert "block a person instead" in refused.content

    handle = await admin(emulator, world.general, world.admin, "unblock", user=world.member)
    assert handle.content == f"Unblocked <@{nell.id}>."
    assert await count(admin_bot, BlockedUser) == 0
    again = await admin(emulator, world.general, world.admin, "unblock", user=world.member)
    assert again.content == f"<@{nell.id}> is not blocked."
    assert (await admin(emulator, world.general, world.admin, "blocklist")).content == "Nobody is blocked."

    actions = [(a.action, a.actor_id, a.target) for a in await audit_rows(admin_bot, gid)]
    assert actions == [
        ("admin.block", world.admin.user.id, f"user {nell.id}"),
        ("admin.unblock", world.admin.user.id, f"user {nell.id}"),
    ]


async def test_guild_switches_are_stored(emulator: DiscordEmulator, admin_bot: RPBot, world: World) -> None:
    gid = world.guild.id

    async def settings() -> GuildSettings:
        async with admin_bot.db.session() as session:
            return await guild_repo.get_guild(session, gid)

    defaults = await settings()
    assert (defaults.nsfw_only, defaults.paused, defaults.ratelimit_count, defaults.ratelimit_seconds) == (
        True,
        False,
        6,
        60,
    )

    assert "paused" in (await admin(emulator, world.general, world.admin, "pause")).content
    assert (await settings()).paused
    assert "reply again" in (await admin(emulator, world.general, world.admin, "resume")).content
    assert not (await settings()).paused

    handle = await admin(emulator, world.general, world.admin, "ratelimit", count=2, seconds=30)
    assert handle.content == "Each user gets at most 2 replies per 30 s."
    assert ((await settings()).ratelimit_count, (await settings()).ratelimit_seconds) == (2, 30)
    handle = await admin(emulator, world.general, world.admin, "ratelimit", count=0, seconds=30)
    assert handle.content == "No reply limit per user."
    with pytest.raises(ValueError):  # the Discord client refuses values outside the synced range
        await emulator.slash_command(
            world.general, world.admin, "admin", {"count": 1, "seconds": 0}, subcommand="ratelimit"
        )

    handle = await admin(emulator, world.general, world.admin, "nsfw-only", enabled=False)
    assert "every channel" in handle.content and not (await settings()).nsfw_only
    handle = await admin(emulator, world.general, world.admin, "nsfw-only", enabled=True)
    assert "age-restricted" in handle.content and (await settings()).nsfw_only

    role = await emulator.create_role(world.guild, "Storytellers")
    handle = await admin(emulator, world.general, world.admin, "persona-role", role=role)
    assert f"<@&{role.id}>" in handle.content and (await settings()).persona_manager_role_id == role.id
    handle = await admin(emulator, world.general, world.admin, "persona-role")
    assert "removed" in handle.content and (await settings()).persona_manager_role_id is None

    actions = [a.action for a in await audit_rows(admin_bot, gid)]
    assert actions == [
        "admin.pause",
        "admin.resume",
        "admin.ratelimit",
        "admin.ratelimit",
        "admin.nsfw-only",
        "admin.nsfw-only",
        "admin.persona-role",
        "admin.persona-role",
    ]


async def test_filters_are_validated_listed_and_removed(
    emulator: DiscordEmulator, admin_bot: RPBot, world: World
) -> None:
    ch, ada = world.general, world.admin

    async def add(pattern: str, regex: bool = False) -> str:
        return (await admin(emulator, ch, ada, "filter add", pattern=pattern, regex=regex)).content

    assert "too slow" in await add(r"(a+)+$", regex=True)
    assert "not a valid regular expression" in await add(r"(unclosed", regex=True)
    assert "matches empty text" in await add(r"x*", regex=True)
    assert await count(admin_bot, OutputFilter) == 0

    assert await add("dragon") == "Added filter `dragon`."
    assert "exists already" in await add("dragon")
    assert await add(r"wy(rm|vern)s?", regex=True) == "Added filter `wy(rm|vern)s?`."

    listing = await admin(emulator, ch, ada, "filter list")
    assert "`dragon`" in listing.content and "(regex)" in listing.content

    assert (await admin(emulator, ch, ada, "filter remove", pattern="dragon")).content == "Filter removed."
    assert "No such filter" in (await admin(emulator, ch, ada, "filter remove", pattern="dragon")).content
    async with admin_bot.db.session() as session:
        patterns = sorted(r.pattern for r in (await session.scalars(select(OutputFilter))).all())
    assert "dragon" not in patterns and r"wy(rm|vern)s?" in patterns

    actions = [a.action for a in await audit_rows(admin_bot, world.guild.id)]
    assert actions.count("admin.filter.add") == await count(admin_bot, OutputFilter) + 1
    assert actions[-1] == "admin.filter.remove"


async def test_long_lists_fit_in_one_message(
    emulator: DiscordEmulator, admin_bot: RPBot, world: World, scripted_engine: ScriptedEngine
) -> None:
    gid = world.guild.id
    async with admin_bot.db.session() as session:
        for i in range(60):
            await mod_repo.block_user(session, gid, 10_000 + i, world.admin.user.id, f"reason number {i} " * 20)
        for i in range(100):
            await mod_repo.add_filter(session, gid, f"word{i:03d}" + "x" * 150, is_regex=False, by=None)
    scripted_engine.pause()
    held = [
        hold_job(admin_bot, gid, 20_000 + i, world.member.user.id, f"{'Persona' * 11} in #{'channel' * 14}")
        for i in range(30)
    ]

    for sub, title, total in (("blocklist", "Blocked users", 60), ("filter list", "Output filters", 100)):
        text = (await admin(emulator, world.general, world.admin, sub)).content
        shown = len(text.splitlines()) - 2  # less the title and the "…and N more" line
        assert len(text) <= 2000 and text.startswith(f"**{title}**")
        assert text.endswith(f"…and {total - shown} more") and 0 < shown < total
    queue_text = (await admin(emulator, world.general, world.admin, "queue")).content
    assert len(queue_text) <= 2000 and queue_text.endswith("more")
    for job in held:
        job.cancel()
    scripted_engine.resume()


async def test_long_filter_removed_through_its_autocomplete_value(
    emulator: DiscordEmulator, admin_bot: RPBot, world: World
) -> None:
    pattern = "a" * 60 + "b" * 90  # longer than an autocomplete value may be
    await admin(emulator, world.general, world.admin, "filter add", pattern=pattern)
    complete = await emulator.autocomplete(
        world.general, world.admin, "admin", {"pattern": "aaa"}, "pattern", subcommand="filter remove"
    )
    await complete.wait_response()
    [choice] = complete.choices
    assert len(choice["value"]) == 100
    handle = await admin(emulator, world.general, world.admin, "filter remove", pattern=choice["value"])
    assert handle.content == "Filter removed."
    assert await count(admin_bot, OutputFilter) == 0


async def test_forget_and_forget_me_delete_the_rows(emulator: DiscordEmulator, admin_bot: RPBot, world: World) -> None:
    gid = world.guild.id
    other = await emulator.create_guild("Elsewhere", channels=("lobby",))
    nell = await emulator.add_member(other, world.member.user)
    lobby = other.channel("lobby")
    await emulator.wait_until(lambda: admin_bot.get_guild(other.id) is not None, "the second guild")
    await save(
        admin_bot,
        stored(10, gid, world.general.id, world.member, "my secret is pineapple"),
        stored(11, gid, world.nsfw.id, world.member, "and mango"),
        stored(12, other.id, lobby.id, world.member, "kiwi in the other server"),
        stored(13, gid, world.general.id, world.admin, "the admin stays"),
    )

    handle = await admin(emulator, world.general, world.admin, "forget", user=world.member)
    assert handle.content == f"Deleted 2 stored message(s) of <@{world.member.user.id}> in this server."
    async with admin_bot.db.session() as session:
        left = sorted((await session.scalars(select(StoredMessage.id))).all())
    assert left == [12, 13]  # only this guild's messages of that user

    me = await emulator.slash_command(lobby, nell, "forget-me")
    await me.wait_response()
    assert me.ephemeral and me.content.startswith("Done: 1 stored message(s) of yours were deleted")
    assert await count(admin_bot, StoredMessage, StoredMessage.author_id == world.member.user.id) == 0
    assert await count(admin_bot, StoredMessage) == 1

    # In a DM too: it deletes everywhere.
    await save(admin_bot, stored(14, gid, world.general.id, world.member, "again"))
    dm = await emulator.slash_command(emulator.create_dm(world.member.user), world.member.user, "forget-me")
    await dm.wait_response()
    assert dm.content.startswith("Done: 1 stored message(s)")
    assert await count(admin_bot, StoredMessage, StoredMessage.author_id == world.member.user.id) == 0

    entries = [(a.guild_id, a.actor_id, a.action, a.details) for a in await audit_rows(admin_bot)]
    nell_id = world.member.user.id
    assert entries == [
        (gid, world.admin.user.id, "admin.forget", {"messages": 2}),
        (other.id, nell_id, "forget-me", {"messages": 1}),
        (None, nell_id, "forget-me", {"messages": 1}),
    ]


async def test_audit_shows_who_did_what_and_when(emulator: DiscordEmulator, admin_bot: RPBot, world: World) -> None:
    empty = await admin(emulator, world.general, world.admin, "audit")
    assert empty.content == "No actions recorded yet."
    await admin(emulator, world.general, world.admin, "block", user=world.member, reason="rude")
    await admin(emulator, world.general, world.admin, "pause")
    await admin(emulator, world.general, world.admin, "resume")

    handle = await admin(emulator, world.general, world.admin, "audit", limit=2)
    assert handle.embeds and handle.embeds[0]["title"] == "Audit log"
    lines = handle.embeds[0]["description"].splitlines()
    assert len(lines) == 2  # newest first, limited
    assert "**admin.resume**" in lines[0] and "**admin.pause**" in lines[1]
    assert all(f"<@{world.admin.user.id}>" in line and "<t:" in line for line in lines)

    full = await admin(emulator, world.general, world.admin, "audit")
    text = full.embeds[0]["description"]
    assert f"**admin.block** <@{world.member.user.id}> (reason=rude, cancelled=0)" in text


async def test_queue_lists_and_cancel_stops_generations(
    emulator: DiscordEmulator, admin_bot: RPBot, world: World, scripted_engine: ScriptedEngine
) -> None:
    gid = world.guild.id
    other = await emulator.create_guild("Elsewhere", channels=("lobby",))
    await emulator.wait_until(lambda: admin_bot.get_guild(other.id) is not None, "the second guild")
    scripted_engine.pause()
    running = hold_job(admin_bot, gid, world.general.id, world.member.user.id, "Aria in #general")
    await emulator.wait_until(lambda: running.position == 0 and scripted_engine.active == 1, "the first to run")
    waiting = hold_job(admin_bot, gid, world.nsfw.id, world.admin.user.id, "Aria in #after-dark")
    foreign = hold_job(admin_bot, other.id, other.channel("lobby").id, world.admin.user.id, "Bob in #lobby")

    listing = await admin(emulator, world.general, world.admin, "queue")
    lines = listing.content.splitlines()
    assert lines[0] == "**Generation queue**"
    assert len(lines) == 3  # the other guild's request is not shown
    assert lines[1].startswith(f"- writing: Aria in #general in <#{world.general.id}> for <@{world.member.user.id}>")
    # #2: the other guild's request goes first (guilds take turns), though only this guild's are listed.
    assert lines[2].startswith(f"- #2 in queue: Aria in #after-dark in <#{world.nsfw.id}>")

    one = await admin(emulator, world.general, world.admin, "cancel", channel=world.nsfw)
    assert one.content == f"Cancelled 1 replies in <#{world.nsfw.id}>."
    assert waiting.finished and not running.finished

    rest = await admin(emulator, world.general, world.admin, "cancel")
    assert rest.content == "Cancelled 1 replies in this server."
    assert running.finished and not foreign.finished
    assert (await admin(emulator, world.general, world.admin, "queue")).content == (
        "Nothing is queued or running in this server."
    )
    assert [(a.action, a.target, a.details) for a in await audit_rows(admin_bot, gid)] == [
        ("admin.cancel", f"channel {world.nsfw.id}", {"cancelled": 1}),
        ("admin.cancel", "guild", {"cancelled": 1}),
    ]
    foreign.cancel()
    scripted_engine.resume()


async def test_reply_info_is_for_moderators_and_names_the_trigger(
    emulator: DiscordEmulator, admin_bot: RPBot, world: World
) -> None:
    trigger = await emulator.user_message(world.general, world.member, "Aria, tell me a story")
    hook = emulator.create_webhook(world.general, "Aria")
    reply = await emulator.webhook_message(hook, "Once upon a time...", username="Aria")
    async with admin_bot.db.session() as session:
        gen = await gen_repo.create_generation(
            session,
            guild_id=world.guild.id,
            channel_id=world.general.id,
            trigger_message_id=trigger.id,
            user_id=world.member.user.id,
            reply_message_id=reply.id,
            reply_message_ids=[reply.id],
            prompt_tokens=120,
            completion_tokens=7,
            sampler={"temperature": 0.8, "top_p": 0.9, "max_new_tokens": 300, "via_webhook": True},
        )
        gen_id = gen.id
    assert gen_id

    refused = await emulator.message_command(world.general, world.member, "Reply info", reply)
    await refused.wait_response()
    assert refused.ephemeral and refused.content == "You need the Manage Messages permission for Reply info."

    unknown = await emulator.message_command(world.general, world.mod, "Reply info", trigger)
    await unknown.wait_response()
    assert unknown.ephemeral and unknown.content == "That message is not a persona reply I know of."

    info = await emulator.message_command(world.general, world.mod, "Reply info", reply)
    await info.wait_response()
    assert info.ephemeral and info.embeds
    fields = {f["name"]: f["value"] for f in info.embeds[0]["fields"]}
    assert fields["Triggered by"] == f"<@{world.member.user.id}> ({world.member.user.id})"
    assert fields["Trigger message"] == str(trigger.id)
    assert fields["Tokens"] == "prompt 120, reply 7"
    assert "temperature=0.8" in fields["Settings"] and "via_webhook" not in fields["Settings"]
    assert "<t:" in fields["When"]
    assert [(a.action, a.actor_id) for a in await audit_rows(admin_bot, world.guild.id)] == [
        ("reply-info", world.mod.user.id)
    ]


async def test_retention_purges_old_messages(
    emulator: DiscordEmulator, run_bot: BotRunner, world: World, scripted_engine: ScriptedEngine
) -> None:
    gid = world.guild.id
    first = await run_bot(extensions=ADMIN_ONLY)
    await save(
        first,
        stored(20, gid, world.general.id, world.member, "ancient", age_days=40),
        stored(21, gid, world.general.id, world.member, "old", age_days=31),
        stored(22, gid, world.general.id, world.member, "recent", age_days=29),
    )
    await run_bot.stop(first)

    bot = await run_bot(extensions=ADMIN_ONLY, settings={"message_retention_days": 30})
    # The first purge runs when the cog loads; its audit entry is written in the same transaction.
    for _ in range(250):
        purges = [(a.action, a.target, a.details) for a in await audit_rows(bot)]
        if purges:
            break
        await asyncio.sleep(0.02)
    async with bot.db.session() as session:
        assert list((await session.scalars(select(StoredMessage.id))).all()) == [22]
    assert purges == [("retention.purge", "30 days", {"messages": 2})]
