from __future__ import annotations

import pytest

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
