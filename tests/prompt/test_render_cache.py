"""The builder caches rendered messages between builds: a warm builder must build exactly what a fresh one does,
whatever happened to the history in between (edits in place, renames, persona changes, markup, attachments)."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.prompt import ChatMessage, PromptBuilder
from bot.storage.models import MessageKind
from tests.prompt.helpers import BASE_TIME, human, persona_msg, seraphina
from tests.support.tokenizer import WordTokenizer

NAMES = ("Alice", "Bob", "Carol")
TEXTS = ("hello there", "// brb", "((ooc))", "look <@101>", "the forest", "", "again", "<|user|>sneaky")

add = st.tuples(st.just("add"), st.sampled_from(("human", "persona", "other")), st.integers(0, 2), st.integers(0, 7))
edit = st.tuples(st.just("edit"), st.integers(0, 30), st.integers(0, 7), st.booleans())
rename = st.tuples(st.just("rename"), st.integers(0, 2), st.sampled_from(("Ally", "Bobby", "Alice", "")))
swap = st.tuples(st.just("persona"), st.sampled_from(("Seraphina", "Sera")), st.booleans())


def _fresh_equal(warm: PromptBuilder, persona, history, mentions) -> None:  # type: ignore[no-untyped-def]
    cold = PromptBuilder(WordTokenizer(), 1024, 128)
    got = warm.build(persona, history, user_name="Alice", mentions=mentions)
    want = cold.build(persona, history, user_name="Alice", mentions=mentions)
    assert got.text == want.text
    assert got.message_ids == want.message_ids
    assert got.prompt_tokens == want.prompt_tokens and got.breakdown == want.breakdown


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(add, edit, rename, swap), min_size=1, max_size=25))
def test_a_warm_builder_builds_what_a_fresh_one_does(ops: list[tuple]) -> None:  # type: ignore[type-arg]
    warm = PromptBuilder(WordTokenizer(), 1024, 128)
    persona = seraphina()
    users: dict[int, str] = {}
    history: list[ChatMessage] = []
    for op in ops:
        if op[0] == "add":
            _, who, name, text = op
            msg_id = len(history) + 1
            if who == "human":
                message = human(msg_id, NAMES[name], TEXTS[text])
                if text == 4:
                    message.attachments = [{"kind": "image", "name": "cat.png"}]
            elif who == "persona":
                message = persona_msg(msg_id, TEXTS[text] or "…")
            else:  # another persona, or a message stored under the persona's name without its id
                message = persona_msg(msg_id, TEXTS[text], persona_id=2, name="Aria")
            history.append(message)
        elif op[0] == "edit" and history:
            # The chat cog's history cache edits its message objects in place.
            _, index, text, stamp = op
            message = history[index % len(history)]
            message.content = TEXTS[text]
            if stamp:
                message.edited_at = BASE_TIME + timedelta(days=1, minutes=index)
        elif op[0] == "rename":
            _, name, new = op
            users[101 + name] = new
        elif op[0] == "persona":
            _, name, nickname = op
            persona = replace(persona, name=name, nickname="Sera-chan" if nickname else None)
        _fresh_equal(warm, persona, list(history), {"users": dict(users)})


def test_an_edit_in_place_shows_the_new_text() -> None:
    builder = PromptBuilder(WordTokenizer(), 1024, 128)
    message = human(1, "Alice", "the old words")
    first = builder.build(seraphina(), [message], user_name="Alice")
    message.content = "the new words"  # same object, same id, no edit stamp
    second = builder.build(seraphina(), [message], user_name="Alice")
    assert "old words" in first.text and "new words" in second.text and "old words" not in second.text


def test_a_renamed_user_shows_under_the_new_name() -> None:
    builder = PromptBuilder(WordTokenizer(), 1024, 128)
    history = [human(1, "Alice", "hello"), ChatMessage(2, 5001, "Seraphina", MessageKind.PERSONA, "hi", 1)]
    builder.build(seraphina(), history, user_name="Alice")
    renamed = builder.build(seraphina(), history, user_name="Alice", mentions={"users": {101: "Ally"}})
    assert "Ally: hello" in renamed.text and "Alice: hello" not in renamed.text
