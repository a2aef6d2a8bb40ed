"""The engine interface every backend implements, and the types the queue and callers share.

An engine turns prompt text into a stream of text chunks. Engines know nothing about Discord, channels or
fairness: the :class:`~bot.generation.queue.GenerationQueue` decides what runs when.
"""

from __future__ import annotations

import abc
import math
from collections.abc import AsyncIterator, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

FinishReason = Literal["stop", "length", "eos", "cancelled", "error"]


class EngineError(Exception):
    """An engine failed a request. ``str(err)`` is safe to show an operator (no secrets, no traceback)."""


class EngineNotInstalled(EngineError):
    """The engine's optional dependency is missing; the message names the pip command."""


class EngineUnavailable(EngineError):
    """The engine (or every server behind it) cannot be reached right now."""


class EngineBroken(EngineError):
    """The engine is in a bad state and must be restarted before it can serve again."""


class EngineOutOfMemory(EngineError):
    """The backend ran out of (GPU) memory for this request; smaller prompts or fewer parallel streams may fit."""


class PromptTooLong(EngineError):
    """The prompt plus max_new_tokens does not fit the model's context."""

    def __init__(self, prompt_tokens: int, max_new_tokens: int, context: int) -> None:
        self.prompt_tokens, self.max_new_tokens, self.context = prompt_tokens, max_new_tokens, context
        super().__init__(
            f"the prompt is {prompt_tokens} tokens; with {max_new_tokens} new tokens it exceeds the "
            f"{context}-token context"
        )


class SamplerError(ValueError):
    """A sampler value out of range; the message names the field and the range."""


# (min, max) for each sampler field; None bounds are open.
SAMPLER_RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 5.0),
    "top_p": (0.0, 1.0),
    "top_k": (0, 1000),
    "min_p": (0.0, 1.0),
    "repetition_penalty": (1.0, 3.0),
    "max_new_tokens": (1, 4096),
}


@dataclass(frozen=True, slots=True)
class SamplerParams:
    """Sampling settings. Defaults suit Pygmalion-2 (community defaults: see README)."""

    temperature: float = 0.8
    top_p: float = 0.9
    top_k: int = 0  # 0 = off
    min_p: float = 0.05
    repetition_penalty: float = 1.1
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty"):
            value = getattr(self, name)
            low, high = SAMPLER_RANGES[name]
            if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
                raise SamplerError(f"{name} must be a number")
            if not low <= value <= high:
                raise SamplerError(f"{name} must be between {low:g} and {high:g} (got {value:g})")

    def with_overrides(self, overrides: Mapping[str, Any]) -> SamplerParams:
        """A copy with the known keys of ``overrides`` applied (unknown keys are ignored)."""
        names = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in overrides.items() if k in names and v is not None})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class GenerationRequest:
    prompt: str
    params: SamplerParams = field(default_factory=SamplerParams)
    stop: list[str] = field(default_factory=list)
    max_new_tokens: int = 300
    banned_strings: list[str] = field(default_factory=list)
    # The prompt's length by this engine's own count_tokens, when the caller already counted it (the prompt builder
    # does): engines that only count, not tokenize, skip counting a 4096-token prompt a second time.
    prompt_tokens: int | None = None


@dataclass(slots=True)
class GenerationResult:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int = 0
    completion_tokens: int = 0
    time_to_first_token: float | None = None  # seconds from start to the first chunk
    total_seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        if self.total_seconds <= 0 or not self.completion_tokens:
            return 0.0
        gen_time = self.total_seconds - (self.time_to_first_token or 0.0)
        return self.completion_tokens / gen_time if gen_time > 0 else 0.0


class GenerationStream(abc.ABC):
    """One running generation: iterate it for text chunks; ``result`` is set when iteration ends.

    ``cancel()`` stops it early (safe to call at any time, also after it finished); iteration then ends with
    finish_reason ``"cancelled"``.
    """

    result: GenerationResult | None = None

    @abc.abstractmethod
    def __aiter__(self) -> AsyncIterator[str]: ...

    @abc.abstractmethod
    async def cancel(self) -> None: ...


class Engine(abc.ABC):
    """A text-generation backend."""

    name: str = "engine"

    @property
    @abc.abstractmethod
    def capacity(self) -> int:
        """How many streams it runs at once (the queue's concurrency)."""

    @property
    @abc.abstractmethod
    def context_tokens(self) -> int:
        """The model's context length in tokens (prompt + reply)."""

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model or check the server; raise EngineError with a clear message when it cannot."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` by this engine's tokenizer (an estimate where it has none)."""

    @abc.abstractmethod
    def stream(self, request: GenerationRequest) -> GenerationStream:
        """Start a generation. Raises PromptTooLong before starting when the prompt cannot fit."""

    @property
    def broken(self) -> bool:
        """True when the engine needs a restart (the queue then calls close() and start())."""
        return False

    def check_fits(self, request: GenerationRequest) -> int:
        """Count the prompt (unless the request carries its count) and raise PromptTooLong if prompt +
        max_new_tokens exceeds the context."""
        tokens = request.prompt_tokens if request.prompt_tokens is not None else self.count_tokens(request.prompt)
        if tokens + request.max_new_tokens > self.context_tokens:
            raise PromptTooLong(tokens, request.max_new_tokens, self.context_tokens)
        return tokens
