"""forget_requests(): the deletion requests a backfill must honour, read back from the audit log."""

from __future__ import annotations

from datetime import UTC, datetime

from bot.storage import Database
from bot.storage import moderation as mod_repo

GUILD, OTHER = 100, 200
NELL, ADA, BOB = 1, 2, 3


async def test_forget_requests_are_scoped_like_the_commands(db: Database) -> None:
    before = datetime.now(UTC)
    async with db.session() as session:
        await mod_repo.audit(session, GUILD, ADA, mod_repo.ADMIN_FORGET, f"user {NELL}", messages=3)
        await mod_repo.audit(session, OTHER, BOB, mod_repo.FORGET_ME, f"user {BOB}", messages=1)  # from a guild
        await mod_repo.audit(session, None, ADA, mod_repo.FORGET_ME, f"user {ADA}", messages=0)  # from a DM
        await mod_repo.audit(session, GUILD, ADA, "admin.block", f"user {BOB}")  # not a deletion request
    async with db.session() as session:
        here = await mod_repo.forget_requests(session, GUILD, {NELL, ADA, BOB, 4})
        there = await mod_repo.forget_requests(session, OTHER, {NELL, ADA, BOB})
        assert await mod_repo.forget_requests(session, GUILD, set()) == {}
    # /admin forget counts in its own guild only; /forget-me everywhere, wherever it was run.
    assert set(here) == {NELL, ADA, BOB}
    assert set(there) == {ADA, BOB}
    assert all(when.tzinfo is not None and when >= before.replace(microsecond=0) for when in here.values())


async def test_the_latest_request_counts(db: Database) -> None:
    async with db.session() as session:
        first = await mod_repo.audit(session, GUILD, NELL, mod_repo.FORGET_ME, f"user {NELL}")
        first.created_at = datetime(2025, 1, 1, tzinfo=UTC)
        await mod_repo.audit(session, GUILD, NELL, mod_repo.FORGET_ME, f"user {NELL}")
    async with db.session() as session:
        when = (await mod_repo.forget_requests(session, GUILD, {NELL}))[NELL]
    assert when.year > 2025
