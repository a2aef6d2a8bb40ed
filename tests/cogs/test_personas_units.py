"""Properties of the small helpers behind /persona and /chat: names become safe file names, and the context
inspector's embed always fits Discord's limits without its code block being closed early."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.prompt import BuiltPrompt, FiredEntry, Role, TokenBreakdown, Turn
from cogs.chat_settings import context_embed
from cogs.personas import _filename, _short

SAFE = re.compile(r"[\w-]{1,60}")


@given(st.text(max_size=200))
def test_export_file_names_are_safe_and_never_empty(name: str) -> None:
    safe = _filename(name)
    assert SAFE.fullmatch(safe) and "/" not in safe and ".." not in safe


@given(st.text(max_size=3000), st.integers(min_value=2, max_value=2000))
def test_short_respects_its_limit(text: str, limit: int) -> None:
    short = _short(text, limit)
    assert len(short) <= limit
    assert short == text.strip() or short.endswith("…")


def built(text: str, fired: list[FiredEntry], dropped: list[str]) -> BuiltPrompt:
    return BuiltPrompt(
        text=text,
        stop=[],
        prompt_tokens=len(text),
        budget=3796,
        breakdown=TokenBreakdown(system=1, lore=2, examples=3, history=4, post_history=5, reply=6),
        turns=(Turn(Role.SYSTEM, text, "system"),),
        message_ids=(1, 2),
        messages_available=3,
        lore_fired=tuple(fired),
        lore_dropped=tuple(dropped),
        lore_problems=(),
        prime=None,
        continuing=False,
        participants=(),
        examples_included=0,
        newest_cut=True,
        window_reused=False,
    )


entries = st.builds(
    FiredEntry,
    uid=st.text(min_size=1, max_size=20),
    name=st.text(max_size=100),
    reason=st.text(max_size=100),
    placement=st.sampled_from(["before_char", "after_char", "at depth 4"]),
    tokens=st.integers(0, 5000),
)


prompts = st.text(max_size=1500) | st.text(alphabet="`x", max_size=1500)  # backtick runs are the tricky part


@settings(max_examples=60)
@given(prompts, st.lists(entries, max_size=40), st.lists(st.text(max_size=50), max_size=20))
def test_the_context_embed_fits_discord(text: str, fired: list[FiredEntry], dropped: list[str]) -> None:
    embed = context_embed("Seraphina", built(text, fired, dropped), 4096, 300).to_dict()
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert all(0 < len(value) <= 1024 for value in fields.values())
    total = len(embed["title"]) + sum(len(f["name"]) + len(f["value"]) for f in embed["fields"])
    assert total <= 6000
    end = fields["End of the prompt"]
    assert end.startswith("```\n") and end.endswith("\n```") and "```" not in end[4:-4]
    assert fields["By part"].splitlines() == [
        "system: 1",
        "lore: 2",
        "examples: 3",
        "history: 4",
        "post_history: 5",
        "reply: 6",
    ]
    assert fields["Messages"] == "2 of 3 in this scene fit (the newest was cut)"
