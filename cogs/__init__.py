"""Discord cogs: each turns Discord events and commands into calls on the core in ``bot``."""
