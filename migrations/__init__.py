"""Alembic migrations for rpbot's database (run with `rpbot migrate`)."""
