"""Prompt building: channel history and a persona to a Metharme prompt, and model output back to a reply.

Pure core code (no Discord): the chat cog, ``rpbot chat`` and the benchmarks share it.
"""

from __future__ import annotations

from bot.prompt.builder import BuiltPrompt, FiredEntry, PromptBuilder, TokenBreakdown, Turn
from bot.prompt.cleanup import clean_reply
from bot.prompt.errors import EmptyReply, PersonaTooLarge, PromptError
from bot.prompt.lorebook import Lorebook
from bot.prompt.macros import expand_macros
from bot.prompt.metharme import DEFAULT_SYSTEM_PROMPT, stop_strings
from bot.prompt.sanitize import clean_name, neutralize
from bot.prompt.types import ChatMessage, HistoryMessage, Mentions, PersonaSpec, Role

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "BuiltPrompt",
    "ChatMessage",
    "EmptyReply",
    "FiredEntry",
    "HistoryMessage",
    "Lorebook",
    "Mentions",
    "PersonaSpec",
    "PersonaTooLarge",
    "PromptBuilder",
    "PromptError",
    "Role",
    "TokenBreakdown",
    "Turn",
    "clean_name",
    "clean_reply",
    "expand_macros",
    "neutralize",
    "stop_strings",
]
