"""Token counting: the prompt builder needs counts, the engines provide them."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class TokenCounter(Protocol):
    def count_tokens(self, text: str) -> int:
        """How many tokens ``text`` encodes to (without BOS)."""
        ...


class EstimatingTokenCounter:
    """A conservative estimate for engines whose tokenizer we cannot load: about 3 characters per token.

    Llama-2's tokenizer averages about 3.5-4 characters per token on English prose; 3 errs on the side of a
    prompt that fits.
    """

    chars_per_token = 3.0

    def count_tokens(self, text: str) -> int:
        return math.ceil(len(text.encode("utf-8")) / self.chars_per_token) if text else 0


class HFTokenCounter:
    """Counts with a Hugging Face ``tokenizer.json`` (the `tokenizers` library)."""

    def __init__(self, path: Path) -> None:
        from tokenizers import Tokenizer

        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:
            raise ValueError(f"{path} is not a usable tokenizer.json: {exc}") from None

    def count_tokens(self, text: str) -> int:
        if not text:
            return 0
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)
