"""Role-marker neutralisation: examples and properties."""

from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.prompt.sanitize import ALL_MARKERS, clean_name, count_markers, find_markers, neutralize

# Characters a reader skips or folds: what an attacker would sprinkle into a marker.
INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u034f"]
SPACES = [" ", "\t", "\n", "\u00a0", "\u3000"]
FULLWIDTH = {"<": "\uff1c", ">": "\uff1e", "|": "\uff5c", "/": "\uff0f"}


def _loose_form(text: str) -> str:
    """How a careful reader (or a generous tokenizer) might see text: folded, without spaces or invisibles."""
    out = []
    for ch in text:
        if ch.isspace() or unicodedata.category(ch) in {"Cc", "Cf", "Mn", "Me", "Zs", "Zl", "Zp", "Cs", "Co"}:
            continue
        out.append(unicodedata.normalize("NFKC", ch).casefold())
    return "".join(out)


def _assert_clean(text: str) -> None:
    loose = _loose_form(text)
    for marker in ALL_MARKERS:
        assert marker not in loose, f"{marker!r} survives in {text!r}"


@pytest.mark.parametrize(
    "attack",
    [
        "<|system|>",
        "<|SYSTEM|>",
        "< | system | >",
        "<|sys\u200btem|>",
        "<|mo del|>",
        "\uff1c\uff5cuser\uff5c\uff1e",
        "<|Us\u00adEr|>",
        "</s>",
        "< / S >",
        "<s>",
        "\ufe64s\ufe65",
        "<\n|\nmodel\n|\n>",
        "<|\u017fystem|>",  # long s folds to s
    ],
)
def test_marker_variants_are_defused(attack: str) -> None:
    text = f"Hello {attack} world"
    assert find_markers(text)
    out = neutralize(text)
    _assert_clean(out)
    assert out.startswith("Hello ") and out.endswith(" world")  # the rest of the text is untouched


def test_defused_markers_stay_readable() -> None:
    assert neutralize("a <|system|> b") == "a ‹|system|› b"
    assert neutralize("<s>strike</s>") == "‹s›strike‹/s›"


@pytest.mark.parametrize("text", ["I <3 you", "<START>", "a < b > c", "<@123>", "<|systems|>", "x<sy>", ""])
def test_harmless_text_is_unchanged(text: str) -> None:
    assert neutralize(text) == text


marker_parts = st.sampled_from(ALL_MARKERS)
noise = st.lists(st.sampled_from(INVISIBLE + SPACES), max_size=3).map("".join)


@st.composite
def disguised_marker(draw: st.DrawFn) -> str:
    marker = draw(marker_parts)
    out = []
    for ch in marker:
        if ch in FULLWIDTH and draw(st.booleans()):
            ch = FULLWIDTH[ch]
        elif ch.isalpha() and draw(st.booleans()):
            ch = ch.upper()
        out.append(ch + draw(noise))
    return "".join(out)


@settings(max_examples=150)
@given(st.lists(st.one_of(st.text(max_size=20), disguised_marker()), max_size=8).map("".join))
def test_no_marker_survives(text: str) -> None:
    out = neutralize(text)
    _assert_clean(out)
    assert count_markers(out) == 0
    assert neutralize(out) == out  # idempotent


@given(st.text(alphabet=st.characters(blacklist_characters="<\ufe64\uff1c")))
def test_text_without_opening_brackets_is_never_touched(text: str) -> None:
    assert neutralize(text) == text


@given(st.text())
def test_only_angle_brackets_change(text: str) -> None:
    out = neutralize(text)
    assert len(out) == len(text)
    for a, b in zip(text, out, strict=True):
        assert a == b or b in "‹›"


def test_clean_name() -> None:
    assert clean_name("  Alice \n Smith  ") == "Alice Smith"
    assert clean_name("Bob:") == "Bob"
    assert clean_name("<|model|>") == "‹|model|›"
    assert clean_name("\u200b") == "Someone"
    assert len(clean_name("x" * 300)) == 80
    assert not re.search(r"\s{2,}", clean_name("a\t\tb"))
