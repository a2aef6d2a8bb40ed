"""Example dialogue (a card's ``mes_example``) to user/model turns.

Cards write examples as blocks introduced by ``<START>``, with lines led by ``{{user}}:`` or ``{{char}}:``
(``<USER>:``/``<BOT>:`` in old cards, sometimes the character's real name). A line without a speaker continues
the previous one; text before any speaker line is narration and becomes a system turn.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bot.prompt.types import Role

_START = re.compile(r"^\s*<start>\s*$", re.IGNORECASE | re.MULTILINE)
_USER_LINE = re.compile(r"^\s*(?:\{\{\s*user\s*\}\}|<user>)\s*:\s?", re.IGNORECASE)
_CHAR_LINE = re.compile(r"^\s*(?:\{\{\s*char\s*\}\}|<bot>)\s*:\s?", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class ExampleTurn:
    role: Role
    text: str  # unexpanded: macros are filled in per prompt


def parse_examples(text: str, char_name: str = "") -> list[list[ExampleTurn]]:
    """The example blocks of ``text``, each a list of turns; empty blocks are dropped."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    blocks: list[list[ExampleTurn]] = []
    name_line = re.compile(r"^\s*" + re.escape(char_name.strip()) + r"\s*:\s?", re.IGNORECASE) if char_name else None
    for raw_block in _START.split(text):
        turns: list[tuple[Role, list[str]]] = []
        for line in raw_block.split("\n"):
            role: Role | None = None
            if m := _USER_LINE.match(line):
                role = Role.USER
            elif (m := _CHAR_LINE.match(line)) or (name_line is not None and (m := name_line.match(line))):
                role = Role.MODEL
            if role is not None and m is not None:
                turns.append((role, [line[m.end() :]]))
            elif turns:
                turns[-1][1].append(line)
            elif line.strip():
                turns.append((Role.SYSTEM, [line]))
        block = [ExampleTurn(role, "\n".join(lines).strip()) for role, lines in turns]
        block = [turn for turn in block if turn.text]
        if block:
            blocks.append(block)
    return blocks
