from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.exc import IntegrityError

from bot.storage import Database
from bot.storage import channels as channel_repo
from bot.storage import generations as gen_repo
from bot.storage import guilds as guild_repo
from bot.storage import messages as msg_repo
from bot.storage import moderation as mod_repo
from bot.storage import personas as persona_repo
from bot.storage.messages import MessageRecord
from bot.storage.models import GenerationStatus, MessageKind, ReplyMode

GUILD = 111
OTHER_GUILD = 222
CHANNEL = 5000


def _msg(
    mid: int,
    author: int = 1,
    content: str = "hi",
    *,
    guild: int = GUILD,
    channel: int = CHANNEL,
    when: datetime | None = None,
) -> MessageRecord:
    return MessageRecord(
        id=mid,
        guild_id=guild,
        channel_id=channel,
        author_id=author,
        author_name=f"user{author}",
        kind=MessageKind.HUMAN,
        content=content,
        created_at=when or datetime.now(UTC),
    )


async def test_guild_settings_defaults_and_update(db: Database) -> None:
    async with db.session() as s:
        g = await guild_repo.get_guild(s, GUILD)
        assert g.nsfw_only is True and g.paused is False
        await guild_repo.update_guild(s, GUILD, paused=True)
    async with db.session() as s:
        assert (await guild_repo.get_guild(s, GUILD)).paused is True
        with pytest.raises(AttributeError):
            await guild_repo.update_guild(s, GUILD, no_such_field=1)


async def test_persona_names_unique_per_guild_case_insensitive(db: Database) -> None:
    async with db.session() as s:
        p = await persona_repo.create_persona(s, GUILD, "Seraphina", description="a guardian", tags=["fantasy"])
        await persona_repo.create_persona(s, OTHER_GUILD, "Seraphina")
        with pytest.raises(persona_repo.PersonaError, match="already exists"):
            await persona_repo.create_persona(s, GUILD, "seraphina")
        replaced = await persona_repo.create_persona(s, GUILD, "SERAPHINA", replace=True, description="new")
        assert replaced.id == p.id and replaced.description == "new"
    async with db.session() as s:
        found = await persona_repo.find_persona(s, GUILD, "  seraPHINA ")
        assert found is not None and found.tags == ["fantasy"]
        assert await persona_repo.count_personas(s, GUILD) == 1
        assert [x.name for x in await persona_repo.list_personas(s, GUILD, prefix="ser")] == ["SERAPHINA"]
        assert await persona_repo.list_personas(s, GUILD, prefix="%") == []  # LIKE wildcards are escaped


async def test_persona_name_validation(db: Database) -> None:
    async with db.session() as s:
        with pytest.raises(persona_repo.PersonaError, match="at most 80"):
            await persona_repo.create_persona(s, GUILD, "x" * 81)
        with pytest.raises(persona_repo.PersonaError, match="needs a name"):
            await persona_repo.create_persona(s, GUILD, "   ")


async def test_database_enforces_unique_names(db: Database) -> None:
    from bot.storage.models import Persona

    with pytest.raises(IntegrityError):
        async with db.session() as s:
            s.add(Persona(guild_id=GUILD, name="Dup"))
            s.add(Persona(guild_id=GUILD, name="Dup"))
            await s.flush()


async def test_active_persona_and_scene(db: Database) -> None:
    async with db.session() as s:
        p = await persona_repo.create_persona(s, GUILD, "Aria")
        row = await channel_repo.set_active_persona(s, GUILD, CHANNEL, p.id, scene_start=42)
        assert row.reply_mode is ReplyMode.MENTION and row.scene_start_message_id == 42
    async with db.session() as s:
        active = await channel_repo.active_persona(s, CHANNEL)
        assert active is not None and active[1].name == "Aria"
        await channel_repo.update_channel(s, GUILD, CHANNEL, reply_mode=ReplyMode.ALWAYS, sampler={"temperature": 0.5})
        assert [c.channel_id for c in await channel_repo.channels_with_persona(s)] == [CHANNEL]
    async with db.session() as s:
        persona = await persona_repo.find_persona(s, GUILD, "aria")
        await persona_repo.delete_persona(s, persona)
    async with db.session() as s:
        # ON DELETE SET NULL: the channel survives, with no persona.
        assert await channel_repo.active_persona(s, CHANNEL) is None
        row = await channel_repo.get_channel(s, CHANNEL)
        assert row is not None and row.persona_id is None and row.reply_mode is ReplyMode.ALWAYS


async def test_message_store_upsert_edit_delete_and_latest(db: Database) -> None:
    async with db.session() as s:
        await msg_repo.save_messages(s, [_msg(i, content=f"m{i}") for i in range(1, 11)])
        await msg_repo.save_message(s, _msg(5, content="m5 again"))  # idempotent upsert
        await msg_repo.save_message(s, _msg(100, channel=CHANNEL + 1))
    async with db.session() as s:
        latest = await msg_repo.latest_messages(s, CHANNEL, limit=3)
        assert [m.id for m in latest] == [8, 9, 10]
        assert [m.id for m in await msg_repo.latest_messages(s, CHANNEL, after_id=7)] == [8, 9, 10]
        assert (await msg_repo.get_message(s, 5)).content == "m5 again"
        assert await msg_repo.edit_message(s, 9, "edited")
        assert not await msg_repo.edit_message(s, 999, "nothing")
        assert await msg_repo.delete_messages(s, [10, 999]) == 1
        assert await msg_repo.newest_message_id(s, CHANNEL) == 9
    async with db.session() as s:
        m9 = await msg_repo.get_message(s, 9)
        assert m9.content == "edited" and m9.edited_at is not None


async def test_forget_user_and_retention(db: Database) -> None:
    old = datetime.now(UTC) - timedelta(days=40)
    async with db.session() as s:
        await msg_repo.save_messages(
            s,
            [
                _msg(1, author=7),
                _msg(2, author=7, guild=OTHER_GUILD, channel=9),
                _msg(3, author=8),
                _msg(4, author=8, when=old),
            ],
        )
    async with db.session() as s:
        assert await msg_repo.forget_user(s, 7, GUILD) == 1
        assert await msg_repo.get_message(s, 2) is not None
        assert await msg_repo.forget_user(s, 7) == 1
        assert await msg_repo.purge_older_than(s, datetime.now(UTC) - timedelta(days=30)) == 1
    async with db.session() as s:
        assert [m.id for m in await msg_repo.latest_messages(s, CHANNEL)] == [3]


async def test_generations_and_crash_recovery(db: Database) -> None:
    async with db.session() as s:
        g = await gen_repo.create_generation(
            s,
            guild_id=GUILD,
            channel_id=CHANNEL,
            trigger_message_id=1,
            user_id=7,
            status=GenerationStatus.RUNNING,
            alternatives=["a"],
        )
        g.reply_message_id = 77
        done = await gen_repo.create_generation(s, guild_id=GUILD, channel_id=CHANNEL, status=GenerationStatus.DONE)
    async with db.session() as s:
        assert (await gen_repo.by_reply_message(s, 77)).id == g.id
        assert (await gen_repo.latest_in_channel(s, CHANNEL)).id == done.id
        assert await gen_repo.fail_unfinished(s) == 1
    async with db.session() as s:
        again = await gen_repo.get_generation(s, g.id)
        assert again.status is GenerationStatus.FAILED and again.error and again.finished_at is not None
        assert await gen_repo.unfinished(s) == []


async def test_a_new_reply_is_recorded_in_one_write(db: Database) -> None:
    async with db.session() as s:
        g = await gen_repo.create_generation(s, guild_id=GUILD, channel_id=CHANNEL, trigger_message_id=5, user_id=7)
    async with db.session() as s:
        await gen_repo.record_new_reply(
            s,
            g.id,
            [301, 302],
            via_webhook=True,
            add_completion_tokens=12,
            status=GenerationStatus.DONE,
            finish_reason="eos",
            sampler={"temperature": 0.8},
            alternatives=["part one part two"],
            selected_index=0,
        )
    async with db.session() as s:
        row = await gen_repo.get_generation(s, g.id)
        assert row is not None and row.status is GenerationStatus.DONE and row.finish_reason == "eos"
        assert (row.reply_message_id, row.reply_message_ids, row.completion_tokens) == (301, [301, 302], 12)
        assert row.sampler == {"temperature": 0.8, "via_webhook": True} and row.alternatives == ["part one part two"]
        assert (await gen_repo.by_reply_message(s, 302)).id == g.id
        later = await gen_repo.create_generation(s, guild_id=GUILD, channel_id=CHANNEL)
        assert (await gen_repo.previous_reply(s, CHANNEL, later.id)).id == g.id


async def test_moderation_and_audit(db: Database) -> None:
    async with db.session() as s:
        assert await mod_repo.block_user(s, GUILD, 7, by=1, reason="spam")
        assert not await mod_repo.block_user(s, GUILD, 7, by=1)
        assert await mod_repo.is_blocked(s, GUILD, 7)
        assert not await mod_repo.is_blocked(s, OTHER_GUILD, 7)
        assert await mod_repo.add_filter(s, GUILD, "bad", is_regex=False, by=1) is not None
        assert await mod_repo.add_filter(s, GUILD, "bad", is_regex=False, by=1) is None
        for i in range(3):
            await mod_repo.audit(s, GUILD, 1, "persona.create", f"P{i}", fields=["name"])
    async with db.session() as s:
        assert [b.user_id for b in await mod_repo.blocked_users(s, GUILD)] == [7]
        assert await mod_repo.unblock_user(s, GUILD, 7) and not await mod_repo.unblock_user(s, GUILD, 7)
        assert [f.pattern for f in await mod_repo.list_filters(s, GUILD)] == ["bad"]
        assert await mod_repo.remove_filter(s, GUILD, "bad")
        entries = await mod_repo.recent_audit(s, GUILD, limit=2)
        assert [e.target for e in entries] == ["P2", "P1"] and entries[0].details == {"fields": ["name"]}


async def test_session_rolls_back_on_error(db: Database) -> None:
    with pytest.raises(RuntimeError):
        async with db.session() as s:
            await persona_repo.create_persona(s, GUILD, "Ghost")
            raise RuntimeError("boom")
    async with db.session() as s:
        assert await persona_repo.find_persona(s, GUILD, "Ghost") is None
