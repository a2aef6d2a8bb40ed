"""rpbot: a self-hosted Discord roleplay bot. ``bot`` is the core; ``cogs`` is the Discord face."""

__version__ = "0.1.0"
