"""The Discord side of the bot overhead benchmark: the API emulator plus a load generator.

``bench/bot_overhead.py`` runs it as a subprocess (so the emulator's own work does not share the bot's CPU time and
event loop) and drives it with one JSON object per line on stdin; each answer is one JSON line on stdout. It can
also run in the bot's process (``--in-process``) through the same :class:`DiscordSide` methods, for comparison.

Timestamps are ``time.monotonic()`` (system-wide on Linux, but only this side's are compared): when the emulator
built a user's message, right before dispatching its MESSAGE_CREATE, and when it handled the webhook POST that
created a reply.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.discord_emulator import DiscordEmulator
from tests.discord_emulator import models as m

log = logging.getLogger(__name__)

PERSONA_NAME = "Seraphina"


class DiscordSide:
    """One emulated guild with ``channels`` age-restricted text channels and one member who talks to the persona."""

    def __init__(self, channels: int) -> None:
        self.channel_count = channels
        self.emu = DiscordEmulator(default_timeout=60)
        self.guild: m.Guild | None = None
        self.channels: list[m.Channel] = []
        self.member: m.Member | None = None
        self.user_times: dict[int, float] = {}
        self.reply_times: dict[int, float] = {}

    async def start(self) -> dict[str, Any]:
        emu = self.emu
        await emu.start()
        build = emu.new_message

        def stamped(channel: m.Channel, author: m.User, content: str, source: str, **fields: Any) -> m.Message:
            message = build(channel, author, content, source, **fields)
            if source == "webhook":
                self.reply_times[message.id] = time.monotonic()
            elif source == "user":
                self.user_times[message.id] = time.monotonic()
            return message

        emu.new_message = stamped  # type: ignore[method-assign]
        self.guild = await emu.create_guild("Bench", channels=())
        self.channels = [await emu.create_channel(self.guild, f"rp-{i}", nsfw=True) for i in range(self.channel_count)]
        self.member = await emu.add_member(self.guild, "alice", nick="Alice")
        return {
            "api_url": emu.api_url,
            "gateway_url": emu.gateway_url,
            "token": emu.token,
            "guild_id": self.guild.id,
            "channel_ids": [c.id for c in self.channels],
            "user_id": self.member.user.id,
            "bot_user_id": emu.bot_user.id,
        }

    def _webhook_messages(self) -> int:
        return len(self.reply_times)

    async def warmup(self) -> dict[str, Any]:
        """One trigger per channel: each channel's webhook is created and its history loaded on its first reply."""
        assert self.member is not None
        before = self._webhook_messages()
        for i, channel in enumerate(self.channels):
            await self.emu.user_message(channel, self.member, f"{PERSONA_NAME}, warm-up {i}?")
        await self.emu.wait_until(
            lambda: self._webhook_messages() - before >= len(self.channels), "a warm-up reply in every channel", 120
        )
        await asyncio.sleep(1.5)  # the warm-up replies' final edits and store writes settle
        return {"ok": True}

    async def load(self, rate: float, messages: int, busy: int) -> dict[str, Any]:
        """Send ``messages`` triggers at ``rate`` per second, round-robin over the first ``busy`` channels."""
        assert self.member is not None
        loop = asyncio.get_running_loop()
        sent: list[int] = []
        lag = 0.0
        began = loop.time()
        for i in range(messages):
            delay = began + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                lag = max(lag, -delay)
            channel = self.channels[i % busy]
            message = await self.emu.user_message(channel, self.member, f"{PERSONA_NAME}, what now? ({i})")
            sent.append(message.id)
        return {"sent": sent, "seconds": loop.time() - began, "max_send_lag_ms": round(lag * 1000, 2)}

    def latencies(self, pairs: list[tuple[int, int]]) -> list[float]:
        """Milliseconds from each trigger's MESSAGE_CREATE to the POST of its reply's first message."""
        return [(self.reply_times[r] - self.user_times[t]) * 1000 for t, r in pairs]

    async def stop(self) -> None:
        await self.emu.stop()


async def serve() -> None:
    """Answer the bot process's commands, one JSON object per line, until it says stop or closes stdin."""
    side = DiscordSide(int(sys.argv[1]))
    out = sys.stdout

    def answer(payload: dict[str, Any]) -> None:
        out.write(json.dumps(payload) + "\n")
        out.flush()

    answer(await side.start())
    try:
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                break
            command = json.loads(line)
            try:
                name = command.pop("cmd")
                if name == "stop":
                    break
                if name == "warmup":
                    answer(await side.warmup())
                elif name == "load":
                    answer(await side.load(**command))
                elif name == "latencies":
                    answer({"latencies": side.latencies([tuple(p) for p in command["pairs"]])})
                elif name == "errors":
                    answer({"errors": side.emu.internal_errors})
                else:
                    answer({"error": f"unknown command {name!r}"})
            except Exception as exc:  # report it to the bot process rather than leave it waiting
                log.exception("command %r failed", command)
                answer({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        await side.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(serve())
