"""Lorebook scanning: keys, case, whole words, selective logic, regex, recursion, budget and placement."""

from __future__ import annotations

from typing import Any

import pytest

from bot.prompt import PromptBuilder
from bot.prompt.lorebook import Lorebook, LorePosition, UnsafePattern, compile_key_pattern
from tests.prompt.helpers import human, persona_msg, seraphina
from tests.support.tokenizer import WordTokenizer


def fired(book: dict[str, Any], *messages: str) -> list[str]:
    return [m.entry.uid for m in Lorebook.from_dict(book).scan(list(messages))]


def entry(uid: int, **fields: Any) -> dict[str, Any]:
    return {"id": uid, "content": f"lore {uid}", "keys": ["key"], **fields}


def test_keys_case_and_disabled_entries() -> None:
    book = {
        "entries": [
            entry(1, keys=["Forest"]),
            entry(2, keys=["Forest"], case_sensitive=True),
            entry(3, keys=["forest"], enabled=False),
            entry(4, keys=["lake", "river"]),
        ]
    }
    assert fired(book, "Alice: into the FOREST") == ["1"]
    assert fired(book, "Alice: the Forest and the river") == ["1", "2", "4"]


def test_whole_words_and_substrings() -> None:
    book = {"entries": [entry(1, keys=["wood"]), entry(2, keys=["wood"], extensions={"match_whole_words": True})]}
    assert fired(book, "a woodland") == ["1"]
    assert fired(book, "the wood, at night") == ["1", "2"]


@pytest.mark.parametrize(
    ("logic", "text", "expected"),
    [
        (0, "dragon fire", True),  # AND ANY
        (0, "dragon", False),
        (1, "dragon fire ice", False),  # NOT ALL
        (1, "dragon fire", True),
        (2, "dragon fire", False),  # NOT ANY
        (2, "dragon", True),
        (3, "dragon fire ice", True),  # AND ALL
        (3, "dragon fire", False),
    ],
)
def test_selective_logic(logic: int, text: str, expected: bool) -> None:
    book = {
        "entries": [
            entry(
                1,
                keys=["dragon"],
                selective=True,
                secondary_keys=["fire", "ice"],
                extensions={"selectiveLogic": logic},
            )
        ]
    }
    assert (fired(book, text) == ["1"]) is expected


def test_selective_without_secondary_keys_needs_only_the_primary() -> None:
    assert fired({"entries": [entry(1, keys=["dragon"], selective=True)]}, "a dragon") == ["1"]


def test_constant_entries_and_scan_depth() -> None:
    book = {"scan_depth": 2, "entries": [entry(1, constant=True, keys=[]), entry(2, keys=["orc"])]}
    assert fired(book, "an orc", "hello", "there") == ["1"]
    assert fired(book, "hello", "an orc", "there") == ["1", "2"]
    per_entry = {"scan_depth": 1, "entries": [entry(2, keys=["orc"], extensions={"scan_depth": 3})]}
    assert fired(per_entry, "an orc", "hello", "there") == ["2"]


def test_regex_keys() -> None:
    book = {
        "entries": [
            entry(1, keys=["/drag(on|oness)/i"]),
            entry(2, keys=[r"\bor(c|k)s?\b"], use_regex=True),
            entry(3, keys=["/CASE/"]),
        ]
    }
    assert fired(book, "A DRAGONESS and orks") == ["1", "2"]
    assert fired(book, "case") == []
    assert fired(book, "CASE") == ["3"]


@pytest.mark.parametrize("pattern", ["(a+)+b", "(x*)*", "(?:ab+){2,}", r"(a)\1", "(unclosed", "a" * 600])
def test_unsafe_regexes_are_refused(pattern: str) -> None:
    with pytest.raises(UnsafePattern):
        compile_key_pattern(pattern, ignore_case=True)
    book = Lorebook.from_dict({"entries": [entry(1, keys=[pattern], use_regex=True)]})
    assert book.entries == ()  # its only key was refused
    assert book.problems and "key" in book.problems[0]


def test_recursive_scanning() -> None:
    entries = [
        entry(1, keys=["castle"], content="The castle belongs to the king."),
        entry(2, keys=["king"], content="The king is old."),
        entry(3, keys=["old"], content="Age is a theme.", extensions={"exclude_recursion": True}),
    ]
    assert fired({"entries": entries}, "the castle") == ["1"]
    assert fired({"entries": entries, "recursive_scanning": True}, "the castle") == ["1", "2"]


def test_positions() -> None:
    book = Lorebook.from_dict(
        {
            "entries": [
                entry(1, position="after_char"),
                entry(2, position="before_char", extensions={"position": 4, "depth": 2}),
                entry(3, extensions={"position": 1}),
                entry(4),
                entry(5, extensions={"position": 2}),
            ]
        }
    )
    got = {e.uid: (e.position, e.depth) for e in book.entries}
    assert got == {
        "1": (LorePosition.AFTER_CHAR, 0),
        "2": (LorePosition.AT_DEPTH, 2),
        "3": (LorePosition.AFTER_CHAR, 0),
        "4": (LorePosition.BEFORE_CHAR, 0),
        "5": (LorePosition.AT_DEPTH, 4),
    }


def test_malformed_entries_are_skipped() -> None:
    book = Lorebook.from_dict({"entries": ["nope", {"keys": "single", "content": "ok"}, {"keys": ["x"]}]})
    assert [e.uid for e in book.entries] == ["#1"]
    assert book.problems == ("entry 1 is not an object",)


def test_budget_keeps_the_most_important_entries() -> None:
    long_text = " ".join(["word"] * 60)
    book = {
        "token_budget": 130,
        "entries": [
            entry(1, keys=["a"], content="low " + long_text, priority=1),
            entry(2, keys=["a"], content="high " + long_text, priority=5),
            entry(3, keys=["a"], content="mid " + long_text, priority=3),
        ],
    }
    prompt = PromptBuilder(WordTokenizer(), 4096, 300).build(
        seraphina(lorebook=book), [human(1, "Alice", "a")], user_name="Alice"
    )
    assert {f.uid for f in prompt.lore_fired} == {"2", "3"}
    assert prompt.lore_dropped == ("a",)  # entry 1, named after its first key
    assert prompt.text.index("high word") < prompt.text.index("mid word")  # same insertion order: book order


def test_at_depth_entries_go_into_the_history() -> None:
    book = {"entries": [entry(1, keys=["storm"], content="A storm is coming.", extensions={"position": 4, "depth": 1})]}
    history = [human(1, "Alice", "A storm?"), persona_msg(2, "Yes."), human(3, "Bob", "Run!")]
    prompt = PromptBuilder(WordTokenizer(), 4096, 300).build(
        seraphina(lorebook=book), history, user_name="Bob", persona_id=1
    )
    assert prompt.text.endswith(
        "<|user|>Alice: A storm?<|model|>Seraphina: Yes.<|system|>A storm is coming."
        "<|user|>Bob: Run!<|model|>Seraphina:"
    )
    assert prompt.lore_fired[0].placement == "at depth 1"
