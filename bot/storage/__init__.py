"""Persistent state: SQLAlchemy models, the async database, migrations, and repository functions.

Cogs never write SQL: they call the functions in ``guilds``, ``personas``, ``channels``, ``messages``,
``generations`` and ``moderation`` with a session from :meth:`Database.session`.
"""

from bot.storage.database import Database, DatabaseError

__all__ = ["Database", "DatabaseError"]
