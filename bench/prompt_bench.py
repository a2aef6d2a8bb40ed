"""Prompt building: time per prompt in a 10,000-message channel, and prefix reuse beside a naive trimmer.

    PYTHONPATH=. python bench/prompt_bench.py [--messages 10000] [--turns 500] [--tokenizer tokenizer.json]
                                              [--json PATH]

Build time follows the bot's own path: the channel's 10,000 messages pass through the chat cog's in-memory history
(which keeps the newest 400 per channel), and each turn a new message arrives and the prompt for the reply is built
from that window for a 4096-token context (300 for the reply) with the conversation's window remembered, so token
counts are cached and only the new message and the whole-prompt check are counted. Times are per build (median and
p95 over the measured turns, after a warm-up), with three counters: the 3-characters-per-token estimate (the openai
engine without a tokenizer), llama.cpp's tokenizer on the tiny test model (what the llama.cpp engine calls), and a
``tokenizer.json`` when given. The final whole-prompt count is timed on its own too, since it is the counter's cost.

Prefix reuse is the mean share of each prompt's tokens that the previous prompt already had (what an engine's KV
cache can skip), over ``--turns`` turns of a three-person conversation with the real Seraphina card and its lorebook
once the context is full, for rpbot's windowed builder and for a naive trimmer in the same process: the same builder
with no remembered window and the oldest message dropped one at a time (trim_fraction 0), as most bots trim.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._results import write_json
from bot.cards import card_to_persona_fields, parse_card
from bot.chat.history import PER_CHANNEL, CachedMessage, HistoryCache
from bot.prompt import PersonaSpec, PromptBuilder
from bot.storage.models import MessageKind
from bot.tokens import EstimatingTokenCounter, HFTokenCounter, TokenCounter
from tests.support.conversation import USERS, VOCABULARY, prefix_reuse
from tests.support.tokenizer import WordTokenizer

CARD = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "cards" / "default_Seraphina.png"
LORE_KEYS = ("forest", "magic", "beasts", "glade", "Eldoria", "power")
CHANNEL = 4242
PERSONA_AUTHOR = 5000
WARM_UP_TURNS = 20


def seraphina() -> PersonaSpec:
    fields = card_to_persona_fields(parse_card(CARD.read_bytes(), CARD.name))
    return PersonaSpec.from_row({**fields, "id": 1})


class Chat:
    """A channel's messages, made up as the conversation simulation does (three people, a wordy persona)."""

    def __init__(self, persona: PersonaSpec, seed: int = 3) -> None:
        self.persona = persona
        self.rng = random.Random(seed)
        self.next_id = 1
        self.start = datetime(2024, 5, 1, tzinfo=UTC)

    def _sentence(self, low: int, high: int) -> str:
        words = [self.rng.choice(VOCABULARY) for _ in range(self.rng.randint(low, high))]
        if self.rng.random() < 0.2:
            words[self.rng.randrange(len(words))] = self.rng.choice(LORE_KEYS)
        return " ".join(words).capitalize() + "."

    def message(self, human: bool) -> CachedMessage:
        msg_id, self.next_id = self.next_id, self.next_id + 1
        when = self.start + timedelta(seconds=30 * msg_id)
        if human:
            name = self.rng.choice(USERS)
            return CachedMessage(
                msg_id, CHANNEL, 100 + USERS.index(name), name, MessageKind.HUMAN, None, self._sentence(5, 40), [], when
            )
        text = " ".join(self._sentence(8, 30) for _ in range(self.rng.randint(2, 5)))
        return CachedMessage(msg_id, CHANNEL, PERSONA_AUTHOR, self.persona.name, MessageKind.PERSONA, 1, text, [], when)


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def llama_counter(folder: Path) -> TokenCounter | None:
    """llama.cpp's own tokenizer on the tiny test model (None when llama-cpp-python is not installed)."""
    try:
        import llama_cpp
    except ImportError:
        return None
    from tests.support.tiny_model import make_tiny_gguf

    model = make_tiny_gguf(folder / "tiny.gguf")
    with quiet_stderr():  # llama.cpp warns that the tiny model has no training context length
        llm = llama_cpp.Llama(model_path=str(model), n_ctx=512, vocab_only=True, verbose=False)

    class LlamaCounter:
        def count_tokens(self, text: str) -> int:
            return len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)) if text else 0

    return LlamaCounter()


def build_times(counter: TokenCounter, persona: PersonaSpec, messages: int, turns: int) -> dict[str, Any]:
    """Per-build times in a channel of ``messages`` messages, through the bot's in-memory history."""
    chat = Chat(persona)
    history = HistoryCache()
    history.load(CHANNEL, [])
    for i in range(messages):
        history.add(chat.message(human=i % 3 != 2))
    builder = PromptBuilder(counter, 4096, 300)
    builds: list[float] = []
    counts: list[float] = []
    prompt_tokens: list[int] = []
    included: list[int] = []
    for turn in range(turns + WARM_UP_TURNS):
        trigger = chat.message(human=True)
        history.add(trigger)
        began = time.perf_counter()
        window = history.window(CHANNEL, limit=PER_CHANNEL)
        built = builder.build(persona, window, user_name=trigger.author_name, conversation=CHANNEL)
        took = time.perf_counter() - began
        began = time.perf_counter()
        counter.count_tokens(built.text)
        counted = time.perf_counter() - began
        history.add(chat.message(human=False))  # the persona's reply
        if turn >= WARM_UP_TURNS:
            builds.append(took * 1000)
            counts.append(counted * 1000)
            prompt_tokens.append(built.prompt_tokens)
            included.append(built.messages_included)
    builds.sort()
    return {
        "median_ms": round(statistics.median(builds), 3),
        "p95_ms": round(builds[int(len(builds) * 0.95)], 3),
        "max_ms": round(builds[-1], 3),
        "whole_prompt_count_median_ms": round(statistics.median(counts), 3),
        "prompt_tokens_mean": round(statistics.mean(prompt_tokens)),
        "messages_in_prompt_mean": round(statistics.mean(included), 1),
        "turns": turns,
    }


def reuse(persona: PersonaSpec, turns: int, key_rate: float) -> dict[str, Any]:
    words = WordTokenizer()
    out: dict[str, Any] = {"lorebook_key_rate": key_rate}
    for label, trim, conversation in (("rpbot", 0.5, "sim"), ("naive", 0.0, None)):
        builder = PromptBuilder(words, 4096, 300, trim_fraction=trim)
        began = time.perf_counter()
        result = prefix_reuse(
            builder,
            persona,
            words.tokenize,
            turns=turns,
            lore_keys=LORE_KEYS,
            key_rate=key_rate,
            conversation=conversation,
        )
        out[label] = {
            "mean_reuse": round(result.mean_share, 4),
            "turns_measured": result.turns_measured,
            "window_rebuilds": result.windows,
            "mean_prompt_tokens": round(result.mean_prompt_tokens),
            "mean_history_tokens": round(result.mean_history_tokens),
            "seconds": round(time.perf_counter() - began, 1),
        }
    return out


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    persona = seraphina()
    results: dict[str, Any] = {
        "settings": {"messages": args.messages, "turns": args.turns, "build_turns": args.build_turns},
        "build": {},
        "reuse": [],
    }
    with tempfile.TemporaryDirectory(prefix="rpbot-prompt-bench-") as tmp:
        counters: list[tuple[str, TokenCounter | None]] = [
            ("estimate (3 chars/token)", EstimatingTokenCounter()),
            ("llama.cpp tokenizer (tiny model)", llama_counter(Path(tmp))),
        ]
        if args.tokenizer is not None:
            counters.append((f"tokenizer.json ({args.tokenizer.name})", HFTokenCounter(args.tokenizer)))
        for name, counter in counters:
            if counter is None:
                log(f"  {name}: skipped (llama-cpp-python is not installed)")
                continue
            row = build_times(counter, persona, args.messages, args.build_turns)
            results["build"][name] = row
            log(
                f"  build, {name:<34} median {row['median_ms']:6.2f} ms  p95 {row['p95_ms']:6.2f} ms  "
                f"(whole-prompt count {row['whole_prompt_count_median_ms']:.2f} ms; "
                f"{row['prompt_tokens_mean']} tokens, {row['messages_in_prompt_mean']:.0f} messages)"
            )
    for key_rate in (0.0, 0.2):
        row = reuse(persona, args.turns, key_rate)
        results["reuse"].append(row)
        log(
            f"  prefix reuse, lorebook keys in {key_rate:.0%} of messages: rpbot {row['rpbot']['mean_reuse']:.1%} "
            f"({row['rpbot']['window_rebuilds']} rebuilds), naive trimmer {row['naive']['mean_reuse']:.1%} "
            f"({row['naive']['window_rebuilds']} rebuilds), {row['rpbot']['turns_measured']} turns measured"
        )
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000, help="messages in the channel (default 10000)")
    parser.add_argument("--build-turns", type=int, default=300, help="measured builds per counter (default 300)")
    parser.add_argument("--turns", type=int, default=500, help="conversation turns for prefix reuse (default 500)")
    parser.add_argument("--tokenizer", type=Path, help="a tokenizer.json to time the builder with")
    parser.add_argument("--json", type=Path, help="write the results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = run(args)
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
