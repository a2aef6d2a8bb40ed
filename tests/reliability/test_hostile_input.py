"""Hostile input to the parts that read what strangers send: the card importer, the prompt builder and the output
filters. Every input gets a clear error or a safe result, in bounded time and memory.

Existing coverage this extends (not repeated here): tests/cards/test_cards.py (22 malformed files with their
error codes, random bytes, damaged PNG cards, a 60000×60000 avatar, a zTXt bomb), tests/prompt/test_sanitize.py and
test_builder.py (role-marker variants, the prompt's marker and budget properties), tests/prompt/test_normalize.py (a
huge message is cut), tests/prompt/test_lorebook.py (unsafe lorebook regexes), tests/moderation/test_filters.py
(catastrophic filter patterns refused, a stored one skipped).
"""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.cards import CardError, card_to_persona_fields, parse_card
from bot.cards.limits import MAX_CARD_JSON_BYTES, MAX_CHARX_ENTRIES, MAX_PNG_CHUNKS
from bot.cards.png import Chunk, encode_png, text_chunk
from bot.moderation.filters import FilterError, OutputFilterSet, compile_filter
from bot.prompt import ChatMessage, PersonaSpec, PromptBuilder
from bot.prompt.normalize import MAX_MESSAGE_CHARS
from bot.prompt.sanitize import count_markers
from bot.storage.models import MessageKind
from tests.prompt.helpers import BASE_TIME, human, seraphina
from tests.support.tokenizer import WordTokenizer

HANG_GUARD = 60.0  # seconds: far beyond any honest run; only a hang (or a runaway loop) reaches it
MiB = 1024 * 1024


def bounded(fn: Callable[[], Any], *, trace: bool = False) -> tuple[Any, float, int]:
    """Run ``fn`` in a thread under the hang guard; returns (result or exception, seconds, peak Python heap bytes).

    With ``trace`` the heap peak comes from tracemalloc (Python objects; Pillow's pixel buffers are C memory and not
    in it), which also makes the run a few times slower; without it the peak is 0."""
    box: list[Any] = []

    def run() -> None:
        if trace:
            tracemalloc.start()
        began = time.perf_counter()
        try:
            box.append(fn())
        except Exception as exc:
            box.append(exc)
        box.append(time.perf_counter() - began)
        box.append(tracemalloc.get_traced_memory()[1] if trace else 0)
        if trace:
            tracemalloc.stop()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(HANG_GUARD)
    assert not worker.is_alive(), f"still running after {HANG_GUARD:g}s"
    return box[0], box[1], box[2]


def v2(**data: Any) -> dict[str, Any]:
    return {"spec": "chara_card_v2", "spec_version": "2.0", "data": {"name": "Nova", "description": "d", **data}}


def charx(files: dict[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return out.getvalue()


def png(chunks: list[Chunk], size: tuple[int, int] = (1, 1)) -> bytes:
    """A PNG whose header claims ``size``; the pixel data is real only for small images (a bomb's header is the
    point: an honest one would take gigabytes to write)."""
    ihdr = Chunk(b"IHDR", struct.pack(">IIBBBBB", size[0], size[1], 8, 2, 0, 0, 0))
    rows = size[1] if size[0] * size[1] <= 1_000_000 else 1
    idat = Chunk(b"IDAT", zlib.compress(b"\0" * (1 + 3 * size[0]) * rows, 9))
    return encode_png([ihdr, *chunks, idat, Chunk(b"IEND", b"")])


def _zip_bomb() -> bytes:
    # 200 MiB of spaces in card.json compress to about 200 KB.
    return charx({"card.json": b" " * (200 * MiB)})


def _lying_zip() -> bytes:
    """card.json's header says 100 bytes; it unpacks to 40 MiB."""
    data = bytearray(charx({"card.json": b"[" + b" " * (40 * MiB) + b"]"}))
    for sig, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # local header, central directory
        at = data.index(sig)
        data[at + offset : at + offset + 4] = struct.pack("<I", 100)
    return bytes(data)


def _icon_bomb() -> bytes:
    """A CHARX whose avatar is a 30000×30000 PNG (zeros compress to almost nothing)."""
    card = v2(assets=[{"type": "icon", "uri": "embeded://assets/icon.png", "name": "main", "ext": "png"}])
    return charx({"card.json": json.dumps(card).encode(), "assets/icon.png": png([], size=(30000, 30000))})


def _many_entries() -> bytes:
    return charx({f"x/{i}": b"" for i in range(MAX_CHARX_ENTRIES + 1)} | {"card.json": json.dumps(v2()).encode()})


def _many_chunks() -> bytes:
    return png([Chunk(b"tEXt", b"k\0v")] * (MAX_PNG_CHUNKS + 1))


def _deep_object() -> bytes:
    return b'{"a":' * 200_000 + b"1" + b"}" * 200_000


def _deep_in_png() -> bytes:
    return png([text_chunk("chara", base64.b64encode(b"[" * 5000 + b"]" * 5000).decode())])


def _long_number() -> bytes:
    return b'{"spec":"chara_card_v2","data":{"n":' + b"9" * 5000 + b"}}"


def _over_limit() -> bytes:
    return json.dumps(v2(x="y" * MAX_CARD_JSON_BYTES)).encode()


def _many_keys() -> bytes:
    return json.dumps(v2(extensions={str(i): i for i in range(300_000)})).encode()


def _unstorable() -> bytes:
    return json.dumps(v2(name="N\x00ova\ud800", description="a\udfff\x00b")).encode()


CORPUS: list[tuple[str, Callable[[], bytes], str, str | None]] = [
    # (label, file, filename, error code or None when it imports)
    ("zip bomb", _zip_bomb, "bomb.charx", "too_large"),
    ("zip entry whose header lies about its size", _lying_zip, "liar.charx", "bad_zip"),
    ("charx with too many entries", _many_entries, "many.charx", "too_large"),
    ("charx avatar decompression bomb", _icon_bomb, "icon.charx", None),
    ("png with too many chunks", _many_chunks, "chunks.png", "bad_png"),
    ("deep JSON object", _deep_object, "deep.json", "not_json"),
    ("deep JSON in a PNG", _deep_in_png, "deep.png", "not_json"),
    ("a 5000-digit number", _long_number, "num.json", "not_json"),
    ("card JSON over the size limit", _over_limit, "big.json", "too_large"),
    ("300,000 extension keys", _many_keys, "keys.json", None),
    ("lone surrogates and NUL", _unstorable, "u.json", None),
]


@pytest.mark.parametrize(("label", "make", "filename", "code"), CORPUS, ids=[c[0] for c in CORPUS])
def test_hostile_card_files(label: str, make: Callable[[], bytes], filename: str, code: str | None) -> None:
    data = make()
    result, seconds, peak = bounded(lambda: card_to_persona_fields(parse_card(data, filename)), trace=True)
    print(f"{label}: {len(data):,} bytes in, {seconds:.2f}s, Python heap peak {peak / MiB:.1f} MiB")
    if code is None:
        assert isinstance(result, dict), result
        if "avatar" in label:
            assert result.get("avatar") is None  # the card is imported, the bomb left out
        # Whatever the file held, the persona's text can be stored anywhere and sent to Discord.
        for value in result.values():
            if isinstance(value, str):
                assert "\x00" not in value and not regex.search(r"[\ud800-\udfff]", value)
                value.encode("utf-8")
    else:
        assert isinstance(result, CardError), f"{label}: expected a CardError, got {result!r}"
        assert result.code == code and str(result).startswith(f"{filename}: ")
    # Memory: the importer never holds much more than the file and the 5 MiB of card JSON it accepts.
    assert peak < len(data) + 8 * MAX_CARD_JSON_BYTES + 64 * MiB


LARGEST_ACCEPTED = """
import resource, sys
from pathlib import Path
from bot.cards import parse_card
data = Path(sys.argv[1]).read_bytes()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
imported = parse_card(data, "big.png")
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(imported.avatar is not None, (after - before) // 1024)
"""


def _black_png(side: int, extra: list[Chunk]) -> bytes:
    """A real ``side``×``side`` RGB PNG, compressed row by row (never held whole in memory)."""
    squeeze = zlib.compressobj(9)
    row = b"\0" * (1 + 3 * side)
    idat = b"".join(squeeze.compress(row) for _ in range(side)) + squeeze.flush()
    ihdr = Chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
    return encode_png([ihdr, *extra, Chunk(b"IDAT", idat), Chunk(b"IEND", b"")])


def test_the_largest_image_a_card_may_carry_costs_bounded_memory(tmp_path: Path) -> None:
    """Just under the 40-megapixel limit (6300×6300, about 120 KB of PNG): decoded once to scale it down, in a
    process of its own so its C memory (Pillow's pixels) can be measured."""
    path = tmp_path / "big.png"
    path.write_bytes(_black_png(6300, [text_chunk("chara", base64.b64encode(json.dumps(v2()).encode()).decode())]))
    done = subprocess.run(
        [sys.executable, "-c", LARGEST_ACCEPTED, str(path)],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    has_avatar, grew_mib = done.stdout.split()
    print(f"6300x6300 card image: {path.stat().st_size:,} bytes, peak memory +{grew_mib} MiB while importing")
    assert has_avatar == "True"
    assert int(grew_mib) < 6300 * 6300 * 4 * 2 // MiB  # at most two RGBA copies of the image: about 300 MiB


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
card_keys = st.sampled_from(
    ["name", "description", "first_mes", "alternate_greetings", "tags", "character_book", "extensions", "mes_example",
     "creator_notes", "system_prompt", "post_history_instructions", "nickname", "assets", "group_only_greetings"]
)  # fmt: skip


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spec=st.sampled_from(["chara_card_v2", "chara_card_v3", None]),
    data=st.dictionaries(card_keys, json_values, max_size=8),
    book=st.one_of(st.none(), st.dictionaries(st.sampled_from(["entries", "name", "scan_depth"]), json_values)),
)
def test_any_json_shape_gets_a_card_or_a_card_error(spec: str | None, data: dict[str, Any], book: Any) -> None:
    """Structured fuzzing: every field of a card holding any JSON value. The importer either reads a card whose
    fields have the types the rest of the bot expects, or explains what is wrong; nothing else escapes."""
    if book is not None:
        data["character_book"] = book
    obj: dict[str, Any] = {"spec": spec, "spec_version": "2.0", "data": data} if spec else dict(data)
    raw = json.dumps(obj, allow_nan=True).encode()
    try:
        fields = card_to_persona_fields(parse_card(raw, "fuzz.json"))
    except CardError as exc:
        assert str(exc).startswith("fuzz.json: ") and exc.code
        return
    assert isinstance(fields["name"], str) and fields["name"].strip()
    for key in ("description", "personality", "scenario", "greeting", "example_dialogue"):
        assert isinstance(fields.get(key, ""), str)
    assert all(isinstance(g, str) for g in fields.get("alternate_greetings") or [])
    lore = fields.get("lorebook")
    assert lore is None or isinstance(lore.get("entries", []), list)
    # And the prompt builder takes it.
    PromptBuilder(WordTokenizer(), 100_000, 100).build(
        PersonaSpec.from_row(fields), [human(1, "Alice", "hi")], user_name="Alice"
    )


# ---- the prompt builder ------------------------------------------------------------------------------------------

INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u034f", "\u180e"]
BIDI = ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069", "\u200e", "\u200f"]
MARKUP = ["**", "__", "||", "```", "> ", "# ", "<@123>", "<@&456>", "<#789>", "@everyone", "@here", "\n", ":", "*"]
MARKERS = ["<|system|>", "<|user|>", "<|model|>", "</s>", "<s>", "< | SYSTEM | >", "\uff1c|model|\uff1e", "<\n|user|>"]


def _hostile(draw: st.DrawFn, max_parts: int = 12) -> str:
    parts = st.one_of(
        st.sampled_from(INVISIBLE + BIDI + MARKUP + MARKERS + ["Seraphina:", "{{char}}", "{{user}}", "<START>"]),
        st.text(max_size=6),
    )
    return "".join(draw(st.lists(parts, max_size=max_parts)))


@st.composite
def hostile_histories(draw: st.DrawFn) -> tuple[list[ChatMessage], str]:
    count = draw(st.integers(1, 15))
    messages = []
    for i in range(1, count + 1):
        # Markers split by invisible or bidi characters, names full of markup, now and then a huge message.
        name = _hostile(draw, 6)
        text = _hostile(draw)
        if draw(st.integers(0, 9)) == 0:
            text = text * (100_000 // max(1, len(text))) if text else "x" * 100_000
        messages.append(
            ChatMessage(
                id=i,
                author_id=draw(st.integers(1, 4)),
                author_name=name,
                kind=draw(st.sampled_from([MessageKind.HUMAN, MessageKind.BOT])),
                content=text,
                created_at=BASE_TIME,
            )
        )
    return messages, _hostile(draw, 6)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=hostile_histories(), persona_name=st.sampled_from(["Seraphina", "<|model|>**Sera**\n", "\u202eanihpareS"]))
def test_prompt_builder_with_hostile_names_and_texts(case: tuple[list[ChatMessage], str], persona_name: str) -> None:
    history, user = case
    builder = PromptBuilder(WordTokenizer(), 4096, 300)
    prompt = builder.build(seraphina(name=persona_name), history, user_name=user, persona_id=1)
    # The builder's own markers only, within the budget, ending with the persona's turn.
    assert count_markers(prompt.text) == len(prompt.turns)
    assert prompt.prompt_tokens <= prompt.budget
    for turn in prompt.turns:
        assert count_markers(turn.body) == 0
    # No speaker can start a line of their own: a name never carries a line break into the transcript.
    for line in prompt.turns[-1].text.splitlines()[1:]:
        assert not line.startswith("<|")


def test_the_biggest_history_a_channel_can_hold_builds_in_bounded_time() -> None:
    """400 messages of 4,000 hostile characters (Discord's longest) and one of 100,000: cut, fitted, built."""
    unit = "".join(INVISIBLE + BIDI + MARKUP + MARKERS) + " word "
    filler = (unit * (4000 // len(unit) + 1))[:4000]
    history = [human(i, f"User{i % 7}", filler) for i in range(1, 401)]
    history.append(human(401, "Alice\u202e", "x " * 50_000))
    builder = PromptBuilder(WordTokenizer(), 4096, 300)
    prompt, seconds, _ = bounded(lambda: builder.build(seraphina(), history, user_name="Alice", persona_id=1))
    assert not isinstance(prompt, Exception), prompt
    print(f"400 x 4,000 + 100,000 characters: built in {seconds:.2f}s")
    assert prompt.prompt_tokens <= prompt.budget and count_markers(prompt.text) == len(prompt.turns)
    assert prompt.message_ids[-1] == 401 and len(prompt.text) < 4096 * 8
    assert "x x x" in prompt.text  # the newest message is there, cut to fit
    assert max(len(m) for m in prompt.text.split("\n")) <= MAX_MESSAGE_CHARS + 200


# ---- output filters ----------------------------------------------------------------------------------------------

atoms = st.sampled_from(["a", "b", ".", r"\w", r"\s", "[ab]", "(?:a|aa)", "(a|a)", "x"])
quantifiers = st.sampled_from(["*", "+", "{1,50}", "?", "*?", "+"])


@st.composite
def nested_patterns(draw: st.DrawFn) -> str:
    """The shapes that backtrack catastrophically: nested and overlapping repeats, alternations of the same thing."""
    pattern = draw(atoms) + draw(quantifiers)
    for _ in range(draw(st.integers(1, 3))):
        pattern = f"({pattern}{draw(st.sampled_from(['', draw(atoms)]))}){draw(quantifiers)}"
    return pattern + draw(st.sampled_from(["$", "b", "!", ""]))


TARGETS = ["a" * 30_000 + "!", "ab" * 15_000, " " * 30_000 + "x", "x" * 30_000]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pattern=nested_patterns())
def test_catastrophic_filter_patterns_are_refused_or_bounded(pattern: str) -> None:
    try:
        compiled = compile_filter(pattern, is_regex=True)
    except FilterError as exc:
        assert str(exc)  # a reason the admin can act on
        return
    filters = OutputFilterSet([compiled])
    # Accepted: every check on long hostile text ends (the regex timeout, failing closed when it fires).
    for text in TARGETS:
        result, _seconds, _peak = bounded(lambda text=text: filters.first_hit(text))
        assert result is None or result == pattern
