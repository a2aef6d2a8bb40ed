"""Streams a reply into Discord: posts the first part, edits it about once a second, splits past 2000 characters."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time

import discord

from bot.chat.splitting import split_message
from cogs._webhooks import MessageGone, PersonaPoster, Posted, Speaker

log = logging.getLogger(__name__)

CURSOR = " …"


class ReplyWriter:
    """Owns the Discord messages of one reply (several when it is long) and keeps them in step with the text."""

    def __init__(
        self,
        poster: PersonaPoster,
        channel: discord.abc.Messageable,
        speaker: Speaker,
        *,
        interval: float = 1.0,
        parts: list[Posted] | None = None,
        texts: list[str] | None = None,
    ) -> None:
        self.poster = poster
        self.channel = channel
        self.speaker = speaker
        self.interval = interval
        self.parts: list[Posted] = list(parts or [])
        self._texts: list[str] = list(texts or [""] * len(self.parts))
        self._last_flush = 0.0
        self._has_view = False

    @property
    def posted_any(self) -> bool:
        return bool(self.parts)

    def due(self) -> bool:
        """Whether ``show()`` would update Discord now (the interval since the last update has passed)."""
        return time.monotonic() - self._last_flush >= self.interval

    async def show(self, text: str, *, force: bool = False) -> None:
        """Show in-progress text, at most once per interval unless forced."""
        now = time.monotonic()
        if not force and now - self._last_flush < self.interval:
            return
        text = text.strip()
        if not text:
            return
        self._last_flush = now
        await self._sync(split_message(text + CURSOR) if len(text) + len(CURSOR) <= 2000 else split_message(text))

    async def finish(self, text: str, view: discord.ui.View | None) -> list[Posted]:
        """Show the final text with the buttons on its last part; surplus parts of an older text are deleted."""
        await self._sync(split_message(text), view=view, final=True)
        return self.parts

    async def _sync(self, texts: list[str], *, view: discord.ui.View | None = None, final: bool = False) -> None:
        for index, part_text in enumerate(texts):
            is_last = index == len(texts) - 1
            want_view = view if (final and is_last) else None
            if index < len(self.parts):
                changed = self._texts[index] != part_text
                # Earlier parts must lose buttons they carried as the last part of an older text.
                if changed or final:
                    await self._edit(index, part_text, want_view if final else discord.utils.MISSING, final)
            else:
                posted = await self.poster.send(self.channel, self.speaker, part_text, view=want_view)
                self.parts.append(posted)
                self._texts.append(part_text)
        if final:
            for surplus in self.parts[len(texts) :]:
                await self.poster.delete(self.channel, surplus)
            del self.parts[len(texts) :]
            del self._texts[len(texts) :]

    async def _edit(self, index: int, text: str, view: discord.ui.View | object | None, final: bool) -> None:
        posted = self.parts[index]
        try:
            if final and view is None:
                await self.poster.edit(self.channel, posted, self.speaker, text, view=None)
            else:
                await self.poster.edit(self.channel, posted, self.speaker, text, view=view)
            self._texts[index] = text
        except MessageGone:
            # Someone deleted a part (or the webhook) mid-stream: post it again rather than lose the text.
            log.info("reply part %s vanished; posting it again", posted.id)
            self.parts[index] = await self.poster.send(
                self.channel, self.speaker, text, view=view if isinstance(view, discord.ui.View) else None
            )
            self._texts[index] = text
            # A deleted webhook leaves its messages behind: remove the stale copy where the bot may (Manage
            # Messages), so the text does not show twice.
            with contextlib.suppress(discord.HTTPException):
                await self.poster.delete(self.channel, dataclasses.replace(posted, via_webhook=False))

    async def delete_all(self) -> None:
        for posted in self.parts:
            await self.poster.delete(self.channel, posted)
        self.parts.clear()
        self._texts.clear()
