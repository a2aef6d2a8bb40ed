pytest_plugins = ["tests.discord_emulator.fixtures"]
