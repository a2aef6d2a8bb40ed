"""Moderation logic: output filters with bounded matching time."""
