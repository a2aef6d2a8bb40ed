"""Deterministic tokenizers for tests: no model files, exact and explainable counts.

:class:`WordTokenizer` counts words and single punctuation characters (whitespace is free), the way a real
tokenizer roughly does; it also returns the tokens so tests can compare prompt prefixes token by token.
:class:`GluedWordTokenizer` charges double for a word glued to a preceding non-space character, so a piece counted
on its own can need *more* tokens inside the whole prompt (as with SentencePiece's dummy prefix); budget tests use
it to prove the builder checks the whole prompt, not just the sum of its parts.
:class:`RecordingTokenizer` wraps another and records what it was asked to count.
"""

from __future__ import annotations

import re

from bot.tokens import TokenCounter

_TOKEN = re.compile(r"\w+|[^\w\s]")
_GLUED_WORD = re.compile(r"(?<=[^\w\s])\w+")


class WordTokenizer:
    def tokenize(self, text: str) -> list[str]:
        return _TOKEN.findall(text)

    def count_tokens(self, text: str) -> int:
        return len(_TOKEN.findall(text))


class GluedWordTokenizer(WordTokenizer):
    def count_tokens(self, text: str) -> int:
        return len(_TOKEN.findall(text)) + len(_GLUED_WORD.findall(text))


class RecordingTokenizer:
    def __init__(self, inner: TokenCounter | None = None) -> None:
        self.inner = inner or WordTokenizer()
        self.calls: list[str] = []

    def count_tokens(self, text: str) -> int:
        self.calls.append(text)
        return self.inner.count_tokens(text)
