from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.moderation.filters import FilterError, OutputFilterSet, compile_filter


def test_words_match_whole_words_ignoring_case() -> None:
    filters = OutputFilterSet([compile_filter("darn", is_regex=False)])
    assert filters.first_hit("Well, DARN it") == "darn"
    assert filters.first_hit("darnation") is None


def test_regex_filters() -> None:
    filters = OutputFilterSet([compile_filter(r"\bfoo\d+", is_regex=True)])
    assert filters.first_hit("x foo12 y") == r"\bfoo\d+"
    assert not filters.first_hit("foo")


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("", "empty"),
        ("x" * 201, "at most 200"),
        ("(unclosed", "not a valid regular expression"),
        ("a*", "matches empty text"),
        (r"(a+)+$", "too slow"),
        (r"(x+x+)+y", "too slow"),
    ],
)
def test_bad_patterns_are_refused_with_reason(pattern: str, message: str) -> None:
    with pytest.raises(FilterError, match=message):
        compile_filter(pattern, is_regex=True)


def test_stored_bad_pattern_is_skipped_and_matching_is_bounded() -> None:
    filters = OutputFilterSet.from_rows([("(a+)+$", True), ("ok", False)])
    assert [f.pattern for f in filters.filters] == ["ok"]
    # A long input finishes (each search is bounded by the regex timeout) with an answer either way.
    assert filters.first_hit("a" * 100_000 + " ok") == "ok"


def test_one_check_is_bounded_by_a_budget_over_all_filters() -> None:
    ticks = itertools.count()
    filters = OutputFilterSet(
        [compile_filter(word, is_regex=False) for word in ("alpha", "beta", "gamma")],
        budget=2.5,
        clock=lambda: float(next(ticks)),  # each clock reading is a second later
    )
    # alpha is checked at t=1 and beta at t=2 (within 2.5 s); gamma's turn comes at t=3, past the budget: fail closed.
    assert filters.first_hit("nothing to see here") == "gamma"
    assert OutputFilterSet(filters.filters).first_hit("nothing to see here") is None


_WORDS = st.text(alphabet="abcXYZ", min_size=1, max_size=4)


@given(word=_WORDS, text=st.lists(st.one_of(_WORDS, st.sampled_from([" ", ", ", "-", "_", "!\n", "é"])), max_size=30))
def test_word_filters_match_exactly_the_whole_word_in_any_case(word: str, text: list[str]) -> None:
    joined = "".join(text)
    words = [w.casefold() for w in re.findall(r"\w+", joined)]
    hit = OutputFilterSet([compile_filter(word, is_regex=False)]).first_hit(joined)
    assert (hit is not None) == (word.casefold() in words)
