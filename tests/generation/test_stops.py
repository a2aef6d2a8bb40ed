from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bot.generation.stops import StopMatcher

ALPHABET = "ab<|>\n "


def expected(text: str, stops: list[str]) -> tuple[str, bool]:
    hits = [text.find(s) for s in stops if s and s in text]
    return (text[: min(hits)], True) if hits else (text, False)


def run(chunks: list[str], stops: list[str]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    out = []
    for chunk in chunks:
        out.append(matcher.feed(chunk))
        if matcher.stopped:
            break
    out.append(matcher.flush())
    return "".join(out), matcher.stopped


@given(
    st.lists(st.text(ALPHABET, max_size=6), max_size=12),
    st.lists(st.text(ALPHABET, min_size=0, max_size=4), max_size=4),
)
def test_any_chunking_gives_the_text_before_the_first_stop(chunks: list[str], stops: list[str]) -> None:
    assert run(chunks, stops) == expected("".join(chunks), stops)


@given(st.text(ALPHABET, max_size=30), st.lists(st.text(ALPHABET, min_size=1, max_size=4), min_size=1, max_size=3))
def test_nothing_that_could_start_a_stop_is_shown_early(text: str, stops: list[str]) -> None:
    # Character by character, what was shown so far never contains a stop string.
    matcher = StopMatcher(stops)
    shown = ""
    for char in text:
        shown += matcher.feed(char)
        assert not any(stop in shown for stop in stops)


def test_a_stop_string_split_across_chunks() -> None:
    matcher = StopMatcher(["<|user|>"])
    assert matcher.feed("Hello there.\n<|u") == "Hello there.\n"
    assert matcher.feed("ser|>Alice: hi") == ""
    assert matcher.stopped and matcher.matched == "<|user|>"
    assert matcher.flush() == ""


def test_held_text_that_was_not_a_stop_comes_out() -> None:
    matcher = StopMatcher(["<|user|>"])
    assert matcher.feed("a <|us") == "a "
    assert matcher.feed("e") == ""
    assert matcher.feed("x <") == "<|usex "
    assert matcher.flush() == "<"
    assert not matcher.stopped


def test_earliest_stop_wins() -> None:
    matcher = StopMatcher(["\nBob:", "\n"])
    assert matcher.feed("hi\nBob: yo") == "hi"
    assert matcher.matched in ("\n", "\nBob:")


def test_no_stops_passes_everything() -> None:
    matcher = StopMatcher(["", ""])
    assert matcher.feed("abc") == "abc"
    assert matcher.flush() == ""
