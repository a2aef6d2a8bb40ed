"""``rpbot chat``: roleplay with a persona in the terminal, through the same prompt builder, queue and engine.

This is how a newcomer tries a model before setting up Discord. Commands: /regen, /reset, /quit.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from bot.config import ConfigError, Settings
from bot.generation.base import EngineError, GenerationRequest, SamplerParams
from bot.generation.queue import GenerationJob, GenerationQueue, RequestError
from bot.prompt import ChatMessage, EmptyReply, PersonaSpec, PromptBuilder, PromptError, clean_reply, expand_macros
from bot.storage.models import MessageKind

log = logging.getLogger(__name__)

USER_ID = 1
PERSONA_ID = 2
CHANNEL_ID = 1
HELP = "Type to talk. /regen rerolls the last reply, /reset starts over, /quit leaves."


@dataclass
class TerminalSession:
    """The conversation state of one terminal chat (no Discord, no database)."""

    persona: PersonaSpec
    user_name: str
    history: list[ChatMessage] = field(default_factory=list)
    _next_id: int = 1

    def add(self, kind: MessageKind, content: str) -> ChatMessage:
        author = (USER_ID, self.user_name) if kind is MessageKind.HUMAN else (PERSONA_ID, self.persona.display_name)
        msg = ChatMessage(
            id=self._next_id,
            author_id=author[0],
            author_name=author[1],
            kind=kind,
            content=content,
            persona_id=PERSONA_ID if kind is MessageKind.PERSONA else None,
            created_at=datetime.now(UTC),
        )
        self._next_id += 1
        self.history.append(msg)
        return msg

    def reset(self) -> None:
        self.history.clear()
        if self.persona.greeting.strip():
            greeting = expand_macros(self.persona.greeting, char=self.persona.display_name, user=self.user_name)
            self.add(MessageKind.PERSONA, greeting)


def load_persona(settings: Settings, *, card: str | None, persona: str | None, guild: int | None) -> PersonaSpec:
    if card is not None:
        from bot.cards import CardError, card_to_persona_fields, parse_card

        path = Path(card)
        if not path.is_file():
            raise ConfigError([f"--card: {path} does not exist"])
        try:
            fields = card_to_persona_fields(parse_card(path.read_bytes(), path.name))
        except CardError as exc:
            raise ConfigError([f"--card: {path.name} could not be imported: {exc}"]) from None
        return PersonaSpec.from_row({**fields, "id": PERSONA_ID})
    if guild is None:
        raise ConfigError(["--persona needs --guild (the server id whose persona library to use)"])
    return asyncio.run(_persona_from_db(settings, persona or "", guild))


async def _persona_from_db(settings: Settings, name: str, guild: int) -> PersonaSpec:
    from bot.storage import Database
    from bot.storage.personas import find_persona

    db = Database(settings.database_url)
    try:
        async with db.session() as session:
            row = await find_persona(session, guild, name)
            if row is None:
                raise ConfigError([f"--persona: no persona named {name!r} in guild {guild} (see /persona list)"])
            spec = PersonaSpec.from_row(row)
    finally:
        await db.close()
    return PersonaSpec.from_row({**{f: getattr(spec, f) for f in spec.__dataclass_fields__}, "id": PERSONA_ID})


async def reply_once(
    session: TerminalSession,
    queue: GenerationQueue,
    builder: PromptBuilder,
    settings: Settings,
    out: TextIO,
) -> str:
    """Generate the persona's next reply, streaming it to ``out``; the reply is added to the history."""
    name = session.persona.display_name
    for _attempt in range(2):
        built = builder.build(
            session.persona,
            session.history,
            user_name=session.user_name,
            persona_id=PERSONA_ID,
            conversation=CHANNEL_ID,
        )
        request = GenerationRequest(
            prompt=built.text,
            params=SamplerParams(),
            stop=built.stop,
            max_new_tokens=settings.max_new_tokens,
            prompt_tokens=built.prompt_tokens,
        )
        req = queue.submit(GenerationJob(request=request, guild_id=None, channel_id=CHANNEL_ID, label="terminal"))
        out.write(f"{name}: ")
        out.flush()
        shown = ""
        raw = ""
        async for chunk in req.chunks():
            raw += chunk
            try:
                visible = clean_reply(raw, name, built.participants or [session.user_name])
            except EmptyReply:
                continue
            if visible.startswith(shown):
                out.write(visible[len(shown) :])
                out.flush()
                shown = visible
        result = await req.wait()
        try:
            text = clean_reply(result.text, name, built.participants or [session.user_name])
        except EmptyReply:
            out.write("(empty reply, trying again)\n")
            continue
        if text.startswith(shown):
            out.write(text[len(shown) :])
        out.write("\n")
        out.flush()
        session.add(MessageKind.PERSONA, text)
        return text
    raise EmptyReply("the model gave an empty reply twice")


async def chat_loop(settings: Settings, persona: PersonaSpec, user: str, inp: TextIO, out: TextIO) -> int:
    from bot.generation.factory import build_engine

    engine = build_engine(settings)
    await engine.start()
    queue = GenerationQueue(engine, max_size=4, timeout=settings.request_timeout_seconds)
    await queue.start()
    builder = PromptBuilder(engine, engine.context_tokens, settings.max_new_tokens)
    session = TerminalSession(persona, user)
    session.reset()
    out.write(f"Chatting with {persona.display_name} on {engine.name}. {HELP}\n\n")
    if session.history:
        out.write(f"{persona.display_name}: {session.history[0].content}\n")
    loop = asyncio.get_running_loop()
    try:
        while True:
            out.write(f"{user}> ")
            out.flush()
            line = await loop.run_in_executor(None, inp.readline)
            if not line:
                break
            line = line.strip()
            if not line:
                continue
            if line in ("/quit", "/exit"):
                break
            if line == "/reset":
                session.reset()
                out.write("(new scene)\n")
                if session.history:
                    out.write(f"{persona.display_name}: {session.history[0].content}\n")
                continue
            if line == "/regen":
                if (
                    not session.history
                    or session.history[-1].kind is not MessageKind.PERSONA
                    or len(session.history) < 2
                ):
                    out.write("(nothing to regenerate yet)\n")
                    continue
                session.history.pop()
            elif line.startswith("/"):
                out.write(f"(unknown command; {HELP})\n")
                continue
            else:
                session.add(MessageKind.HUMAN, line)
            try:
                await reply_once(session, queue, builder, settings, out)
            except (EngineError, RequestError, PromptError, EmptyReply) as exc:
                out.write(f"\n(could not reply: {exc})\n")
    finally:
        await queue.close()
        await engine.close()
    return 0


def run_terminal_chat(
    settings: Settings,
    *,
    card: str | None,
    persona: str | None,
    guild: int | None,
    user: str,
    inp: TextIO | None = None,
    out: TextIO | None = None,
) -> int:
    problems = settings.engine_problems()
    if problems:
        raise ConfigError(problems)
    spec = load_persona(settings, card=card, persona=persona, guild=guild)
    try:
        return asyncio.run(chat_loop(settings, spec, user, inp or sys.stdin, out or sys.stdout))
    except EngineError as exc:
        print(f"rpbot: the engine could not start: {exc}", file=sys.stderr)
        return 1
