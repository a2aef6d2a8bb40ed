"""How much of each prompt an engine's prefix cache can reuse, over a simulated 500-turn conversation.

Run with ``-s`` to see the figures. The persona is the real Seraphina card, lorebook included; three people
take turns at 4096 tokens of context (300 for the reply). A naive trimmer (one message dropped per turn, prompt
rebuilt every time) is measured alongside to show what the stable window buys.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.cards import card_to_persona_fields, parse_card
from bot.prompt import PersonaSpec, PromptBuilder
from tests.support.conversation import prefix_reuse
from tests.support.tokenizer import WordTokenizer

CARD = Path(__file__).parent.parent / "fixtures" / "cards" / "default_Seraphina.png"
LORE_KEYS = ("forest", "magic", "beasts", "glade", "Eldoria", "power")


@pytest.fixture(scope="module")
def seraphina_card() -> PersonaSpec:
    fields = card_to_persona_fields(parse_card(CARD.read_bytes(), CARD.name))
    return PersonaSpec.from_row({**fields, "id": 1})


def test_prefix_reuse_over_500_turns(seraphina_card: PersonaSpec) -> None:
    tokenizer = WordTokenizer()
    ours = prefix_reuse(
        PromptBuilder(tokenizer, 4096, 300), seraphina_card, tokenizer.tokenize, turns=500, lore_keys=LORE_KEYS
    )
    naive = prefix_reuse(
        PromptBuilder(tokenizer, 4096, 300, trim_fraction=0.0),
        seraphina_card,
        tokenizer.tokenize,
        turns=150,
        lore_keys=LORE_KEYS,
        conversation=None,
    )
    print(
        f"\nprefix reuse at 4096 context, once full: {ours.mean_share:.1%} over {ours.turns_measured} turns "
        f"({ours.windows} window rebuilds, mean prompt {ours.mean_prompt_tokens:.0f} tokens, "
        f"history {ours.mean_history_tokens:.0f}); naive trimmer: {naive.mean_share:.1%}"
    )
    assert ours.turns_measured > 400
    assert ours.mean_share >= 0.89
    assert naive.mean_share <= 0.2
