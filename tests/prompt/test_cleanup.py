"""Reply clean-up: markers, impersonation, the persona's own name, empty replies."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.prompt import EmptyReply, clean_reply
from bot.prompt.sanitize import ALL_MARKERS

PEOPLE = ["Alice", "Bob"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (" *She smiles.* Hello!", "*She smiles.* Hello!"),
        ("Seraphina: Hello!", "Hello!"),
        ("seraphina:  Seraphina: Hello!", "Hello!"),
        ("**Seraphina:** Hello!", "Hello!"),
        ("Hello!<|user|>Alice: hi", "Hello!"),
        ("Hello!< | USER | >Alice: hi", "Hello!"),
        ("Hello!</s>junk", "Hello!"),
        ("Hello!\nAlice: I agree.", "Hello!"),
        ("Hello!\n  bob : me too", "Hello!"),
        ("Hello!\nYou: what?", "Hello!"),
        ("Hello!\n<START>\nmore", "Hello!"),
        ("Hello! <|mod", "Hello!"),
        ("Hello! </", "Hello!"),
        ("I <3 you <", "I <3 you <"),
        ("Line one.\n\nSeraphina: Line two.", "Line one.\n\nSeraphina: Line two."),
        ("Alicia is here.", "Alicia is here."),
        ("Sera: Hi", "Hi"),
    ],
)
def test_clean_reply(raw: str, expected: str) -> None:
    assert clean_reply(raw, "Seraphina", PEOPLE, aliases=["Sera"]) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "no text"),
        ("   \n ", "no text"),
        ("Seraphina:", "role markers or its own name"),
        ("<|user|>Alice: hi", "role markers or its own name"),
        ("Alice: I'll answer for her.", "turn for Alice"),
    ],
)
def test_empty_replies_raise_with_a_reason(raw: str, reason: str) -> None:
    with pytest.raises(EmptyReply, match=reason):
        clean_reply(raw, "Seraphina", PEOPLE)


def test_continuation_keeps_leading_space_and_names() -> None:
    assert clean_reply(" and then she left.\nAlice: ok", "Seraphina", PEOPLE, continuation=True) == (
        " and then she left."
    )
    assert clean_reply("Seraphina: laughs", "Seraphina", PEOPLE, continuation=True) == "Seraphina: laughs"


@given(st.text(max_size=200), st.sampled_from(ALL_MARKERS), st.text(max_size=50))
def test_nothing_after_a_marker_survives(before: str, marker: str, after: str) -> None:
    try:
        out = clean_reply(before + marker + after, "Seraphina", PEOPLE)
    except EmptyReply:
        return
    assert marker not in out
    assert out == out.strip() and out
