from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.chat.splitting import split_message


def test_short_text_is_one_part() -> None:
    assert split_message("  hello  ") == ["hello"]
    assert split_message("") == []


def test_prefers_paragraph_then_sentence_boundaries() -> None:
    para = "A" * 1200 + ".\n\n" + "B" * 1200 + "."
    assert split_message(para) == ["A" * 1200 + ".", "B" * 1200 + "."]
    sentences = ("She smiled. " * 200).strip()
    parts = split_message(sentences)
    assert all(len(p) <= 2000 for p in parts) and all(p.endswith(".") for p in parts)


def test_hard_cut_without_spaces() -> None:
    parts = split_message("x" * 4500)
    assert [len(p) for p in parts] == [2000, 2000, 500]


@settings(max_examples=200)
@given(st.text(alphabet=st.sampled_from("ab .!?\n"), max_size=6000), st.integers(min_value=10, max_value=2000))
def test_parts_fit_and_keep_all_words(text: str, limit: int) -> None:
    parts = split_message(text, limit)
    assert all(0 < len(p) <= limit for p in parts)
    assert "".join(parts).replace(" ", "").replace("\n", "") == text.replace(" ", "").replace("\n", "")
