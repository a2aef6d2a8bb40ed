"""Golden prompts: representative conversations and the exact text the model sees."""

from __future__ import annotations

import pytest

from bot.prompt import Mentions, PromptBuilder
from tests.prompt.helpers import bot_msg, human, persona_msg, seraphina
from tests.support.tokenizer import WordTokenizer

SYSTEM_ALICE = (
    "<|system|>Enter RP mode. Pretend to be Seraphina whose persona follows:\n"
    "A gentle forest guardian with pink hair.\n"
    "Seraphina's personality: caring, protective\n"
    "Scenario: Alice wakes up in her glade.\n"
    "\n"
    "You shall reply to the user while staying in character, and generate long responses."
)


@pytest.fixture
def builder() -> PromptBuilder:
    return PromptBuilder(WordTokenizer(), 4096, 300)


def test_one_user(builder: PromptBuilder) -> None:
    history = [persona_msg(1, "*She smiles.* You're awake."), human(2, "Alice", "Where am I?")]
    prompt = builder.build(seraphina(), history, user_name="Alice")
    assert prompt.text == (
        SYSTEM_ALICE + "<|model|>Seraphina: *She smiles.* You're awake.<|user|>Alice: Where am I?<|model|>Seraphina:"
    )
    assert prompt.stop == ["<|user|>", "<|model|>", "<|system|>", "</s>", "\nAlice:"]
    assert prompt.prime == "Seraphina:"
    assert prompt.message_ids == (1, 2)
    assert prompt.prompt_tokens == WordTokenizer().count_tokens(prompt.text)
    assert prompt.text == "".join(turn.text for turn in prompt.turns)


def test_several_users_share_one_user_turn_with_names(builder: PromptBuilder) -> None:
    history = [
        persona_msg(1, "Welcome, travellers."),
        human(2, "Alice", "Hi!"),
        human(3, "Bob", "Hello <@101>."),
        human(4, "Alice", "Who are you?"),
    ]
    prompt = builder.build(seraphina(), history, user_name="Alice", mentions=Mentions(users={101: "Alice", 102: "Bob"}))
    assert prompt.text == (
        SYSTEM_ALICE + "<|model|>Seraphina: Welcome, travellers."
        "<|user|>Alice: Hi!\nBob: Hello @Alice.\nAlice: Who are you?<|model|>Seraphina:"
    )
    assert prompt.stop[4:] == ["\nAlice:", "\nBob:"]
    assert prompt.participants == ("Alice", "Bob")


def test_persona_with_another_bot_and_another_persona(builder: PromptBuilder) -> None:
    history = [
        human(1, "Alice", "Roll for me"),
        bot_msg(2, "Dice Bot", "Alice rolled 17."),
        persona_msg(3, "A strong roll!"),
        persona_msg(4, "I am Lilith.", persona_id=2, name="Lilith"),
        human(5, "Alice", "Nice."),
    ]
    prompt = builder.build(seraphina(), history, user_name="Alice", persona_id=1)
    assert prompt.text == (
        SYSTEM_ALICE + "<|user|>Alice: Roll for me\nDice Bot: Alice rolled 17.<|model|>Seraphina: A strong roll!"
        "<|user|>Lilith: I am Lilith.\nAlice: Nice.<|model|>Seraphina:"
    )
    assert prompt.stop[4:] == ["\nAlice:", "\nLilith:", "\nDice Bot:"]


def test_examples_system_prompt_original_and_post_history(builder: PromptBuilder) -> None:
    persona = seraphina(
        example_dialogue=(
            "<START>\n{{user}}: Who are you?\n{{char}}: *She bows.* The guardian of this glade.\n"
            "<START>\n{{user}}: Are you human?\n<BOT>: Not quite."
        ),
        system_prompt="{{original}} Write in third person.",
        post_history_instructions="Stay in character as {{char}}.",
    )
    prompt = builder.build(persona, [human(1, "Alice", "Hello?")], user_name="Alice")
    assert prompt.text == (
        SYSTEM_ALICE + " Write in third person."
        "<|user|>Alice: Who are you?<|model|>Seraphina: *She bows.* The guardian of this glade."
        "<|user|>Alice: Are you human?<|model|>Seraphina: Not quite."
        "<|user|>Alice: Hello?<|system|>Stay in character as Seraphina.<|model|>Seraphina:"
    )
    assert prompt.examples_included == 2
    assert prompt.breakdown.examples > 0 and prompt.breakdown.post_history > 0


BOOK = {
    "name": "Eldoria",
    "entries": [
        {"id": 1, "keys": ["forest"], "content": "Eldoria is an enchanted forest.", "insertion_order": 10},
        {"id": 2, "keys": ["shadowfang"], "content": "Shadowfangs are corrupted beasts.", "position": "after_char"},
        {"id": 3, "keys": ["lake"], "content": "The lake turned bitter.", "insertion_order": 5},
        {"id": 4, "constant": True, "content": "Magic is fading.", "position": "after_char", "insertion_order": 1},
    ],
}


def test_lorebook_hits_by_position_and_order(builder: PromptBuilder) -> None:
    history = [
        human(1, "Alice", "What is this forest?"),
        persona_msg(2, "Eldoria."),
        human(3, "Bob", "Beware the SHADOWFANG!"),
    ]
    prompt = builder.build(seraphina(lorebook=BOOK), history, user_name="Bob")
    assert prompt.text == (
        "<|system|>Enter RP mode. Pretend to be Seraphina whose persona follows:\n"
        "Eldoria is an enchanted forest.\n"
        "A gentle forest guardian with pink hair.\n"
        "Seraphina's personality: caring, protective\n"
        "Scenario: Bob wakes up in her glade.\n"
        "Magic is fading.\n"
        "Shadowfangs are corrupted beasts.\n"
        "\n"
        "You shall reply to the user while staying in character, and generate long responses."
        "<|user|>Alice: What is this forest?<|model|>Seraphina: Eldoria.<|user|>Bob: Beware the SHADOWFANG!"
        "<|model|>Seraphina:"
    )
    fired = {entry.uid: (entry.placement, entry.reason) for entry in prompt.lore_fired}
    assert fired == {
        "1": ("before_char", "key 'forest'"),
        "2": ("after_char", "key 'shadowfang'"),
        "4": ("after_char", "constant"),
    }
    assert prompt.breakdown.lore > 0


def test_reset_scene_starts_from_the_new_greeting(builder: PromptBuilder) -> None:
    old = [human(1, "Alice", "An old scene."), persona_msg(2, "Old reply.")]
    builder.build(seraphina(), old, user_name="Alice", conversation=42)
    # After /chat reset the cog passes only messages after the scene start: the greeting it re-sent and onwards.
    scene = [persona_msg(10, "*You wake with a start.* Ah, you're awake."), human(11, "Carol", "Thanks.")]
    prompt = builder.build(seraphina(), scene, user_name="Carol", conversation=42)
    assert prompt.text == (
        SYSTEM_ALICE.replace("Scenario: Alice", "Scenario: Carol")
        + "<|model|>Seraphina: *You wake with a start.* Ah, you're awake.<|user|>Carol: Thanks.<|model|>Seraphina:"
    )
    assert not prompt.window_reused


def test_budget_overflow_keeps_the_newest_messages() -> None:
    builder = PromptBuilder(WordTokenizer(), 160, 40)
    history = [human(i, "Alice" if i % 2 else "Bob", f"message number {i} with some words") for i in range(1, 30)]
    prompt = builder.build(seraphina(), history, user_name="Alice")
    assert prompt.text == (
        SYSTEM_ALICE + "<|user|>Alice: message number 25 with some words\nBob: message number 26 with some words\n"
        "Alice: message number 27 with some words\nBob: message number 28 with some words\n"
        "Alice: message number 29 with some words<|model|>Seraphina:"
    )
    assert prompt.prompt_tokens <= prompt.budget == 120
    assert prompt.messages_included == 5 and prompt.messages_available == 29


def test_budget_overflow_cuts_a_huge_newest_message() -> None:
    builder = PromptBuilder(WordTokenizer(), 160, 40)
    prompt = builder.build(seraphina(), [human(1, "Alice", "hi"), human(2, "Bob", "word " * 300)], user_name="Bob")
    assert prompt.text == (
        SYSTEM_ALICE.replace("Scenario: Alice", "Scenario: Bob")
        + "<|user|>Bob: "
        + " ".join(["word"] * 35)
        + " [… message cut]<|model|>Seraphina:"
    )
    assert prompt.newest_cut and prompt.prompt_tokens <= 120


def test_continue_ends_inside_the_partial_reply(builder: PromptBuilder) -> None:
    history = [human(1, "Alice", "Tell me a story."), persona_msg(2, "Once upon a time, there was")]
    prompt = builder.build(seraphina(), history, user_name="Alice", continue_text="Once upon a time, there was")
    assert prompt.text == (
        SYSTEM_ALICE + "<|user|>Alice: Tell me a story.<|model|>Seraphina: Once upon a time, there was"
    )
    assert prompt.continuing and prompt.prime is None
    assert prompt.message_ids == (1,)  # the partial reply is not shown twice
