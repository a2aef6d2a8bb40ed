"""A simulated multi-user role-play conversation, for the prefix-reuse measurement (test and benchmark).

Three people talk to one persona; each turn one or two of them write a line, the persona answers at length, and
now and then someone names a lorebook key. Text is drawn from a fixed vocabulary with a seeded RNG, so runs are
reproducible. :func:`prefix_reuse` builds every turn's prompt and measures how much of it the previous prompt
already had (the share of tokens an engine's prefix cache can reuse).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bot.prompt import ChatMessage, PersonaSpec, PromptBuilder
from bot.storage.models import MessageKind

_WORDS = (
    "the and you her his she he they was is not but with for that this have what who when where how said smiled "
    "looked walked light shadow voice hand eyes softly gently quiet warm cold night day morning river stone tree "
    "leaf wind fire water heart dream story world friend stranger traveller guardian rest safe here there yes no "
    "please thank welcome hello"
)
VOCABULARY = tuple(_WORDS.split())
USERS = ("Alice", "Bob", "Carol")
START = datetime(2024, 5, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class ReuseResult:
    mean_share: float  # mean over turns once the context was full
    turns_measured: int
    mean_history_tokens: float
    mean_prompt_tokens: float
    windows: int  # how many times the window was rebuilt after the context filled


def _sentence(rng: random.Random, low: int, high: int, keys: tuple[str, ...], key_rate: float) -> str:
    words = [rng.choice(VOCABULARY) for _ in range(rng.randint(low, high))]
    if keys and rng.random() < key_rate:
        words[rng.randrange(len(words))] = rng.choice(keys)
    return " ".join(words) + "."


def prefix_reuse(
    builder: PromptBuilder,
    persona: PersonaSpec,
    tokenize: Callable[[str], list[str]],
    *,
    turns: int = 500,
    lore_keys: tuple[str, ...] = (),
    key_rate: float = 0.2,
    conversation: Hashable | None = "sim",
    seed: int = 1,
    history_limit: int = 300,
) -> ReuseResult:
    """Run the conversation; ``conversation=None`` builds every prompt from scratch (no remembered window)."""
    rng = random.Random(seed)
    history: list[ChatMessage] = []
    next_id = 1

    def add(name: str, kind: MessageKind, text: str) -> None:
        nonlocal next_id
        persona_id = persona.id if kind is MessageKind.PERSONA else None
        author = 5000 if kind is MessageKind.PERSONA else 100 + USERS.index(name)
        created = START + timedelta(minutes=next_id)
        history.append(ChatMessage(next_id, author, name, kind, text, persona_id=persona_id, created_at=created))
        next_id += 1

    if persona.greeting:
        add(persona.name, MessageKind.PERSONA, persona.greeting)
    previous: list[str] | None = None
    full = False
    shares: list[float] = []
    history_tokens: list[int] = []
    prompt_tokens: list[int] = []
    windows = 0
    for _ in range(turns):
        for _ in range(rng.choice((1, 1, 2))):
            add(rng.choice(USERS), MessageKind.HUMAN, _sentence(rng, 5, 40, lore_keys, key_rate))
        prompt = builder.build(
            persona, history[-history_limit:], user_name=history[-1].author_name, conversation=conversation
        )
        tokens = tokenize(prompt.text)
        if prompt.messages_included < prompt.messages_available:
            full = True
        if previous is not None and full:
            common = 0
            for a, b in zip(previous, tokens, strict=False):
                if a != b:
                    break
                common += 1
            shares.append(common / len(tokens))
            history_tokens.append(prompt.breakdown.history)
            prompt_tokens.append(prompt.prompt_tokens)
            windows += not prompt.window_reused
        previous = tokens
        reply = " ".join(_sentence(rng, 8, 30, lore_keys, key_rate) for _ in range(rng.randint(2, 6)))
        add(persona.name, MessageKind.PERSONA, reply)
    count = max(1, len(shares))
    return ReuseResult(
        mean_share=sum(shares) / count,
        turns_measured=len(shares),
        mean_history_tokens=sum(history_tokens) / count,
        mean_prompt_tokens=sum(prompt_tokens) / count,
        windows=windows,
    )
