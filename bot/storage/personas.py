"""A guild's persona library."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from bot.storage.models import PERSONA_NAME_MAX, Persona


class PersonaError(ValueError):
    """A persona operation that cannot be done; the message is shown to the user."""


def _check_name(name: str) -> str:
    name = name.strip()
    if not name:
        raise PersonaError("A persona needs a name.")
    if len(name) > PERSONA_NAME_MAX:
        raise PersonaError(f"Persona names are at most {PERSONA_NAME_MAX} characters (this one has {len(name)}).")
    return name


async def get_persona(session: AsyncSession, persona_id: int) -> Persona | None:
    return await session.get(Persona, persona_id)


async def find_persona(session: AsyncSession, guild_id: int, name: str) -> Persona | None:
    """Look a persona up by name, case-insensitively."""
    stmt = select(Persona).where(Persona.guild_id == guild_id, func.lower(Persona.name) == name.strip().lower())
    return (await session.scalars(stmt)).first()


async def list_personas(
    session: AsyncSession, guild_id: int, *, prefix: str = "", limit: int = 25, offset: int = 0
) -> Sequence[Persona]:
    stmt = select(Persona).where(Persona.guild_id == guild_id)
    if prefix:
        stmt = stmt.where(func.lower(Persona.name).startswith(prefix.lower(), autoescape=True))
    stmt = stmt.order_by(func.lower(Persona.name)).limit(limit).offset(offset)
    return (await session.scalars(stmt)).all()


async def count_personas(session: AsyncSession, guild_id: int) -> int:
    stmt = select(func.count()).select_from(Persona).where(Persona.guild_id == guild_id)
    return int(await session.scalar(stmt) or 0)


async def create_persona(
    session: AsyncSession, guild_id: int, name: str, *, replace: bool = False, **fields: Any
) -> Persona:
    """Add a persona to the guild's library. A name clash raises unless ``replace`` is set."""
    name = _check_name(name)
    existing = await find_persona(session, guild_id, name)
    if existing is not None:
        if not replace:
            raise PersonaError(f"A persona named {existing.name!r} already exists in this server.")
        for key, value in fields.items():
            setattr(existing, key, value)
        existing.name = name
        await session.flush()
        return existing
    persona = Persona(guild_id=guild_id, name=name, **fields)
    session.add(persona)
    await session.flush()
    return persona


async def update_persona(session: AsyncSession, persona: Persona, **fields: Any) -> Persona:
    if "name" in fields:
        new_name = _check_name(fields["name"])
        clash = await find_persona(session, persona.guild_id, new_name)
        if clash is not None and clash.id != persona.id:
            raise PersonaError(f"A persona named {clash.name!r} already exists in this server.")
        fields["name"] = new_name
    for key, value in fields.items():
        if not hasattr(Persona, key):
            raise AttributeError(f"personas have no field {key!r}")
        setattr(persona, key, value)
    await session.flush()
    return persona


async def delete_persona(session: AsyncSession, persona: Persona) -> None:
    await session.delete(persona)
    await session.flush()
