"""Personas answer in channels: store what is said, decide when to reply, stream the reply as the persona."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import ChainMap, OrderedDict, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import discord
from discord.ext import commands
from sqlalchemy.ext.asyncio import AsyncSession

from bot.chat.history import CachedMessage, HistoryCache, StoreWriter
from bot.chat.names import mentions_name
from bot.chat.ratelimit import SlidingWindowLimiter
from bot.generation.base import EngineError, GenerationRequest, PromptTooLong, SamplerError, SamplerParams
from bot.generation.queue import (
    GenerationJob,
    QueueClosed,
    QueueFull,
    RequestCancelled,
    RequestReplaced,
    RequestTimedOut,
)
from bot.moderation.filters import OutputFilterSet
from bot.ops.sharding import owned_guilds
from bot.prompt import EmptyReply, PersonaSpec, PromptBuilder, PromptError, clean_reply
from bot.prompt.normalize import is_out_of_character
from bot.storage import channels as channel_repo
from bot.storage import generations as gen_repo
from bot.storage import guilds as guild_repo
from bot.storage import messages as msg_repo
from bot.storage import moderation as mod_repo
from bot.storage.database import describe_error, is_unavailable
from bot.storage.messages import MessageRecord
from bot.storage.models import (
    ChannelSettings,
    Generation,
    GenerationStatus,
    MessageKind,
    Persona,
    ReplyMode,
    utcnow,
)
from cogs._buttons import ReplyButton, reply_view, retry_view
from cogs._streaming import CURSOR, ReplyWriter
from cogs._webhooks import NO_MENTIONS, MessageGone, PersonaPoster, Posted, Speaker

if TYPE_CHECKING:
    from bot.client import RPBot

log = logging.getLogger(__name__)

HISTORY_LIMIT = 400  # stored messages read per prompt; the builder trims to the token budget
BACKFILL_LIMIT = 50
CLAIMED_KEPT = 10_000  # recent trigger ids remembered, far more than arrive during one backfill
INTERRUPTED_SCAN = 20  # messages after a cut-off reply's trigger searched for its half-written message
ALWAYS_MODE_DEBOUNCE = 1.5  # seconds of quiet before replying to a burst in "always" mode
QUEUE_NOTICE_AFTER = 2.0  # seconds waiting before the queue position is shown
SHUTDOWN_CANCEL_WAIT = 5.0  # seconds replies get to post their "interrupted" notice after the grace period
STORE_FLUSH_WAIT = 10.0  # seconds the shutdown waits for the message store's last writes
RECORD_WAIT = 10.0  # seconds a button's action waits for its reply to be recorded
BUTTON_RECORD_WAIT = 2.0  # the same before answering the click (Discord wants an answer within 3 s)
TYPING_AFTER = 0.3  # seconds without a first token before the typing indicator starts
NAME_CACHE_SIZE = 10_000
TRIGGER_TYPES = (discord.MessageType.default, discord.MessageType.reply)


class UserFacingError(Exception):
    """An error whose message can be shown to a Discord user as is."""


@dataclass(slots=True)
class ActiveChannel:
    """What the chat needs to know about a channel with an active persona (a cached snapshot)."""

    settings_channel_id: int  # the channel whose settings apply (a thread's parent when it has none of its own)
    guild_id: int
    settings: ChannelSettings
    persona: Persona


@dataclass(slots=True)
class GuildPolicy:
    paused: bool = False
    nsfw_only: bool = True
    ratelimit_count: int = 6
    ratelimit_seconds: int = 60
    blocked: set[int] = field(default_factory=set)
    filters: OutputFilterSet = field(default_factory=OutputFilterSet)


class GenRef:
    """A generation row whose INSERT may still be running: it is written beside the generation, off the path
    between a message and the first visible reply, and awaited only where its id is needed."""

    def __init__(self, pending: asyncio.Task[int] | int) -> None:
        self._pending = pending

    async def get(self) -> int:
        if isinstance(self._pending, int):
            return self._pending
        self._pending = await self._pending
        return self._pending


class FilteredOutput(Exception):
    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        super().__init__(pattern)


class ChatCog(commands.Cog):
    def __init__(self, bot: RPBot) -> None:
        self.bot = bot
        self.poster = PersonaPoster(bot)
        self.limiter = SlidingWindowLimiter()
        self._builder: PromptBuilder | None = None
        self._active: dict[int, ActiveChannel | None] = {}
        self._policies: dict[int, GuildPolicy] = {}
        self._names: OrderedDict[int, str] = OrderedDict()
        self._debounce: dict[int, asyncio.Task[None]] = {}
        # Button actions on a channel's latest reply run one at a time; a second Regenerate/Continue while one is
        # generating is refused, anything else waits its turn (a click right after the text shows is not lost).
        self._button_locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._generating: set[int] = set()
        # Messages already taken as triggers (live from the gateway, or by a backfill after a restart): a message
        # that arrives both ways while a backfill runs is answered once.
        self._claimed: OrderedDict[int, None] = OrderedDict()
        # Per channel, the recorded reply that carries the buttons: (generation id, its last message id, persona id).
        # It spares each new reply two reads (which reply to strip, and its own row); unknown after a restart, when
        # the database answers instead.
        self._with_buttons: dict[int, tuple[int, int, int]] = {}
        self._recording: dict[int, asyncio.Event] = {}  # generation id -> set once its reply is recorded
        # Discord events are handled in concurrent tasks; a per-channel lock taken before the first await keeps
        # a message's store, edit and delete in arrival order (a delete never overtakes its own message).
        self._store_locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._accepting = True
        self._backfilled = False
        self._interrupted: list[Generation] = []  # replies (or changes to one) cut off by a crash
        self.history = HistoryCache()
        self.writer = StoreWriter(bot.db)

    # ---- lifecycle ---------------------------------------------------------------------------------------------

    async def cog_load(self) -> None:
        self.writer.start()
        self.bot.add_dynamic_items(ReplyButton)
        await self.poster.load_known_webhooks()
        async with self.bot.db.session() as session:
            # Only this process's guilds: other shard processes on the same database may be mid-reply.
            owned = owned_guilds(self.bot.settings)
            self._interrupted = [g for g in await gen_repo.unfinished(session) if owned is None or owned(g.guild_id)]
            failed = await gen_repo.fail_unfinished(session, guilds=owned)
        if failed:
            log.warning("marked %d replies interrupted by the last shutdown as failed", failed)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(ReplyButton)
        for task in list(self._tasks):
            task.cancel()
        await self.writer.close()

    async def drain(self, grace: float) -> None:
        """Stop taking triggers, let running replies finish within ``grace`` seconds, then cancel the rest.

        Cancelling goes through the queue, so each reply ends on its normal path: it posts a notice and records
        its generation as cancelled. Only a reply that cannot even do that in time is cancelled as a task.
        Messages keep being stored meanwhile; the store is flushed last.
        """
        self._accepting = False
        for task in self._debounce.values():
            task.cancel()
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            await self._finish_or_cancel(pending, grace)
        # Bounded: a database that refuses writes must not hold the shutdown forever.
        await self.writer.flush(within=STORE_FLUSH_WAIT)

    async def _finish_or_cancel(self, pending: list[asyncio.Task[Any]], grace: float) -> None:
        log.info("waiting up to %gs for %d replies to finish", grace, len(pending))
        _done, still = await asyncio.wait(pending, timeout=grace) if grace > 0 else (set(), set(pending))
        if not still:
            return
        log.info("cancelling %d replies that did not finish within %gs", len(still), grace)
        if self.bot.queue is not None:
            await self.bot.queue.close()
        _done, stuck = await asyncio.wait(still, timeout=SHUTDOWN_CANCEL_WAIT)
        for task in stuck:
            task.cancel()
        if stuck:
            await asyncio.wait(stuck, timeout=SHUTDOWN_CANCEL_WAIT)

    def _spawn(self, coro: Any, *, channel_id: int | None = None) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        # Failures a reply task does not turn into a notice itself (e.g. the database timing out under overload)
        # would otherwise surface only as asyncio's "exception was never retrieved", if ever.
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("a chat task failed: %s: %s", type(exc).__name__, exc, exc_info=exc)

    @property
    def builder(self) -> PromptBuilder:
        if self._builder is None:
            engine = self.bot.engine
            if engine is None:
                raise UserFacingError("The model is not loaded.")
            self._builder = PromptBuilder(engine, engine.context_tokens, self.bot.settings.max_new_tokens)
        return self._builder

    # ---- caches (other cogs call the invalidate_* methods after changing settings) ----------------------------

    def invalidate_channel(self, channel_id: int | None = None) -> None:
        if channel_id is None:
            self._active.clear()
        else:
            # A thread caches its parent's settings, so drop every entry that points at this channel too, and the
            # "no persona" entries (a thread of this channel may have one now).
            stale = [
                k
                for k, v in self._active.items()
                if k == channel_id or v is None or v.settings_channel_id == channel_id
            ]
            for key in stale:
                self._active.pop(key, None)

    def invalidate_persona(self, persona_id: int) -> None:
        for key in [k for k, v in self._active.items() if v is None or v.persona.id == persona_id]:
            self._active.pop(key, None)

    def invalidate_guild(self, guild_id: int) -> None:
        self._policies.pop(guild_id, None)
        for key in [k for k, v in self._active.items() if v is None or v.guild_id == guild_id]:
            self._active.pop(key, None)

    async def active_channel(self, channel: discord.abc.GuildChannel | discord.Thread) -> ActiveChannel | None:
        if channel.id in self._active:
            return self._active[channel.id]
        found: ActiveChannel | None = None
        parent_id = channel.parent_id if isinstance(channel, discord.Thread) else None
        async with self.bot.db.session() as session:
            active = await channel_repo.effective_persona(session, channel.id, parent_id)
        if active is not None:
            found = ActiveChannel(active[0].channel_id, channel.guild.id, active[0], active[1])
        self._active[channel.id] = found
        return found

    async def policy(self, guild_id: int) -> GuildPolicy:
        cached = self._policies.get(guild_id)
        if cached is not None:
            return cached
        # Reads only (a guild nobody configured has no row: the defaults apply), so reading the policy never waits
        # on, or fails with, another writer's lock.
        async with self.bot.db.session() as session:
            g = await guild_repo.find_guild(session, guild_id)
            blocked = {b.user_id for b in await mod_repo.blocked_users(session, guild_id)}
            filters = [(f.pattern, f.is_regex) for f in await mod_repo.list_filters(session, guild_id)]
            policy = GuildPolicy(blocked=blocked, filters=OutputFilterSet.from_rows(filters))
            if g is not None:
                policy.paused, policy.nsfw_only = g.paused, g.nsfw_only
                policy.ratelimit_count, policy.ratelimit_seconds = g.ratelimit_count, g.ratelimit_seconds
        self._policies[guild_id] = policy
        return policy

    # ---- message store sync -------------------------------------------------------------------------------------

    def _remember_name(self, user_id: int, name: str) -> None:
        self._names[user_id] = name
        self._names.move_to_end(user_id)
        while len(self._names) > NAME_CACHE_SIZE:
            self._names.popitem(last=False)

    def _record(self, message: discord.Message, kind: MessageKind, persona_id: int | None = None) -> MessageRecord:
        notes: list[dict[str, Any]] = []
        for att in message.attachments:
            ctype = att.content_type or ""
            notes.append({"kind": "image" if ctype.startswith("image/") else "file", "name": att.filename})
        for sticker in message.stickers:
            notes.append({"kind": "sticker", "name": sticker.name})
        channel = message.channel
        parent_id = channel.parent_id if isinstance(channel, discord.Thread) else None
        ref = message.reference.message_id if message.reference else None
        return MessageRecord(
            id=message.id,
            guild_id=message.guild.id if message.guild else 0,
            channel_id=channel.id,
            parent_channel_id=parent_id,
            author_id=message.author.id,
            author_name=message.author.display_name,
            kind=kind,
            persona_id=persona_id,
            content=message.content,
            attachments=notes,
            reply_to_id=ref,
            created_at=message.created_at,
            edited_at=message.edited_at,
        )

    def _kind_of(self, message: discord.Message) -> MessageKind:
        if message.webhook_id is not None or message.author.bot:
            return MessageKind.BOT
        return MessageKind.HUMAN

    @commands.Cog.listener()
    async def on_ready(self) -> None:
        if self._backfilled:
            return
        self._backfilled = True
        self._spawn(self._backfill_all())

    @commands.Cog.listener()
    async def on_shard_ready(self, shard_id: int) -> None:
        # A shard that lost its session IDENTIFYs afresh, and Discord replays nothing of what was said meanwhile:
        # read it from the channels' history. (The first READY is on_ready's; a RESUME replays, so needs nothing.)
        if self._backfilled:
            self._spawn(self._backfill_all(shard_id))

    async def _mark_interrupted(self) -> None:
        """A reply cut off by a crash left its half-written message with the typing cursor: say it was interrupted
        and offer Try again. Newest first, so each placeholder goes to the reply it belonged to."""
        interrupted, self._interrupted = sorted(self._interrupted, key=lambda g: g.id, reverse=True), []
        for gen in interrupted:
            gen_id, channel_id, trigger_id, persona_id = gen.id, gen.channel_id, gen.trigger_message_id, gen.persona_id
            channel = self.bot.get_channel(channel_id)
            if not isinstance(channel, discord.TextChannel | discord.Thread) or not (trigger_id and persona_id):
                continue  # not this process's channel, or nothing to look for
            async with self.bot.db.session() as session:
                persona = await session.get(Persona, persona_id)
            if persona is None:
                continue
            speaker = self._speaker(persona)
            if gen.alternatives and gen.reply_message_ids:
                await self._restore_reply(channel, gen, speaker)
                continue
            notice = f"*({speaker.name} was interrupted by a restart. Press Try again.)*"
            after = discord.Object(trigger_id)
            try:
                async for message in channel.history(after=after, limit=INTERRUPTED_SCAN, oldest_first=True):
                    own = message.author.id == self.bot.user.id or self.poster.is_own_webhook(message.webhook_id)
                    if own and message.content.endswith(CURSOR) and not message.components:
                        author = message.webhook_id or self.bot.user.id
                        posted = Posted(message.id, channel.id, message.webhook_id is not None, author)
                        await self.poster.edit(channel, posted, speaker, notice, view=retry_view(gen_id))
            except (discord.HTTPException, MessageGone) as exc:
                log.warning("could not mark the interrupted reply in channel %s: %s", channel_id, exc)

    def _as_posted(self, message: CachedMessage) -> Posted:
        """A stored persona message as the poster addresses it (the bot's own author id means a fallback message)."""
        return Posted(message.id, message.channel_id, message.author_id != self.bot.user.id, message.author_id)

    async def _recorded_writer(
        self, channel: discord.TextChannel | discord.Thread, gen: Generation, speaker: Speaker
    ) -> ReplyWriter:
        """A writer over the recorded reply's messages, to change them in place (none for a failed reply's notice:
        it posts afresh)."""
        stored = [m for mid in gen.reply_message_ids if (m := await self.stored_message(channel.id, mid)) is not None]
        return ReplyWriter(
            self.poster,
            channel,
            speaker,
            interval=self.bot.settings.stream_edit_interval,
            parts=[self._as_posted(m) for m in stored],
            texts=[m.content for m in stored],
        )

    async def _restore_reply(
        self, channel: discord.TextChannel | discord.Thread, gen: Generation, speaker: Speaker
    ) -> None:
        """A Regenerate or Continue cut off by a crash left the recorded reply showing half a new version: show the
        version it had (every version is kept) with its buttons, so Regenerate is one click away again."""
        index = min(gen.selected_index, len(gen.alternatives) - 1)
        writer = await self._recorded_writer(channel, gen, speaker)
        try:
            await writer.finish(gen.alternatives[index], reply_view(gen.id, index, len(gen.alternatives)))
        except (discord.HTTPException, MessageGone) as exc:
            log.warning("could not restore the interrupted reply in channel %s: %s", channel.id, exc)
            return
        async with self.bot.db.session() as session:
            row = await gen_repo.get_generation(session, gen.id)
            if row is not None:
                row.status, row.error = GenerationStatus.DONE, None

    async def _backfill_all(self, shard_id: int | None = None) -> None:
        if self._interrupted:
            await self._mark_interrupted()
        guild_ids = [g.id for g in self.bot.guilds if shard_id is None or g.shard_id == shard_id]
        async with self.bot.db.session() as session:
            rows = await channel_repo.channels_with_persona(session, guild_ids)
        for row in rows:
            channel = self.bot.get_channel(row.channel_id)
            if isinstance(channel, discord.TextChannel | discord.Thread):
                try:
                    await self.backfill(channel, answer_missed=True)
                except discord.HTTPException as exc:
                    log.warning("could not backfill channel %s: %s", row.channel_id, exc)

    async def backfill(
        self, channel: discord.TextChannel | discord.Thread, limit: int = BACKFILL_LIMIT, *, answer_missed: bool = False
    ) -> int:
        """Store what was said while the bot was away (or before a persona was activated). Returns how many.

        With ``answer_missed`` (after a restart or a lost session), the channel's newest message, when it is a
        recent trigger the bot never saw, is answered as if it had just been said."""
        await self.writer.flush()
        records: list[MessageRecord] = []
        newest: discord.Message | None = None
        # The newest messages, not those after the newest stored one: a reply posted while the gateway was down is
        # newer than what people said in that gap. Only messages the store lacks are added (edits stay as they are).
        async for message in channel.history(limit=limit):
            newest = newest or message
            if message.author.id == self.bot.user.id or self.poster.is_own_webhook(message.webhook_id):
                continue  # our own replies are stored when sent
            if message.type not in TRIGGER_TYPES or self.history.get(channel.id, message.id) is not None:
                continue
            records.append(self._record(message, self._kind_of(message)))
            self._remember_name(message.author.id, message.author.display_name)
        if records:
            async with self.bot.db.session() as session:
                known = await msg_repo.existing_ids(session, [r.id for r in records])
            records = sorted((r for r in records if r.id not in known), key=lambda r: r.id)
        records = await self._storable(channel.guild.id, records)
        self._save(records)
        if answer_missed and newest is not None and any(r.id == newest.id for r in records):
            await self._answer_missed(channel, newest)
        return len(records)

    def _claim(self, message_id: int) -> bool:
        """Take a message as a trigger; False when it was already taken (by the gateway or a backfill)."""
        if message_id in self._claimed:
            return False
        self._claimed[message_id] = None
        if len(self._claimed) > CLAIMED_KEPT:
            self._claimed.popitem(last=False)
        return True

    async def _answer_missed(self, channel: discord.TextChannel | discord.Thread, message: discord.Message) -> None:
        if self._kind_of(message) is not MessageKind.HUMAN or not self._accepting:
            return
        if not self._claim(message.id):
            return  # it also arrived live while the backfill ran, and is answered from there
        # Older than that, the conversation has moved on or been abandoned (RPBOT_MISSED_TRIGGER_MINUTES).
        max_age = timedelta(minutes=self.bot.settings.missed_trigger_minutes)
        if discord.utils.utcnow() - message.created_at > max_age:
            return
        active = await self.active_channel(channel)
        if active is not None:
            log.info("answering message %s in channel %s, said while the bot was away", message.id, channel.id)
            await self._maybe_reply(message, channel, active)

    async def _storable(self, guild_id: int, records: list[MessageRecord]) -> list[MessageRecord]:
        """Leave out of a backfill what moderation removed or excludes: messages of users who asked to be forgotten
        (sent before they asked; Discord still has them), of blocked users, and older than the retention period."""
        if not records:
            return records
        policy = await self.policy(guild_id)
        days = self.bot.settings.message_retention_days
        cutoff = datetime.now(UTC) - timedelta(days=days) if days > 0 else None
        async with self.bot.db.session() as session:
            forgotten = await mod_repo.forget_requests(session, guild_id, {r.author_id for r in records})
        return [
            r
            for r in records
            if r.author_id not in policy.blocked
            and (cutoff is None or r.created_at >= cutoff)
            and not (r.author_id in forgotten and r.created_at <= forgotten[r.author_id])
        ]

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if message.guild is None:
            return  # DMs have no personas
        if message.author.id == self.bot.user.id or self.poster.is_own_webhook(message.webhook_id):
            return
        if message.type not in TRIGGER_TYPES:
            return
        channel = message.channel
        if not isinstance(channel, discord.TextChannel | discord.Thread):
            return
        fresh = self._claim(message.id)
        async with self._store_locks[channel.id]:
            active = await self.active_channel(channel)
            if active is None:
                return
            try:
                if message.author.id in (await self.policy(active.guild_id)).blocked:
                    return  # ignored entirely: a blocked user's words never reach a prompt either
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                # The database cannot even be read: keep the message (the store writer retries), answer nothing.
                reason = describe_error(exc)
                log.warning("message %s kept unanswered: the database is unavailable (%s)", message.id, reason)
                self._save([self._record(message, self._kind_of(message))])
                return
            kind = self._kind_of(message)
            self._remember_name(message.author.id, message.author.display_name)
            for user in message.mentions:
                self._remember_name(user.id, user.display_name)
            self._save([self._record(message, kind)])
        # While shutting down messages are still stored (nothing said is lost) but trigger nothing.
        if kind is MessageKind.HUMAN and self._accepting and fresh:
            try:
                await self._maybe_reply(message, channel, active)
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                reason = describe_error(exc)
                log.warning("message %s stored, but not answered: the database is unavailable (%s)", message.id, reason)

    async def _maybe_reply(
        self, message: discord.Message, channel: discord.TextChannel | discord.Thread, active: ActiveChannel
    ) -> None:
        policy = await self.policy(active.guild_id)
        if policy.paused or message.author.id in policy.blocked:
            return
        if is_out_of_character(message.content):
            return
        mode = active.settings.reply_mode
        if mode is ReplyMode.MENTION and not self._addressed(message, active):
            return
        if (policy.nsfw_only or active.persona.nsfw) and not channel.is_nsfw():
            # An NSFW persona stays silent where the channel stopped being age-restricted.
            return
        if mode is ReplyMode.ALWAYS:
            # A burst gets one reply, so the rate limit is charged when that reply is due, not per message.
            old = self._debounce.pop(channel.id, None)
            if old is not None:
                old.cancel()
            self._debounce[channel.id] = self._spawn(self._debounced(channel, message))
        elif await self._within_rate_limit(message, active.guild_id):
            self._spawn(self.reply_to(channel, message))

    async def _within_rate_limit(self, message: discord.Message, guild_id: int) -> bool:
        """Count a reply to ``message`` against its author's limit; over it, react with a clock instead."""
        policy = await self.policy(guild_id)
        if self.limiter.hit(guild_id, message.author.id, policy.ratelimit_count, policy.ratelimit_seconds):
            return True
        with contextlib.suppress(discord.HTTPException):
            await message.add_reaction("⏰")
        return False

    def _addressed(self, message: discord.Message, active: ActiveChannel) -> bool:
        if self.bot.user in message.mentions:
            return True
        ref = message.reference
        resolved = ref.resolved if ref is not None else None
        if isinstance(resolved, discord.Message) and (
            self.poster.is_own_webhook(resolved.webhook_id) or resolved.author.id == self.bot.user.id
        ):
            return True
        persona = active.persona
        return mentions_name(message.content, persona.name) or bool(
            persona.nickname and mentions_name(message.content, persona.nickname)
        )

    async def _debounced(self, channel: discord.TextChannel | discord.Thread, message: discord.Message) -> None:
        await asyncio.sleep(ALWAYS_MODE_DEBOUNCE)
        if self._debounce.get(channel.id) is asyncio.current_task():
            del self._debounce[channel.id]
        if await self._within_rate_limit(message, channel.guild.id):
            await self.reply_to(channel, message)

    @commands.Cog.listener()
    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        content = payload.data.get("content")
        if content is None:
            return
        edited = payload.data.get("edited_timestamp")
        when = datetime.fromisoformat(edited) if edited else utcnow()
        if self.poster.is_own_webhook(_int(payload.data.get("webhook_id"))):
            return  # our own replies are stored by us, with clean text
        author = payload.data.get("author") or {}
        if self.bot.user is not None and _int(author.get("id")) == self.bot.user.id:
            return
        async with self._store_locks[payload.channel_id]:
            self.history.edit(payload.channel_id, payload.message_id, content, when)
            self.writer.edit(payload.message_id, content, when)

    @commands.Cog.listener()
    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        await self._deleted(payload.channel_id, [payload.message_id])

    @commands.Cog.listener()
    async def on_raw_bulk_message_delete(self, payload: discord.RawBulkMessageDeleteEvent) -> None:
        await self._deleted(payload.channel_id, list(payload.message_ids))

    async def _deleted(self, channel_id: int, ids: list[int]) -> None:
        queue = self.bot.queue
        if queue is not None:
            for mid in ids:
                queue.cancel_trigger(mid)
        async with self._store_locks[channel_id]:
            self.history.delete(channel_id, ids)
            self.writer.delete(ids)

    # ---- replying ------------------------------------------------------------------------------------------------

    def _speaker(self, persona: Persona) -> Speaker:
        return Speaker(persona.id, persona.nickname or persona.name, persona.avatar)

    def _mentions(self, guild: discord.Guild, persona: Persona) -> dict[str, Mapping[int, str]]:
        # A view, not a copy: the name cache holds up to NAME_CACHE_SIZE people and the builder only looks names up.
        own = {self.bot.user.id: persona.nickname or persona.name} if self.bot.user is not None else {}
        users = ChainMap(own, self._names)
        return {
            "users": users,
            "channels": {c.id: c.name for c in guild.channels},
            "roles": {r.id: r.name for r in guild.roles},
        }

    def _save(self, records: list[MessageRecord]) -> None:
        """Into the in-memory history now, into the database a moment later (in arrival order)."""
        if not records:
            return
        for record in records:
            self.history.add(CachedMessage.from_record(record))
        self.writer.save(records)

    async def history_for(
        self, channel_id: int, active: ActiveChannel, before_id: int | None = None
    ) -> list[CachedMessage]:
        """The scene's messages, oldest first (from memory; loaded from the store on first use)."""
        if not self.history.loaded(channel_id):
            await self.writer.flush()
            async with self.bot.db.session() as session:
                rows = await msg_repo.history(session, channel_id, limit=HISTORY_LIMIT)
            self.history.load(channel_id, [CachedMessage.from_row(r, channel_id) for r in rows])
        return self.history.window(
            channel_id, after_id=active.settings.scene_start_message_id, before_id=before_id, limit=HISTORY_LIMIT
        )

    async def stored_message(self, channel_id: int, message_id: int) -> CachedMessage | None:
        cached = self.history.get(channel_id, message_id)
        if cached is not None:
            return cached
        await self.writer.flush()
        async with self.bot.db.session() as session:
            row = await msg_repo.get_message(session, message_id)
        return None if row is None else CachedMessage.from_row(row, channel_id)

    async def forget_user(self, user_id: int, guild_id: int | None = None) -> int:
        """Delete a user's stored messages (in one guild, or everywhere); later prompts no longer hold them."""
        await self.writer.flush()
        async with self.bot.db.session() as session:
            count = await msg_repo.forget_user(session, user_id, guild_id)
        self.history.drop()
        return count

    async def purge_older_than(self, cutoff: datetime) -> int:
        """Delete stored messages older than ``cutoff`` (retention); later prompts no longer hold them."""
        await self.writer.flush()
        async with self.bot.db.session() as session:
            count = await msg_repo.purge_older_than(session, cutoff)
        if count:
            self.history.drop()
        return count

    def _sampler(self, active: ActiveChannel) -> tuple[SamplerParams, int]:
        overrides = dict(active.settings.sampler or {})
        max_new = int(overrides.pop("max_new_tokens", self.bot.settings.max_new_tokens))
        try:
            params = SamplerParams().with_overrides(overrides)
        except SamplerError as exc:
            log.warning("ignoring bad sampler overrides in channel %s: %s", active.settings_channel_id, exc)
            params = SamplerParams()
        return params, max_new

    async def reply_to(self, channel: discord.TextChannel | discord.Thread, trigger: discord.Message) -> None:
        """Generate and post a new persona reply to ``trigger``."""
        active = await self.active_channel(channel)
        if active is None or not self._accepting:
            return
        gen = GenRef(
            asyncio.ensure_future(
                self._create_generation(
                    guild_id=active.guild_id,
                    channel_id=channel.id,
                    trigger_message_id=trigger.id,
                    user_id=trigger.author.id,
                    persona_id=active.persona.id,
                )
            )
        )
        writer = ReplyWriter(
            self.poster, channel, self._speaker(active.persona), interval=self.bot.settings.stream_edit_interval
        )
        fields: dict[str, Any] = {}
        text: str | None = None
        try:
            text = await self._produce(
                channel,
                active,
                gen,
                writer,
                user_name=trigger.author.display_name,
                trigger_id=trigger.id,
                user_id=trigger.author.id,
                fields_out=fields,
            )
            if text is None:
                return
            gen_id = await gen.get()
            # Its buttons are live once the final text shows, a moment before the reply is recorded: a click in that
            # moment waits for the record (see _change_reply_locked) rather than acting on a reply without parts.
            recorded = self._recording[gen_id] = asyncio.Event()
            try:
                posted = await writer.finish(text, reply_view(gen_id, 0, 1))
                previous = await self._store_reply(
                    gen_id,
                    active,
                    channel,
                    posted,
                    writer,
                    text,
                    new=True,
                    alternatives=[text],
                    selected_index=0,
                    **fields,
                )
            finally:
                recorded.set()
                self._recording.pop(gen_id, None)
            if previous is not None:
                await self._strip_buttons(channel, *previous)
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            await self._unrecorded(channel, active, writer, text, exc)

    async def _unrecorded(
        self,
        channel: discord.TextChannel | discord.Thread,
        active: ActiveChannel,
        writer: ReplyWriter,
        text: str | None,
        exc: BaseException,
    ) -> None:
        """The database refused the reply's generation row (locked past the busy timeout, disk full). A finished
        reply is still shown and stored (the store writer keeps trying), without the buttons that need the row;
        an unfinished one becomes a notice. Never a half-written message with its cursor."""
        log.error("could not record the reply in channel %s: %s", channel.id, describe_error(exc))
        name = active.persona.nickname or active.persona.name
        try:
            if text is None:
                if writer.posted_any:
                    await writer.finish(f"*({name} cannot answer right now: the bot's database is unavailable.)*", None)
                return
            posted = await writer.finish(text, None)
        except discord.HTTPException as send_exc:
            log.warning("could not finish the unrecorded reply in channel %s: %s", channel.id, send_exc)
            return
        self._save(self._persona_records(active, channel, posted, text))

    async def _create_generation(self, **fields: Any) -> int:
        async with self.bot.db.session() as session:
            return (await gen_repo.create_generation(session, **fields)).id

    async def _update_generation(self, gen_id: int, **fields: Any) -> None:
        async with self.bot.db.session() as session:
            row = await gen_repo.get_generation(session, gen_id)
            if row is None:
                return
            added = fields.pop("add_completion_tokens", 0)
            for key, value in fields.items():
                setattr(row, key, value)
            if added:
                row.completion_tokens = (row.completion_tokens or 0) + added

    async def _produce(
        self,
        channel: discord.TextChannel | discord.Thread,
        active: ActiveChannel,
        gen: GenRef,
        writer: ReplyWriter,
        *,
        user_name: str,
        trigger_id: int | None,
        user_id: int | None = None,
        before_id: int | None = None,
        continue_text: str | None = None,
        fields_out: dict[str, Any] | None = None,
    ) -> str | None:
        """Run one generation (with one retry for an empty or filtered reply); None when no text was produced.

        The generation row's new fields go into ``fields_out`` for the caller to write with the rest (one write
        per reply); without it they are written here."""
        policy = await self.policy(active.guild_id)
        replies = self.bot.metrics.replies
        started = time.monotonic()
        last_error = ""
        for attempt in range(2):
            try:
                text, fields = await self._generate_once(
                    channel,
                    active,
                    writer,
                    user_name=user_name,
                    trigger_id=trigger_id,
                    user_id=user_id,
                    before_id=before_id,
                    continue_text=continue_text,
                    policy=policy,
                )
                if fields_out is None:
                    await self._update_generation(await gen.get(), **fields)
                else:
                    fields_out.update(fields)
                replies.labels(outcome="ok").inc()
                self.bot.metrics.generation_seconds.observe(time.monotonic() - started)
                return text
            except (EmptyReply, FilteredOutput) as exc:
                last_error = "filtered" if isinstance(exc, FilteredOutput) else "empty"
                log.info("reply attempt %d in channel %s was %s; retrying", attempt + 1, channel.id, last_error)
                continue
            except (RequestReplaced, RequestCancelled, QueueClosed) as exc:
                replies.labels(outcome="cancelled").inc()
                status = GenerationStatus.CANCELLED
                gen_id = await gen.get()
                await self._finish_generation(gen_id, status, reason=type(exc).__name__)
                if isinstance(exc, RequestCancelled | QueueClosed) and not self._accepting:
                    # Shutting down: say so where the reply was, and offer to try again after the restart.
                    name = active.persona.nickname or active.persona.name
                    notice = f"*({name} was interrupted because the bot is restarting. Press Try again.)*"
                    try:
                        await writer.finish(notice, retry_view(gen_id))
                    except discord.HTTPException as send_exc:
                        log.warning("could not post the restart notice in channel %s: %s", channel.id, send_exc)
                elif isinstance(exc, RequestCancelled) and writer.posted_any:
                    await writer.delete_all()
                return None
            except asyncio.CancelledError:
                # Cancelled as a task (shutdown ran out of time): still leave the store consistent.
                replies.labels(outcome="cancelled").inc()
                cancelled = self._finish_generation(await asyncio.shield(gen.get()), GenerationStatus.CANCELLED)
                await asyncio.shield(cancelled)
                raise
            except Exception as exc:  # every other failure becomes a notice, never a traceback
                replies.labels(outcome="failed").inc()
                await self._fail(channel, active, await gen.get(), writer, exc)
                return None
        replies.labels(outcome=last_error).inc()
        notice = (
            "*(This reply was withheld by this server's output filters.)*"
            if last_error == "filtered"
            else "*(The model gave an empty reply twice. Press Try again.)*"
        )
        gen_id = await gen.get()
        await self._finish_generation(gen_id, GenerationStatus.FAILED, reason=last_error)
        await writer.finish(notice, retry_view(gen_id))
        return None

    async def _generate_once(
        self,
        channel: discord.TextChannel | discord.Thread,
        active: ActiveChannel,
        writer: ReplyWriter,
        *,
        user_name: str,
        trigger_id: int | None,
        user_id: int | None,
        before_id: int | None,
        continue_text: str | None,
        policy: GuildPolicy,
    ) -> tuple[str, dict[str, Any]]:
        """One generation; returns the reply and the generation row's new fields (written once, by the caller)."""
        queue = self.bot.queue
        if queue is None:
            raise UserFacingError("The model is not loaded.")
        persona = active.persona
        history = await self.history_for(channel.id, active, before_id)
        params, max_new = self._sampler(active)
        built = self.builder.build(
            PersonaSpec.from_row(persona),
            history,
            user_name=user_name,
            persona_id=persona.id,
            mentions=self._mentions(channel.guild, persona),
            continue_text=continue_text,
            conversation=channel.id,
            max_new_tokens=max_new,
        )
        participants = list(built.participants) or [user_name]
        request = GenerationRequest(
            prompt=built.text,
            params=params,
            stop=built.stop,
            max_new_tokens=max_new,
            prompt_tokens=built.prompt_tokens,  # counted by the engine's own counter
        )
        job = GenerationJob(
            request=request,
            guild_id=active.guild_id,
            channel_id=channel.id,
            user_id=user_id,
            trigger_message_id=trigger_id,
            label=f"{persona.name} in #{getattr(channel, 'name', channel.id)}",
        )
        # Checked again right before submitting (no await in between): /admin pause cancels what is queued, and a
        # reply that was being prepared meanwhile must not slip in after it.
        if (await self.policy(active.guild_id)).paused:
            raise RequestCancelled("personas are paused in this server")
        req = queue.submit(job)
        prefix = continue_text or ""
        raw = ""
        started = time.monotonic()
        first_chunk = asyncio.Event()

        async def show_queue_position() -> None:
            shown = 0
            # A fast engine answers before a typing indicator would show: only ask Discord for one when it is slow.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(first_chunk.wait(), timeout=TYPING_AFTER)
                return
            async with channel.typing():
                while not first_chunk.is_set():
                    pos = req.position
                    if pos >= 2 and time.monotonic() - started >= QUEUE_NOTICE_AFTER and pos != shown and not prefix:
                        shown = pos
                        await writer.show(f"⏳ *#{pos} in queue…*", force=True)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(first_chunk.wait(), timeout=1.0)

        waiter = asyncio.create_task(show_queue_position())
        try:
            async for chunk in req.chunks():
                first_chunk.set()
                raw += chunk
                if req.finished:
                    # The whole reply is already here (a fast engine, a short reply): it is checked and posted
                    # once, final and with its buttons, right below; an in-progress post would cost a second edit.
                    continue
                if not policy.filters and not writer.due():
                    # Nothing to check, nothing to show yet: cleaning the whole text again for every chunk made a
                    # reply cost quadratic time in its length.
                    continue
                try:
                    visible = clean_reply(raw, persona.nickname or persona.name, participants)
                except EmptyReply:
                    continue
                full = prefix + visible if prefix else visible
                hit = policy.filters.first_hit(full) if policy.filters else None
                if hit is not None:
                    req.cancel()
                    raise FilteredOutput(hit)
                await writer.show(full)
            result = await req.wait()
        finally:
            first_chunk.set()
            waiter.cancel()
            try:
                await waiter
            except (asyncio.CancelledError, discord.HTTPException):
                pass
            except Exception:
                log.exception("typing indicator failed")
        text = clean_reply(result.text, persona.nickname or persona.name, participants)
        final = _join_continuation(prefix, text) if prefix else text
        hit = policy.filters.first_hit(final) if policy.filters else None
        if hit is not None:
            raise FilteredOutput(hit)
        fields = {
            "status": GenerationStatus.DONE,
            "finish_reason": result.finish_reason,
            "sampler": {**params.as_dict(), "max_new_tokens": max_new},
            "prompt_tokens": result.prompt_tokens or built.prompt_tokens,
            "add_completion_tokens": result.completion_tokens,
            "first_token_seconds": result.time_to_first_token,
            "finished_at": utcnow(),
        }
        return final, fields

    async def _fail(
        self,
        channel: discord.TextChannel | discord.Thread,
        active: ActiveChannel,
        gen_id: int,
        writer: ReplyWriter,
        exc: BaseException,
    ) -> None:
        name = active.persona.nickname or active.persona.name
        if isinstance(exc, QueueFull):
            notice = f"*({name} is busy with many conversations right now. Try again in a minute.)*"
        elif isinstance(exc, RequestTimedOut):
            notice = f"*({name} took too long to answer. Press Try again.)*"
        elif isinstance(exc, PromptTooLong | PromptError):
            notice = f"*({name} cannot answer: {exc}. An admin can shorten the persona or raise the context.)*"
        elif isinstance(exc, UserFacingError):
            notice = f"*({name} cannot answer: {exc})*"
        elif isinstance(exc, EngineError):
            notice = f"*({name} could not answer because the model failed. Press Try again.)*"
        elif isinstance(exc, discord.HTTPException):
            notice = f"*({name} could not post the reply because Discord refused or failed. Press Try again.)*"
        else:
            notice = f"*({name} could not answer because of an internal error. Press Try again.)*"
        if isinstance(exc, discord.Forbidden):
            # Not a bug: server staff took a permission away. Say which, for the operator; no traceback.
            log.warning(
                "cannot post in channel %s of guild %s: %s (the bot needs View Channel and Send Messages there)",
                channel.id,
                active.guild_id,
                exc,
            )
        elif isinstance(exc, EngineError | QueueFull | RequestTimedOut | PromptError | UserFacingError):
            log.warning("reply in channel %s failed: %s: %s", channel.id, type(exc).__name__, exc)
        elif isinstance(exc, discord.HTTPException):
            # Discord's own trouble (5xx after discord.py's retries): an outage, not a bug of ours.
            log.warning("reply in channel %s failed: Discord answered %s", channel.id, exc)
        else:
            log.error("reply in channel %s failed unexpectedly", channel.id, exc_info=exc)
        await self._finish_generation(gen_id, GenerationStatus.FAILED, reason=f"{type(exc).__name__}: {exc}"[:500])
        try:
            await writer.finish(notice, retry_view(gen_id))
        except discord.HTTPException as send_exc:
            log.warning("could not post the failure notice in channel %s: %s", channel.id, send_exc)

    async def _finish_generation(self, gen_id: int, status: GenerationStatus, *, reason: str = "") -> None:
        async with self.bot.db.session() as session:
            row = await gen_repo.get_generation(session, gen_id)
            if row is not None:
                row.status = status
                row.error = reason or None
                row.finished_at = utcnow()

    async def _store_reply(
        self,
        gen_id: int,
        active: ActiveChannel,
        channel: discord.TextChannel | discord.Thread,
        posted: list[Posted],
        writer: ReplyWriter,
        text: str,
        *,
        new: bool = False,
        **fields: Any,
    ) -> tuple[int, Persona] | None:
        """Record the reply: its messages in the store (so later prompts see it) and, in one write, the generation's
        fields and message ids. Returns the last message of the channel's previous reply that still has buttons, and
        its persona (read in the same transaction, so stripping them needs no second one).

        ``new``: a reply just generated (not a regenerate or continue of a recorded one): written without reading."""
        records = self._persona_records(active, channel, posted, text)
        old_ids: list[int] = []
        ids = [p.id for p in posted]
        via_webhook = all(p.via_webhook for p in posted)
        async with self.bot.db.session() as session:
            if new:
                await gen_repo.record_new_reply(session, gen_id, ids, via_webhook=via_webhook, **fields)
            else:
                row = await gen_repo.get_generation(session, gen_id)
                if row is not None:
                    added = fields.pop("add_completion_tokens", 0)
                    for key, value in fields.items():
                        setattr(row, key, value)
                    if added:
                        row.completion_tokens = (row.completion_tokens or 0) + added
                    old_ids = [i for i in row.reply_message_ids if i not in set(ids)]
                    row.reply_message_ids = ids
                    row.reply_message_id = ids[0] if ids else None
                    row.sampler = {**(row.sampler or {}), "via_webhook": via_webhook}
            previous = await self._previous_with_buttons(session, channel.id, gen_id, active)
        known = self._with_buttons.get(channel.id)
        if ids and (known is None or known[0] <= gen_id):
            # This reply now carries the buttons (a regenerate may also have split it differently).
            self._with_buttons[channel.id] = (gen_id, ids[-1], active.persona.id)
        if old_ids:
            self.history.delete(channel.id, old_ids)
            self.writer.delete(old_ids)
        self._save(records)
        return previous

    async def _previous_with_buttons(
        self, session: AsyncSession, channel_id: int, gen_id: int, active: ActiveChannel
    ) -> tuple[int, Persona] | None:
        """The last message of the channel's reply before ``gen_id`` that still has buttons, and its persona."""
        known = self._with_buttons.get(channel_id)
        if known is not None and known[0] < gen_id:
            last_id, persona_id = known[1], known[2]
        else:  # unknown since a restart, or a newer reply was recorded first: ask the database
            prev = await gen_repo.previous_reply(session, channel_id, gen_id)
            if prev is None or not prev.reply_message_ids or prev.persona_id is None:
                return None
            last_id, persona_id = prev.reply_message_ids[-1], prev.persona_id
        # The active persona is already in memory; another one (switched since) is read here.
        persona = active.persona if persona_id == active.persona.id else await session.get(Persona, persona_id)
        return (last_id, persona) if persona is not None else None

    def _persona_records(
        self, active: ActiveChannel, channel: discord.TextChannel | discord.Thread, posted: list[Posted], text: str
    ) -> list[MessageRecord]:
        from bot.chat.splitting import split_message

        now = datetime.now(UTC)
        parent_id = channel.parent_id if isinstance(channel, discord.Thread) else None
        return [
            MessageRecord(
                id=p.id,
                guild_id=active.guild_id,
                channel_id=channel.id,
                parent_channel_id=parent_id,
                author_id=p.author_id,
                author_name=active.persona.nickname or active.persona.name,
                kind=MessageKind.PERSONA,
                persona_id=active.persona.id,
                content=part,
                created_at=now,
            )
            for p, part in zip(posted, split_message(text), strict=False)
        ]

    async def _strip_buttons(
        self, channel: discord.TextChannel | discord.Thread, last_id: int, persona: Persona
    ) -> None:
        """Only the latest reply keeps its buttons: take them off message ``last_id`` (the previous reply's last)."""
        stored = await self.stored_message(channel.id, last_id)
        if stored is None:
            return
        posted = self._as_posted(stored)
        try:
            await self.poster.edit(channel, posted, self._speaker(persona), stored.content, view=None)
        except Exception as exc:
            log.info("could not remove old buttons from %s: %s", last_id, exc)

    async def post_greeting(
        self, channel: discord.TextChannel | discord.Thread, persona: Persona, index: int, user_name: str
    ) -> list[Posted]:
        """Post the persona's greeting (``index`` 0 = the main one) and store it as the scene's first message."""
        from bot.chat.splitting import split_message
        from bot.prompt.macros import expand_macros

        greetings = [g for g in (persona.greeting, *(persona.alternate_greetings or [])) if g.strip()]
        if not greetings:
            return []
        name = persona.nickname or persona.name
        text = expand_macros(greetings[index % len(greetings)], char=name, user=user_name)
        posted = [await self.poster.send(channel, self._speaker(persona), part) for part in split_message(text)]
        parent_id = channel.parent_id if isinstance(channel, discord.Thread) else None
        now = datetime.now(UTC)
        records = [
            MessageRecord(
                id=p.id,
                guild_id=channel.guild.id,
                channel_id=channel.id,
                parent_channel_id=parent_id,
                author_id=p.author_id,
                author_name=name,
                kind=MessageKind.PERSONA,
                persona_id=persona.id,
                content=part,
                created_at=now,
            )
            for p, part in zip(posted, split_message(text), strict=False)
        ]
        self._save(records)
        return posted

    # ---- buttons -----------------------------------------------------------------------------------------------

    async def on_reply_button(self, interaction: discord.Interaction, action: str, gen_id: int) -> None:
        try:
            await self._handle_button(interaction, action, gen_id)
        except UserFacingError as exc:
            await _ephemeral(interaction, str(exc))

    async def _handle_button(self, interaction: discord.Interaction, action: str, gen_id: int) -> None:
        channel = interaction.channel
        if interaction.guild is None or not isinstance(channel, discord.TextChannel | discord.Thread):
            raise UserFacingError("These buttons only work in server channels.")
        recording = self._recording.get(gen_id)
        if recording is not None:  # clicked the instant the reply showed: let it be recorded first (milliseconds)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(recording.wait(), timeout=BUTTON_RECORD_WAIT)
        async with self.bot.db.session() as session:
            gen = await gen_repo.get_generation(session, gen_id)
            latest = await gen_repo.latest_in_channel(session, channel.id)
        if gen is None or gen.channel_id != channel.id:
            raise UserFacingError("That reply is no longer known to me.")
        if action == "del":
            return await self._delete_reply(interaction, channel, gen)
        policy = await self.policy(interaction.guild.id)
        if policy.paused:
            raise UserFacingError("Personas are paused in this server.")
        if interaction.user.id in policy.blocked:
            raise UserFacingError("You cannot use personas in this server.")
        if policy.nsfw_only and not channel.is_nsfw():
            raise UserFacingError(
                "Personas reply only in age-restricted channels in this server (an admin can change that with "
                "/admin nsfw-only)."
            )
        if action in ("prev", "next") and policy.filters:
            # A stored swipe was checked against the filters of its time; an admin may have added one since.
            target = gen.selected_index + (1 if action == "next" else -1)
            if 0 <= target < len(gen.alternatives) and policy.filters.first_hit(gen.alternatives[target]):
                raise UserFacingError("That version of the reply is withheld by this server's output filters.")
        if latest is None or latest.id != gen.id:
            raise UserFacingError("Only the latest reply can be changed.")
        active = await self.active_channel(channel)
        if active is None or active.persona.id != gen.persona_id:
            raise UserFacingError("The persona that wrote this reply is no longer active here.")
        if action in ("regen", "cont") and channel.id in self._generating:
            raise UserFacingError("A reply is already being written here; wait for it to finish.")
        if action in ("regen", "cont"):
            # Regenerating costs the model as much as a new message: it counts against the same per-user limit
            # (swiping between stored versions is free).
            guild_id, user_id = interaction.guild.id, interaction.user.id
            if not self.limiter.hit(guild_id, user_id, policy.ratelimit_count, policy.ratelimit_seconds):
                wait = self.limiter.retry_after(guild_id, user_id, policy.ratelimit_seconds)
                raise UserFacingError(
                    f"You have asked for {policy.ratelimit_count} replies in {policy.ratelimit_seconds:g} seconds, "
                    f"this server's limit; try again in {max(1, math.ceil(wait))} seconds."
                )
        await interaction.response.defer()
        self._spawn(self._change_reply(channel, active, gen.id, action, interaction.user))

    async def _change_reply(
        self,
        channel: discord.TextChannel | discord.Thread,
        active: ActiveChannel,
        gen_id: int,
        action: str,
        user: discord.abc.User,
    ) -> None:
        async with self._button_locks[channel.id]:
            if action in ("regen", "cont"):
                self._generating.add(channel.id)
            try:
                await self._change_reply_locked(channel, active, gen_id, action, user)
            finally:
                self._generating.discard(channel.id)

    async def _change_reply_locked(
        self,
        channel: discord.TextChannel | discord.Thread,
        active: ActiveChannel,
        gen_id: int,
        action: str,
        user: discord.abc.User,
    ) -> None:
        recording = self._recording.get(gen_id)
        if recording is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(recording.wait(), timeout=RECORD_WAIT)
        async with self.bot.db.session() as session:
            gen = await gen_repo.get_generation(session, gen_id)
        if gen is None:
            return
        writer = await self._recorded_writer(channel, gen, self._speaker(active.persona))
        alternatives = list(gen.alternatives)
        index = gen.selected_index
        if action in ("prev", "next"):
            if not alternatives:
                return
            index = max(0, min(len(alternatives) - 1, index + (1 if action == "next" else -1)))
            text = alternatives[index]
        else:
            first_reply_id = gen.reply_message_id
            before = first_reply_id if first_reply_id else None
            user_name = getattr(user, "display_name", user.name)
            if action == "cont" and not alternatives:
                return
            # Marked running while it streams into the recorded reply: after a crash the restart shows the recorded
            # version again instead of the half-written one.
            await self._update_generation(gen_id, status=GenerationStatus.RUNNING)
            produced = await self._produce(
                channel,
                active,
                GenRef(gen_id),
                writer,
                user_name=user_name,
                trigger_id=gen.trigger_message_id,
                user_id=user.id,
                before_id=before,
                continue_text=alternatives[index] if action == "cont" else None,
            )
            if produced is None:
                return
            if action == "cont":
                alternatives[index] = produced
            else:
                alternatives.append(produced)
                index = len(alternatives) - 1
            text = produced
        async with self.bot.db.session() as session:
            row = await gen_repo.get_generation(session, gen_id)
            if row is not None:
                row.alternatives = alternatives
                row.selected_index = index
                if action in ("prev", "next"):
                    row.status = GenerationStatus.DONE
        posted = await writer.finish(text, reply_view(gen_id, index, len(alternatives)))
        self._generating.discard(channel.id)  # Regenerate/Continue are usable again as soon as they are shown
        await self._store_reply(gen_id, active, channel, posted, writer, text)

    async def _delete_reply(
        self, interaction: discord.Interaction, channel: discord.TextChannel | discord.Thread, gen: Any
    ) -> None:
        member = interaction.user
        allowed = member.id == gen.user_id or (
            isinstance(member, discord.Member) and channel.permissions_for(member).manage_messages
        )
        if not allowed:
            raise UserFacingError("Only the person who asked for this reply, or a moderator, can delete it.")
        await interaction.response.defer()
        stored = [await self.stored_message(channel.id, mid) for mid in gen.reply_message_ids]
        for m in stored:
            if m is not None:
                await self.poster.delete(channel, self._as_posted(m))
        if interaction.message is not None and interaction.message.id not in gen.reply_message_ids:
            await self.poster.delete(
                channel,
                Posted(
                    interaction.message.id,
                    channel.id,
                    interaction.message.webhook_id is not None,
                    interaction.message.webhook_id or self.bot.user.id,
                ),
            )
        self.history.delete(channel.id, gen.reply_message_ids)
        self.writer.delete(gen.reply_message_ids)
        known = self._with_buttons.get(channel.id)
        if known is not None and known[0] == gen.id:
            del self._with_buttons[channel.id]  # the one before it lost its buttons long ago: nothing to strip now
        async with self.bot.db.session() as session:
            row = await gen_repo.get_generation(session, gen.id)
            if row is not None:
                row.reply_message_ids = []
                row.reply_message_id = None
            await mod_repo.audit(session, interaction.guild_id, member.id, "reply.delete", f"generation {gen.id}")


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _join_continuation(prefix: str, addition: str) -> str:
    if not addition:
        return prefix
    if prefix.endswith((" ", "\n")) or addition.startswith((" ", "\n", ",", ".", "!", "?", ";", ":")):
        return prefix + addition
    return prefix + " " + addition


async def _ephemeral(interaction: discord.Interaction, text: str) -> None:
    if interaction.response.is_done():
        await interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_MENTIONS)
    else:
        await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NO_MENTIONS)


async def setup(bot: RPBot) -> None:
    """Load the chat cog (discord.py extension entry point)."""
    await bot.add_cog(ChatCog(bot))
