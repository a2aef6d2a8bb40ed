"""A world for the /persona and /chat tests: a guild with staff and plain members, and the whole bot running.

Kept out of conftest.py so it cannot clash with other test packages' fixtures; test modules call these helpers.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin
from sqlalchemy import select

from bot.client import EXTENSIONS, RPBot
from bot.storage import personas as persona_repo
from bot.storage.models import AuditEntry, ChannelSettings, Persona
from tests.discord_emulator import DiscordEmulator
from tests.discord_emulator import models as m
from tests.discord_emulator.fixtures import BotRunner
from tests.discord_emulator.interactions import InteractionHandle
from tests.support.scripted_engine import ScriptedEngine

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cards"

NOT_PERMITTED = "You need the Manage Channels permission (or the server's persona manager role) for that."


@dataclass
class World:
    emu: DiscordEmulator
    bot: RPBot
    engine: ScriptedEngine
    guild: m.Guild
    general: m.Channel  # not age-restricted
    lounge: m.Channel  # age-restricted: personas may speak here while nsfw-only is on (the default)
    staff: m.Member  # Manage Channels
    alice: m.Member  # nothing beyond @everyone
    bob: m.Member

    async def run(
        self,
        group: str,
        sub: str,
        options: dict[str, Any] | None = None,
        *,
        member: m.Member | None = None,
        channel: m.Channel | None = None,
    ) -> InteractionHandle:
        """Run ``/group sub options`` and wait until the bot has answered (a deferral: until its content came)."""
        handle = await self.emu.slash_command(
            channel or self.lounge, member or self.staff, group, options or {}, subcommand=sub
        )
        await handle.wait_response()
        if handle.response_type == 5:
            await handle.wait_content()
        return handle

    async def say(self, group: str, sub: str, options: dict[str, Any] | None = None, **kw: Any) -> str:
        """Run a command and return the text of its answer, which must be ephemeral."""
        handle = await self.run(group, sub, options, **kw)
        assert handle.ephemeral, f"/{group} {sub} answered publicly: {handle.content!r}"
        for message in (handle.original, *handle.followups):
            assert message is not None and message.allowed_mentions == {"parse": []}, f"/{group} {sub} may ping"
        return handle.content or ""

    # ---- the database, as the bot sees it ----

    async def persona(self, name: str) -> Persona | None:
        async with self.bot.db.session() as session:
            return await persona_repo.find_persona(session, self.guild.id, name)

    async def names(self) -> list[str]:
        async with self.bot.db.session() as session:
            rows = await persona_repo.list_personas(session, self.guild.id, limit=1000)
        return [p.name for p in rows]

    async def channel_row(self, channel: m.Channel) -> ChannelSettings | None:
        async with self.bot.db.session() as session:
            return await session.get(ChannelSettings, channel.id)

    async def audit_actions(self) -> list[str]:
        async with self.bot.db.session() as session:
            rows = (await session.scalars(select(AuditEntry).order_by(AuditEntry.id))).all()
        return [r.action for r in rows]

    async def add_personas(self, count: int, prefix: str = "Persona") -> None:
        """Many personas at once, straight into the library (for pagination)."""
        async with self.bot.db.session() as session:
            for i in range(count):
                await persona_repo.create_persona(session, self.guild.id, f"{prefix} {i:02d}", description=f"No. {i}")


async def make_world(emu: DiscordEmulator, run_bot: BotRunner, *, engine: ScriptedEngine | None = None) -> World:
    guild = await emu.create_guild("Tavern", channels=("general",))
    lounge = await emu.create_channel(guild, "lounge", nsfw=True)
    staff = await emu.add_member(guild, "staff", nick="Staff", permissions=m.MANAGE_CHANNELS)
    alice = await emu.add_member(guild, "alice", nick="Alice")
    bob = await emu.add_member(guild, "bob", nick="Bob")
    engine = engine or ScriptedEngine("The lantern flickers.")
    bot = await run_bot(engine=engine, start_generation=True, extensions=EXTENSIONS)
    return World(emu, bot, engine, guild, guild.channel("general"), lounge, staff, alice, bob)


# ---- files users upload ----


def png_image(color: tuple[int, int, int] = (200, 40, 40), size: tuple[int, int] = (64, 64)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def v2_card(name: str, **data: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "name": name,
        "description": f"{name} is a test character.",
        "personality": "curious",
        "scenario": "A quiet inn.",
        "first_mes": f"Hello, I am {name}.",
        "mes_example": "<START>\n{{user}}: Hi\n{{char}}: Hello!",
        "creator_notes": "",
        "system_prompt": "",
        "post_history_instructions": "",
        "alternate_greetings": [],
        "tags": [],
        "creator": "tests",
        "character_version": "1",
        "extensions": {},
    }
    fields.update(data)
    return {"spec": "chara_card_v2", "spec_version": "2.0", "data": fields}


def card_png(card: dict[str, Any] | None, *, image: bytes | None = None, raw_text: str | None = None) -> bytes:
    """A PNG with ``card`` in a ``chara`` tEXt chunk (or ``raw_text`` there as is; neither: no card at all)."""
    img = Image.open(io.BytesIO(image or png_image()))
    info = PngImagePlugin.PngInfo()
    if raw_text is not None:
        info.add_text("chara", raw_text)
    elif card is not None:
        info.add_text("chara", base64.b64encode(json.dumps(card).encode()).decode())
    out = io.BytesIO()
    img.save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def png_text_chunks(data: bytes) -> dict[str, str]:
    with Image.open(io.BytesIO(data)) as img:
        return {k.lower(): v for k, v in img.text.items()}  # type: ignore[attr-defined]


def seraphina_png() -> bytes:
    """SillyTavern's default character: a real V2 card with a lorebook."""
    return (FIXTURES / "default_Seraphina.png").read_bytes()
