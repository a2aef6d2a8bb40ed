"""History normalisation: Discord markup, attachments, OOC, tidy-up and cutting."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bot.prompt import Mentions
from bot.prompt.normalize import (
    MAX_MESSAGE_CHARS,
    TRUNCATION_MARKER,
    attachment_notes,
    is_out_of_character,
    message_text,
    resolve_markup,
    tidy,
)

MENTIONS = Mentions(users={1: "Alice", 2: "Bob  Smith"}, channels={10: "tavern"}, roles={20: "Moderators"})
SENT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
TS = int(datetime(2024, 5, 1, 15, 30, 5, tzinfo=UTC).timestamp())


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("hi <@1>", "hi @Alice"),
        ("hi <@!2>", "hi @Bob Smith"),
        ("in <#10>", "in #tavern"),
        ("ping <@&20>", "ping @Moderators"),
        ("who is <@99>?", "who is @unknown-user?"),
        ("<#99> <@&99>", "#unknown-channel @unknown-role"),
        ("nice <:pog:123456> <a:dance:42>", "nice :pog: :dance:"),
        ("use </roll dice:777>", "use /roll dice"),
        (f"at <t:{TS}:t>", "at 15:30 UTC"),
        (f"at <t:{TS}:T>", "at 15:30:05 UTC"),
        (f"on <t:{TS}:d>", "on 2024-05-01"),
        (f"on <t:{TS}:D>", "on 1 May 2024"),
        (f"<t:{TS}>", "1 May 2024 15:30 UTC"),
        (f"<t:{TS}:F>", "Wednesday, 1 May 2024 15:30 UTC"),
        (f"<t:{TS}:R>", "in 3 hours"),
        (f"<t:{TS - 2 * 86400 - 16 * 3600}:R>", "2 days ago"),
        ("<t:9999999999999999>", "(an invalid time)"),
        ("plain <b>text</b>", "plain <b>text</b>"),
    ],
)
def test_markup(raw: str, expected: str) -> None:
    assert resolve_markup(raw, MENTIONS, created_at=SENT) == expected


def test_attachment_notes() -> None:
    notes = attachment_notes(
        [
            {"kind": "image", "name": "cat.png"},
            {"kind": "file", "name": "notes [draft].txt"},
            {"kind": "sticker", "name": "Wave"},
            {"kind": "VIDEO!", "name": ""},
            {"kind": "image", "name": "x.png"},
            {"kind": "image", "name": "y.png"},
        ]
    )
    assert notes == "[image: cat.png] [file: notes draft .txt] [sticker: Wave] [video] [+2 more attachments]"
    assert attachment_notes([{"name": "a" * 200}]) == f"[file: {'a' * 59}…]"


@pytest.mark.parametrize(
    ("text", "ooc"),
    [("// brb", True), ("  //afk", True), ("((lol))", True), ("((forgot to close", True), ("hi // there", False)],
)
def test_out_of_character(text: str, ooc: bool) -> None:
    assert is_out_of_character(text) is ooc


def test_tidy() -> None:
    assert tidy("a  \r\nb\r\n\r\n\r\n\r\nc  ") == "a\nb\n\nc"


def test_message_text_combines_text_and_notes() -> None:
    assert message_text("look", [{"kind": "image", "name": "cat.png"}], MENTIONS) == "look [image: cat.png]"
    assert message_text("", [{"kind": "sticker", "name": "Hi"}], MENTIONS) == "[sticker: Hi]"
    assert message_text("   ", [], MENTIONS) == ""


def test_huge_message_is_cut_with_a_marker() -> None:
    text = message_text("word " * 2000, [], MENTIONS)
    assert len(text) <= MAX_MESSAGE_CHARS
    assert text.endswith(TRUNCATION_MARKER)
    assert "wor" + TRUNCATION_MARKER not in text  # cut at a word boundary
