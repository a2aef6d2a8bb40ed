"""The ``rpbot`` command: run, migrate, check, chat, version."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from bot import __version__
from bot.config import ConfigError, Settings, load_settings
from bot.logging_setup import setup_logging

log = logging.getLogger(__name__)

EXIT_CONFIG = 2
EXIT_FAILED = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rpbot", description="Self-hosted Discord roleplay bot (Pygmalion-2).")
    parser.add_argument("--env-file", default=".env", help="settings file to read besides the environment")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", help="upgrade the database and start the bot")
    sub.add_parser("migrate", help="upgrade the database schema to the latest version")
    sub.add_parser("check", help="check settings, database and engine; exit non-zero on any problem")
    sub.add_parser("version", help="print the version")
    chat = sub.add_parser("chat", help="roleplay in the terminal with a persona or a character card")
    who = chat.add_mutually_exclusive_group(required=True)
    who.add_argument("--card", help="a character card file (PNG, JSON or CHARX)")
    who.add_argument("--persona", help="a persona name from the database (with --guild)")
    chat.add_argument("--guild", type=int, help="the guild id whose persona library to use")
    chat.add_argument("--user", default="You", help="your name in the conversation")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"rpbot {__version__}")
        return 0
    try:
        settings = load_settings(args.env_file)
        setup_logging(settings.log_level, settings.log_format, _secrets(settings))
        if args.command == "migrate":
            return _migrate(settings)
        if args.command == "check":
            return asyncio.run(_check(settings))
        if args.command == "run":
            return _run(settings)
        if args.command == "chat":
            from bot.terminal_chat import run_terminal_chat

            return run_terminal_chat(settings, card=args.card, persona=args.persona, guild=args.guild, user=args.user)
    except ConfigError as exc:
        for line in exc.problems:
            print(f"rpbot: {line}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    raise AssertionError(f"unhandled command {args.command}")  # argparse rejects unknown commands first


def _secrets(settings: Settings) -> list[str]:
    secrets = [s.get_secret_value() for s in (settings.discord_token, settings.openai_api_key) if s is not None]
    if "@" in settings.database_url and ":" in settings.database_url.split("://", 1)[-1].split("@")[0]:
        secrets.append(settings.database_url.split("://", 1)[-1].split("@")[0].split(":", 1)[1])
    return secrets


def _migrate(settings: Settings) -> int:
    from bot.storage.migrate import upgrade

    try:
        upgrade(settings.database_url)
    except Exception as exc:
        print(f"rpbot: could not upgrade the database: {_first_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    print("database is up to date")
    return 0


async def _check(settings: Settings) -> int:
    from bot.storage import Database, DatabaseError
    from bot.storage.migrate import is_at_head

    problems: list[str] = []
    print("Settings:")
    for name, value in settings.masked().items():
        print(f"  {name} = {value}")
    if settings.discord_token is None:
        problems.append("RPBOT_DISCORD_TOKEN is not set: put your bot token from the Discord developer portal in .env")
    db = Database(settings.database_url)
    try:
        await db.ping()
        at_head, current, head = await is_at_head(settings.database_url)
        if not at_head:
            problems.append(f"database schema is at {current or 'nothing'}, latest is {head}: run `rpbot migrate`")
    except DatabaseError as exc:
        problems.append(str(exc))
    except Exception as exc:
        problems.append(f"database check failed: {_first_line(exc)}")
    finally:
        await db.close()
    problems.extend(settings.engine_problems())
    if problems:
        print("Problems:")
        for line in problems:
            print(f"  - {line}")
        return EXIT_FAILED
    print("All checks passed.")
    return 0


def _run(settings: Settings) -> int:
    token = settings.require_token()
    problems = settings.engine_problems()
    if problems:
        raise ConfigError(problems)
    from bot.storage.migrate import upgrade

    try:
        upgrade(settings.database_url)
    except Exception as exc:
        print(f"rpbot: could not upgrade the database: {_first_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    return asyncio.run(_serve(settings, token))


async def _serve(settings: Settings, token: str) -> int:
    import discord

    from bot.client import RPBot
    from bot.generation.base import EngineError
    from bot.storage import Database

    db = Database(settings.database_url)
    bot = RPBot(settings, db, freeze_gc=True)
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    def on_signal(sig: signal.Signals) -> None:
        if stopping:
            log.info("%s again: already shutting down", sig.name)
            return
        log.info("%s received: finishing running replies (up to %gs)", sig.name, settings.shutdown_grace_seconds)
        stopping.append(asyncio.create_task(bot.close(), name="rpbot-shutdown"))

    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal, sig)
            handled.append(sig)
        except NotImplementedError:  # Windows event loops: Ctrl-C still stops the bot, without the grace period
            pass
    try:
        await bot.start(token)
    except discord.LoginFailure:
        print(
            "rpbot: Discord refused RPBOT_DISCORD_TOKEN: copy the bot token again from the developer portal",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    except EngineError as exc:
        print(f"rpbot: the engine could not start: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        # start() returns as soon as the gateway closes; the shutdown goes on (queue, engine, database) and must
        # finish before the event loop does, or asyncio.run would cancel it halfway.
        await bot.close()
        for sig in handled:
            loop.remove_signal_handler(sig)
    return 0


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
