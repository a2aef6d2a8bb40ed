"""``rpbot run`` freezes the start-up heap out of the garbage collector's full passes once the bot is ready."""

from __future__ import annotations

import gc

from tests.discord_emulator import DiscordEmulator


async def test_a_bot_asked_to_freeze_does_so_once_ready(emulator: DiscordEmulator, run_bot) -> None:
    await emulator.create_guild("Tavern")
    gc.unfreeze()
    try:
        bot = await run_bot(freeze_gc=True)
        await emulator.wait_until(lambda: gc.get_freeze_count() > 0, "the heap frozen after READY")
        assert bot.freeze_gc is False  # once: a later READY (a new session) does not freeze again
    finally:
        gc.unfreeze()  # the test process goes on starting bots


async def test_bots_do_not_freeze_by_default(emulator: DiscordEmulator, run_bot) -> None:
    await emulator.create_guild("Tavern")
    gc.unfreeze()
    await run_bot()
    assert gc.get_freeze_count() == 0
