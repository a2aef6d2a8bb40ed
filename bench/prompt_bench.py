"""Prompt-builder benchmark: prefix reuse over a simulated conversation, and build time per turn.

    PYTHONPATH=. python bench/prompt_bench.py [--turns 500] [--tokenizer path/to/tokenizer.json]

Prefix reuse is the mean share of each prompt's tokens that the previous prompt already had (what an engine's
prefix cache can skip), measured once the context is full. The persona is the real Seraphina card with its
lorebook; three people take turns (see tests/support/conversation.py). Build times are wall-clock per turn with a
300-message history, for the builder alone (the simulation's own work is not counted).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from bot.cards import card_to_persona_fields, parse_card
from bot.prompt import PersonaSpec, PromptBuilder
from bot.tokens import EstimatingTokenCounter, HFTokenCounter, TokenCounter
from tests.support.conversation import prefix_reuse
from tests.support.tokenizer import WordTokenizer

CARD = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "cards" / "default_Seraphina.png"
LORE_KEYS = ("forest", "magic", "beasts", "glade", "Eldoria", "power")


class _Timed(PromptBuilder):
    """A builder that records how long each build takes."""

    times: list[float]

    def build(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        try:
            return super().build(*args, **kwargs)
        finally:
            self.times.append(time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=500)
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--max-new", type=int, default=300)
    parser.add_argument("--tokenizer", type=Path, help="a tokenizer.json to time the builder with a real tokenizer")
    args = parser.parse_args()

    fields = card_to_persona_fields(parse_card(CARD.read_bytes(), CARD.name))
    persona = PersonaSpec.from_row({**fields, "id": 1})
    words = WordTokenizer()

    print(f"Prefix reuse, {args.turns} turns at {args.context} context ({args.max_new} for the reply), once full:")
    print(f"{'lorebook keys in':>18} {'trimmer':>8} {'reuse':>7} {'rebuilds':>9} {'prompt':>7} {'history':>8}")
    for key_rate in (0.0, 0.2):
        for label, trim, conversation, turns in (
            ("window", 0.5, "sim", args.turns),
            ("naive", 0.0, None, min(args.turns, 200)),
        ):
            builder = PromptBuilder(words, args.context, args.max_new, trim_fraction=trim)
            result = prefix_reuse(
                builder,
                persona,
                words.tokenize,
                turns=turns,
                lore_keys=LORE_KEYS,
                key_rate=key_rate,
                conversation=conversation,
            )
            print(
                f"{key_rate:>17.0%} {label:>8} {result.mean_share:>7.1%} {result.windows:>9} "
                f"{result.mean_prompt_tokens:>7.0f} {result.mean_history_tokens:>8.0f}"
            )

    counters: list[tuple[str, TokenCounter]] = [("estimate (3 chars/token)", EstimatingTokenCounter())]
    counters.append(("test word tokenizer", words))
    if args.tokenizer is not None:
        counters.append((f"tokenizer.json ({args.tokenizer.name})", HFTokenCounter(args.tokenizer)))
    print("\nBuild time per turn (window kept, 300-message history, lorebook keys in 20% of messages):")
    for name, counter in counters:
        timed = _Timed(counter, args.context, args.max_new)
        timed.times = []
        prefix_reuse(timed, persona, words.tokenize, turns=min(args.turns, 300), lore_keys=LORE_KEYS, key_rate=0.2)
        samples = sorted(timed.times[20:])
        print(
            f"  {name:<40} median {statistics.median(samples) * 1000:6.2f} ms   "
            f"p95 {samples[int(len(samples) * 0.95)] * 1000:6.2f} ms   max {samples[-1] * 1000:6.2f} ms"
        )


if __name__ == "__main__":
    main()
