"""End-to-end self-tests of the Discord emulator with the real RPBot (discord.py 2.7) connected to it."""

from __future__ import annotations

import asyncio
import io
from typing import Any, ClassVar

import discord
import pytest
from discord import app_commands
from discord.ext import commands

from bot.client import RPBot
from tests.discord_emulator import DiscordEmulator, Upload
from tests.discord_emulator import models as m
from tests.discord_emulator.fixtures import BotRunner, ErrorLogGuard

PNG_1x1 = (
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
    b"\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00\x00\x00\x00IEND\xaeB`\x82"
)


class RerollButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"reroll:(?P<turn>\d+)"):
    """A persistent button whose state lives in its custom_id, so it works after a restart."""

    clicks: ClassVar[list[tuple[int, int]]] = []  # (turn, user id), across bot instances

    def __init__(self, turn: int) -> None:
        super().__init__(discord.ui.Button(label="Reroll", custom_id=f"reroll:{turn}"))
        self.turn = turn

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: Any
    ) -> RerollButton:
        return cls(int(match["turn"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        RerollButton.clicks.append((self.turn, interaction.user.id))
        await interaction.response.send_message(f"rerolling turn {self.turn}", ephemeral=True)


class NoteModal(discord.ui.Modal, title="Add a note"):
    note: discord.ui.TextInput[NoteModal] = discord.ui.TextInput(label="Note", custom_id="note", max_length=50)

    def __init__(self, sink: list[str]) -> None:
        super().__init__()
        self.sink = sink

    async def on_submit(self, interaction: discord.Interaction) -> None:
        self.sink.append(self.note.value)
        await interaction.response.send_message(f"noted: {self.note.value}", ephemeral=True)


class ProbeCog(commands.Cog):
    """A test-only cog: answers "!rest" over REST and "!hook" through a channel webhook, and records events."""

    def __init__(self, bot: commands.Bot) -> None:
        self.bot = bot
        self.seen: list[discord.Message] = []
        self.own: list[discord.Message] = []
        self.raw_edits: list[discord.RawMessageUpdateEvent] = []
        self.raw_deletes: list[discord.RawMessageDeleteEvent] = []
        self.raw_bulk: list[discord.RawBulkMessageDeleteEvent] = []
        self.notes: list[str] = []
        self.hook_messages: list[discord.WebhookMessage] = []

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        assert self.bot.user is not None
        if message.author.id == self.bot.user.id or message.webhook_id is not None:
            self.own.append(message)
            return
        self.seen.append(message)
        if message.content.startswith("!rest"):
            text = message.content.removeprefix("!rest").strip()
            if message.attachments:
                text += " | " + (await message.attachments[0].read()).decode()
            await message.channel.send(f"echo: {text}", reference=message, mention_author=False)
        elif message.content.startswith("!hook"):
            assert isinstance(message.channel, discord.TextChannel)
            webhook = await message.channel.create_webhook(name="Persona Hook", avatar=PNG_1x1)
            view = discord.ui.View(timeout=None)
            view.add_item(RerollButton(7))
            sent = await webhook.send(
                f"*waves at {message.author.mention}*",
                username="Aria",
                avatar_url="https://cdn.example.invalid/aria.png",
                allowed_mentions=discord.AllowedMentions.none(),
                view=view,
                wait=True,
                file=discord.File(io.BytesIO(b"card data"), "card.txt"),
            )
            self.hook_messages.append(await sent.edit(content=sent.content + " (edited)"))

    @commands.Cog.listener()
    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        self.raw_edits.append(payload)

    @commands.Cog.listener()
    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        self.raw_deletes.append(payload)

    @commands.Cog.listener()
    async def on_raw_bulk_message_delete(self, payload: discord.RawBulkMessageDeleteEvent) -> None:
        self.raw_bulk.append(payload)

    @app_commands.command(name="roll", description="Roll a die")
    @app_commands.describe(sides="How many sides", label="What the roll is for", card="A file to measure")
    @app_commands.default_permissions(manage_guild=True)
    async def roll(
        self,
        interaction: discord.Interaction,
        sides: app_commands.Range[int, 2, 100],
        label: str = "",
        card: discord.Attachment | None = None,
    ) -> None:
        size = len(await card.read()) if card is not None else 0
        perms = interaction.permissions.manage_guild
        await interaction.response.send_message(
            f"d{sides} for {label or 'nothing'}; card {size} bytes; manage_guild={perms}", ephemeral=True
        )

    @app_commands.command(name="think", description="Defers, then follows up")
    async def think(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)
        await interaction.followup.send("done thinking")
        await interaction.followup.send("and one more", ephemeral=True)

    @app_commands.command(name="note", description="Opens a modal")
    async def note(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_modal(NoteModal(self.notes))

    @app_commands.command(name="pick", description="Autocompletes a persona")
    async def pick(self, interaction: discord.Interaction, persona: str) -> None:
        await interaction.response.send_message(f"picked {persona}")

    @pick.autocomplete("persona")
    async def pick_persona(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        names = ["Aria", "Ariadne", "Bram"]
        return [app_commands.Choice(name=n, value=n.lower()) for n in names if n.lower().startswith(current.lower())]


@app_commands.context_menu(name="Quote")
async def quote_message(interaction: discord.Interaction, message: discord.Message) -> None:
    await interaction.response.send_message(f"> {message.content}", ephemeral=True)


async def _install_probe(bot: RPBot) -> None:
    await bot.add_cog(ProbeCog(bot))
    bot.tree.add_command(quote_message)
    bot.add_dynamic_items(RerollButton)


def _probe(bot: RPBot) -> ProbeCog:
    cog = bot.get_cog("ProbeCog")
    assert isinstance(cog, ProbeCog)
    return cog


@pytest.fixture
async def world(emulator: DiscordEmulator) -> dict[str, Any]:
    guild = await emulator.create_guild("Tavern", channels=("general", "roleplay"))
    general = guild.channel("general")
    lewd = await emulator.create_channel(guild, "after-dark", nsfw=True)
    thread = await emulator.create_thread(general, "side quest")
    alice = await emulator.add_member(guild, "alice", nick="Alice the Bold")
    mod = await emulator.add_member(guild, "mod", permissions=m.MANAGE_GUILD)
    return {"guild": guild, "general": general, "nsfw": lewd, "thread": thread, "alice": alice, "mod": mod}


async def test_bot_connects_and_sees_the_world(emulator: DiscordEmulator, run_bot: BotRunner, world: dict) -> None:
    bot = await run_bot(setup=_install_probe)
    guild = bot.get_guild(world["guild"].id)
    assert guild is not None and list(bot.guilds) == [guild]
    assert {c.name for c in guild.text_channels} == {"general", "roleplay", "after-dark"}
    nsfw = guild.get_channel(world["nsfw"].id)
    assert isinstance(nsfw, discord.TextChannel) and nsfw.is_nsfw()
    thread = guild.get_thread(world["thread"].id)
    assert thread is not None and thread.parent_id == world["general"].id and thread.type.value == 11
    assert guild.me.guild_permissions.manage_webhooks and not guild.me.guild_permissions.administrator
    identify = next(e for e in emulator.gateway_events if e.kind == "identify")
    assert identify.detail["shard_count"] == 1 and identify.detail["intents"] & (1 << 15)
    # The sync stored what the bot declared, for tests to check.
    roll = emulator.command("roll")
    assert roll.default_member_permissions == str(discord.Permissions(manage_guild=True).value)
    assert [o["name"] for o in roll.options] == ["sides", "label", "card"]
    assert roll.options[0]["min_value"] == 2 and roll.options[0]["required"] is True
    assert emulator.command("Quote", type=3).type == 3

    # Changes while connected arrive as GUILD_CREATE / CHANNEL_CREATE / THREAD_CREATE.
    joined = await emulator.create_guild("Second Home")
    ooc = await emulator.create_channel(world["guild"], "ooc", topic="out of character")
    side = await emulator.create_thread(ooc, "tangent", owner=world["alice"])
    await emulator.wait_until(lambda: bot.get_guild(joined.id) and guild.get_thread(side.id), "the new guild/thread")
    new_channel = guild.get_channel(ooc.id)
    assert isinstance(new_channel, discord.TextChannel) and new_channel.topic == "out of character"
    bot_role = world["guild"].role(emulator.bot_user.username)
    await emulator.set_role_permissions(bot_role, m.DEFAULT_BOT_PERMISSIONS & ~m.MANAGE_WEBHOOKS)
    await emulator.wait_until(lambda: not guild.me.guild_permissions.manage_webhooks, "GUILD_ROLE_UPDATE")
    with pytest.raises(discord.Forbidden):
        await new_channel.create_webhook(name="Persona Hook")
    dm = await (await bot.fetch_user(world["alice"].id)).create_dm()
    await dm.send("hello in private")
    assert emulator.sent_messages(emulator.create_dm(world["alice"]))[0].content == "hello in private"

    await emulator.remove_guild(joined)
    await emulator.wait_until(lambda: bot.get_guild(joined.id) is None, "GUILD_DELETE")


async def test_on_message_answers_over_rest_and_webhook(
    emulator: DiscordEmulator, run_bot: BotRunner, world: dict
) -> None:
    bot = await run_bot(setup=_install_probe)
    general, alice = world["general"], world["alice"]

    note = Upload("note.txt", b"attached words")
    question = await emulator.user_message(general, alice, f"!rest hi <@{bot.user.id}>", attachments=[note])
    reply = await emulator.wait_for_message(general, source="bot")
    assert reply.content == f"echo: hi <@{bot.user.id}> | attached words"
    assert reply.type == 19 and reply.referenced_message_id == question.id
    assert reply.allowed_mentions == {"parse": [], "replied_user": False}
    assert reply.mention_ids == []  # nobody pinged, not even the replied-to author
    seen = _probe(bot).seen[-1]
    assert seen.author.display_name == "Alice the Bold" and bot.user in seen.mentions

    await emulator.user_message(general, alice, "!hook")
    hooked = await emulator.wait_for_webhook_message(general, lambda msg: msg.content.endswith("(edited)"))
    assert hooked.username == "Aria" and hooked.display_author == "Aria"
    assert hooked.avatar_url == "https://cdn.example.invalid/aria.png"
    assert hooked.allowed_mentions == {"parse": []} and hooked.mention_ids == []
    assert hooked.custom_ids() == ["reroll:7"]
    assert [a.filename for a in hooked.attachments] == ["card.txt"] and hooked.attachments[0].data == b"card data"
    assert hooked.content_history == [f"*waves at {alice.mention}*"] and hooked.edited_timestamp is not None
    webhook = emulator.webhooks[hooked.webhook_id]
    assert webhook.application_id == emulator.application_id and webhook.name == "Persona Hook"
    assert webhook.avatar_data is not None and webhook.avatar_data.startswith("data:image/png;base64,")
    # The bot sees its own webhook message come back over the gateway, like on Discord.
    await emulator.wait_until(lambda: any(x.id == hooked.id for x in _probe(bot).own), "the bot to see its webhook")
    sent = emulator.requests_matching("POST", r"/webhooks/\d+/[^/]+")[-1]
    assert sent.query["wait"] == "1" and [p.filename for p in sent.files] == ["card.txt"]


async def test_slash_commands_answer_ephemerally_and_follow_up(
    emulator: DiscordEmulator, run_bot: BotRunner, world: dict
) -> None:
    await run_bot(setup=_install_probe)
    general, mod, alice = world["general"], world["mod"], world["alice"]

    roll = await emulator.slash_command(
        general, mod, "roll", {"sides": 20, "label": "stealth", "card": Upload("card.png", PNG_1x1)}
    )
    await roll.wait_response()
    assert roll.response_type == 4 and roll.ephemeral
    assert roll.content == f"d20 for stealth; card {len(PNG_1x1)} bytes; manage_guild=True"
    assert emulator.messages_in(general) == []  # ephemeral answers are not channel messages

    plain = await emulator.slash_command(general, alice, "roll", {"sides": 6})
    assert "manage_guild=False" in (await plain.wait_content()).content

    think = await emulator.slash_command(general, alice, "think")
    second = await think.wait_followup(2)
    assert think.response_type == 5 and not think.ephemeral
    assert think.original is think.followups[0] and think.original.content == "done thinking"
    assert not think.original.loading and think.original in emulator.messages_in(general)
    assert second.ephemeral and second.content == "and one more"

    with pytest.raises(ValueError, match="must be between 2 and 100"):
        await emulator.slash_command(general, alice, "roll", {"sides": 1})
    with pytest.raises(ValueError, match="required option"):
        await emulator.slash_command(general, alice, "roll", {})


async def test_modal_autocomplete_and_context_menu(emulator: DiscordEmulator, run_bot: BotRunner, world: dict) -> None:
    bot = await run_bot(setup=_install_probe)
    general, alice = world["general"], world["alice"]

    opened = await emulator.slash_command(general, alice, "note")
    await opened.wait_response()
    assert opened.response_type == 9 and opened.modal is not None and opened.modal["title"] == "Add a note"
    with pytest.raises(ValueError, match=r"must be 0\.\.50 characters"):
        await emulator.submit_modal(opened, {"note": "x" * 51})
    submitted = await emulator.submit_modal(opened, {"note": "bring snacks"})
    assert await submitted.wait_content() and submitted.content == "noted: bring snacks"
    assert _probe(bot).notes == ["bring snacks"]

    typing = await emulator.autocomplete(general, alice, "pick", {"persona": "ari"}, focused="persona")
    await typing.wait_response()
    assert typing.choices == [{"name": "Aria", "value": "aria"}, {"name": "Ariadne", "value": "ariadne"}]

    target = await emulator.user_message(general, alice, "a line worth quoting")
    quoted = await emulator.message_command(general, alice, "Quote", target)
    assert (await quoted.wait_content()).content == "> a line worth quoting"


async def test_dynamic_button_survives_a_restart(emulator: DiscordEmulator, run_bot: BotRunner, world: dict) -> None:
    RerollButton.clicks.clear()
    bot = await run_bot(setup=_install_probe)
    general, alice = world["general"], world["alice"]
    await emulator.user_message(general, alice, "!hook")
    hooked = await emulator.wait_for_webhook_message(general, lambda msg: msg.content.endswith("(edited)"))

    first = await emulator.click_button(hooked, "reroll:7", alice)
    assert (await first.wait_content()).content == "rerolling turn 7" and first.ephemeral

    await run_bot.stop(bot)
    assert emulator.gateway_events[-1].kind == "closed"  # a clean close ends the session
    await run_bot(setup=_install_probe)  # a new process: same database, same emulator
    second = await emulator.click_button(hooked, "reroll:7", alice)
    await second.wait_content()
    assert RerollButton.clicks == [(7, alice.id), (7, alice.id)]
    with pytest.raises(ValueError, match="has no component"):
        await emulator.click_button(hooked, "reroll:8", alice)


async def test_rate_limits_are_retried_transparently(
    emulator: DiscordEmulator, run_bot: BotRunner, world: dict
) -> None:
    bot = await run_bot(setup=_install_probe)
    general, alice = world["general"], world["alice"]
    rest_rule = emulator.fail_next("POST", r"/channels/\d+/messages", 429, retry_after=0.05)
    hook_rule = emulator.fail_next("POST", r"/webhooks/\d+/[^/]+", 429, retry_after=0.05)

    await emulator.user_message(general, alice, "!rest once")
    assert (await emulator.wait_for_message(general, source="bot")).content == "echo: once"
    posts = emulator.requests_matching("POST", rf"/channels/{general.id}/messages")
    assert [(r.status, r.injected) for r in posts] == [(429, True), (200, False)]

    await emulator.user_message(general, alice, "!hook")
    await emulator.wait_for_webhook_message(general, lambda msg: msg.content.endswith("(edited)"))
    assert rest_rule.hits == 1 and hook_rule.hits == 1
    assert len(_probe(bot).hook_messages) == 1


async def test_disconnect_resume_replays_missed_events(
    emulator: DiscordEmulator, run_bot: BotRunner, world: dict
) -> None:
    bot = await run_bot(setup=_install_probe)
    general, alice = world["general"], world["alice"]
    resumed = asyncio.Event()

    async def on_resumed() -> None:
        resumed.set()

    bot.add_listener(on_resumed)

    await emulator.disconnect(0)
    missed = await emulator.user_message(general, alice, "said while you were away")  # buffered for shard 0
    event = await emulator.wait_for_resume(0)
    assert event.detail["replayed"] >= 1 and event.detail["path"] == "/gateway/resume"
    await asyncio.wait_for(resumed.wait(), 5)
    await emulator.wait_until(lambda: any(x.id == missed.id for x in _probe(bot).seen), "the replayed message")

    await emulator.invalidate_session(0)
    await emulator.wait_for_identify(0)
    await emulator.user_message(general, alice, "!rest still here")
    assert (await emulator.wait_for_message(general, source="bot")).content == "echo: still here"


async def test_edits_and_deletes_arrive_as_raw_events(
    emulator: DiscordEmulator, run_bot: BotRunner, world: dict
) -> None:
    bot = await run_bot(setup=_install_probe)
    probe = _probe(bot)
    general, alice = world["general"], world["alice"]
    msg = await emulator.user_message(general, alice, "first draft")
    await emulator.edit_message(msg, "second draft")
    await emulator.wait_until(lambda: probe.raw_edits, "MESSAGE_UPDATE")
    edit = probe.raw_edits[-1]
    assert edit.message_id == msg.id and edit.message.content == "second draft"
    assert edit.message.edited_at is not None

    await emulator.delete_message(msg)
    await emulator.wait_until(lambda: probe.raw_deletes, "MESSAGE_DELETE")
    assert probe.raw_deletes[-1].message_id == msg.id and probe.raw_deletes[-1].channel_id == general.id

    extra = [await emulator.user_message(general, alice, f"spam {i}") for i in range(3)]
    await emulator.bulk_delete(general, extra)
    await emulator.wait_until(lambda: probe.raw_bulk, "MESSAGE_DELETE_BULK")
    assert probe.raw_bulk[-1].message_ids == {x.id for x in extra}
    assert emulator.messages_in(general) == []


async def test_discord_errors_reach_the_bot(
    emulator: DiscordEmulator, run_bot: BotRunner, world: dict, error_log_guard: ErrorLogGuard
) -> None:
    bot = await run_bot(setup=_install_probe)
    general = bot.get_channel(world["general"].id)
    assert isinstance(general, discord.TextChannel)

    await emulator.deny_bot_manage_webhooks(world["general"])
    await emulator.wait_until(lambda: not general.permissions_for(general.guild.me).manage_webhooks, "CHANNEL_UPDATE")
    with pytest.raises(discord.Forbidden) as denied:
        await general.create_webhook(name="Persona Hook")
    assert denied.value.code == 50013
    await emulator.deny_bot_manage_webhooks(world["general"], denied=False)

    webhook = await general.create_webhook(name="Persona Hook")
    await emulator.delete_webhook(webhook.id)
    with pytest.raises(discord.NotFound) as gone:
        await webhook.send("hello?", wait=True)
    assert gone.value.code == 10015

    with pytest.raises(discord.HTTPException) as too_long:
        await general.send("x" * 2001)
    assert too_long.value.code == 50035 and "2000 or fewer" in str(too_long.value)
    with pytest.raises(discord.HTTPException, match="clyde"):
        await general.create_webhook(name="Clyde")

    emulator.fail_next("GET", rf"/channels/{general.id}", 500)
    assert (await bot.fetch_channel(general.id)).id == general.id  # discord.py retried after a 1 s back-off
    assert [r.status for r in emulator.requests_matching("GET", rf"/channels/{general.id}")] == [500, 200]
    emulator.fail_next("*", r"/channels/\d+/typing", 403)
    with pytest.raises(discord.Forbidden):
        await general.typing()


class TallyView(discord.ui.View):
    """Components answered by updating their own message (callback types 7 and 6)."""

    def __init__(self) -> None:
        super().__init__(timeout=None)
        self.count = 0

    @discord.ui.button(label="+1", custom_id="tally:inc")
    async def inc(self, interaction: discord.Interaction, button: discord.ui.Button[TallyView]) -> None:
        self.count += 1
        await interaction.response.edit_message(content=f"tally {self.count}", view=self)

    @discord.ui.select(custom_id="tally:mood", options=[discord.SelectOption(label=x) for x in ("calm", "wild")])
    async def mood(self, interaction: discord.Interaction, select: discord.ui.Select[TallyView]) -> None:
        await interaction.response.defer()
        await interaction.edit_original_response(content=f"tally {self.count}, mood {select.values[0]}")


async def test_components_update_their_message_threads_history_and_dms(
    emulator: DiscordEmulator, run_bot: BotRunner, world: dict
) -> None:
    bot = await run_bot(setup=_install_probe)
    general = bot.get_channel(world["general"].id)
    thread = bot.get_channel(world["thread"].id)
    assert isinstance(general, discord.TextChannel) and isinstance(thread, discord.Thread)
    alice = world["alice"]

    sent = await general.send("tally 0", view=TallyView())
    stored = emulator.messages[sent.id]
    clicked = await emulator.click_button(stored, "tally:inc", alice)
    await clicked.wait_response()
    assert clicked.response_type == 7 and stored.content == "tally 1" and stored.custom_ids()[0] == "tally:inc"
    chosen = await emulator.select(stored, "tally:mood", ["wild"], alice)
    await emulator.wait_until(lambda: stored.content.endswith("mood wild"), "the select to edit its message")
    assert chosen.response_type == 6 and chosen.original is stored and len(stored.edits) == 2
    with pytest.raises(ValueError, match="no options"):
        await emulator.select(stored, "tally:mood", ["sleepy"], alice)

    # Webhooks post into threads of their channel with ?thread_id=; edits need it too.
    webhook = await general.create_webhook(name="Narrator")
    in_thread = await webhook.send("meanwhile...", thread=thread, wait=True)
    await in_thread.edit(content="meanwhile, in the thread")
    stored_thread_msg = emulator.messages[in_thread.id]
    assert stored_thread_msg.channel_id == thread.id and stored_thread_msg.content == "meanwhile, in the thread"
    assert emulator.requests_matching("PATCH", r"/webhooks/.*")[-1].query["thread_id"] == str(thread.id)
    with pytest.raises(discord.NotFound):
        await webhook.edit_message(in_thread.id, content="no thread given")

    older = [await emulator.user_message(world["general"], alice, f"line {i}") for i in range(3)]
    history = [msg.id async for msg in general.history(limit=3, before=discord.Object(older[-1].id))]
    assert history == [older[1].id, older[0].id, sent.id]
    await general.get_partial_message(older[0].id).add_reaction("👍")
    assert emulator.messages[older[0].id].reactions == ["👍"]

    dm = emulator.create_dm(alice)
    await emulator.user_message(dm, alice, "!rest in private")
    reply = await emulator.wait_for_message(dm, source="bot")
    assert reply.content == "echo: in private" and reply.guild_id is None
    dm_think = await emulator.slash_command(dm, alice, "think")
    await dm_think.wait_followup(1)
    assert dm_think.payload["context"] == 1 and "user" in dm_think.payload and "member" not in dm_think.payload


async def test_guilds_are_spread_over_shards(emulator: DiscordEmulator, run_bot: BotRunner) -> None:
    guilds = [await emulator.create_guild("Guild 0")]
    while len({(g.id >> 22) % 2 for g in guilds}) < 2:  # ids follow the clock; make one for each shard
        guilds.append(await emulator.create_guild(f"Guild {len(guilds)}"))
    member = await emulator.add_member(guilds[-1], "bob")
    bot = await run_bot(setup=_install_probe, settings={"shard_count": 2})
    identifies = sorted((e.shard_id, e.detail["shard_count"]) for e in emulator.gateway_events if e.kind == "identify")
    assert identifies == [(0, 2), (1, 2)]
    assert {(g.id, g.shard_id) for g in bot.guilds} == {(g.id, (g.id >> 22) % 2) for g in guilds}

    last = guilds[-1]
    shard = (last.id >> 22) % 2
    await emulator.disconnect(shard)
    await emulator.user_message(last.channel("general"), member, "!rest across shards")
    await emulator.wait_for_resume(shard)
    assert (await emulator.wait_for_message(last.channel("general"), source="bot")).content == "echo: across shards"
    other = emulator.gateway.session_for_shard(1 - shard)
    assert other is not None and other.resumes == 0


class CrashingCog(commands.Cog):
    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if message.content == "boom":
            raise RuntimeError("handler blew up")


async def test_error_log_guard_sees_handler_crashes(
    emulator: DiscordEmulator, run_bot: BotRunner, world: dict, error_log_guard: ErrorLogGuard
) -> None:
    async def setup(bot: RPBot) -> None:
        await bot.add_cog(CrashingCog())

    await run_bot(setup=setup)
    await emulator.user_message(world["general"], world["alice"], "boom")
    await emulator.wait_until(lambda: error_log_guard.records, "discord.py to log the handler's exception")
    record = error_log_guard.records[0]
    assert record.name == "discord.client" and "handler blew up" in ErrorLogGuard.render(record)
    assert error_log_guard.unexpected() == [record]  # this would fail the test at teardown...
    error_log_guard.allow(r"Ignoring exception in on_message")  # ...unless allowed
    assert error_log_guard.unexpected() == []


class CardCog(commands.Cog):
    """Files in interaction responses, the @original message and follow-ups, edited and deleted."""

    @app_commands.command(name="card", description="Sends a card file")
    async def card(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message("here", file=discord.File(io.BytesIO(b"v1"), "card.json"))
        original = await interaction.original_response()
        await interaction.edit_original_response(
            content=f"{original.content}, updated", attachments=[discord.File(io.BytesIO(b"v2"), "card.json")]
        )
        extra = await interaction.followup.send("scratch", file=discord.File(io.BytesIO(b"x"), "x.txt"), wait=True)
        await extra.edit(content="scratch, edited")
        await extra.delete()
        assert interaction.channel is not None
        fetched = await interaction.channel.fetch_message(original.id)  # type: ignore[union-attr]
        await interaction.followup.send(f"fetched: {fetched.content}")


async def test_interaction_files_original_and_followups(
    emulator: DiscordEmulator, run_bot: BotRunner, world: dict
) -> None:
    async def setup(bot: RPBot) -> None:
        await bot.add_cog(CardCog())

    await run_bot(setup=setup)
    handle = await emulator.slash_command(world["general"], world["alice"], "card")
    last = await handle.wait_followup(2)
    original = handle.original
    assert original is not None and original.content == "here, updated" and original.content_history == ["here"]
    assert [(a.filename, a.data) for a in original.attachments] == [("card.json", b"v2")]
    assert handle.original_edits[0]["attachments"] == [{"id": 0, "filename": "card.json"}]
    scratch = handle.followups[0]
    assert scratch.deleted and scratch.content == "scratch, edited" and scratch.attachments[0].data == b"x"
    assert last.content == "fetched: here, updated" and last.source == "followup"
    assert emulator.messages_in(world["general"]) == [original, last]
    assert original.type == 20 and original.interaction_metadata is not None
    assert original.interaction_metadata["name"] == "card"
