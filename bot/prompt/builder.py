"""Channel history + persona -> one Metharme prompt that fits the model's context.

Layout (SillyTavern's Metharme preset with names forced, plus what a multi-user channel needs)::

    <|system|>{system prompt, with the persona block in place of {{persona}}}
    <|user|>{user}: example...<|model|>{char}: example...            (example dialogue)
    <|user|>Alice: hi\\nBob: hello<|model|>{char}: reply...           (history, several speakers per user turn)
    <|system|>{post_history_instructions}
    <|model|>{char}:                                                 (primed with the persona's name)

The persona block is the lorebook's ``before_char`` entries, the description, ``{char}'s personality: ...``,
``Scenario: ...`` and the ``after_char`` entries, one per line.

Token budget: prompt <= context - max new tokens, by the engine's tokenizer. Priority: system + persona block,
the newest message (cut if it must be), history from newest to oldest, then examples. Lorebook entries share
``min(book budget, 25% of the budget)`` and never push out the newest message.

Stable prefix: engines reuse the KV cache of an unchanged prompt prefix, so for a conversation (``conversation=``
key) the builder remembers its *window*: where the history starts, which lorebook entries sit in the system block
and how many example blocks are in. Each turn only appends until the window no longer fits; then history is cut
back in one large step (``trim_fraction`` of the history space is freed), so the prefix survives many turns.
While a window lasts, lorebook entries stay once fired (like SillyTavern's "sticky" entries), and an entry that
fires mid-window goes in a ``<|system|>`` turn before the message that triggered it instead of into the system
block, which would invalidate the whole cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, TypeVar

from bot.prompt.errors import PersonaTooLarge, PromptError
from bot.prompt.examples import ExampleTurn, parse_examples
from bot.prompt.lorebook import Lorebook, LoreMatch, LorePosition
from bot.prompt.macros import PERSONA_SLOT, expand_macros, with_original
from bot.prompt.metharme import DEFAULT_POST_HISTORY, DEFAULT_SYSTEM_PROMPT, MAX_NAME_STOPS, stop_strings
from bot.prompt.normalize import is_out_of_character, message_text, tidy
from bot.prompt.sanitize import clean_name, neutralize
from bot.prompt.types import HistoryMessage, Mentions, PersonaSpec, Role, kind_of
from bot.storage.models import MessageKind
from bot.tokens import TokenCounter

log = logging.getLogger(__name__)

MIN_NEWEST_TOKENS = 32  # what must stay free for the newest message at the very least
MIN_CONVERSATION_TOKENS = 512  # what persona set-up insists on leaving for the conversation (or a quarter)
DEFAULT_TRIM_FRACTION = 0.5
DEFAULT_LORE_FRACTION = 0.25
MAX_PARTICIPANTS = 50
CUT_MARKER = " [… message cut]"
CONTINUE_CUT_MARKER = "[…] "


@dataclass(frozen=True, slots=True)
class Turn:
    role: Role
    body: str
    part: str  # system | examples | history | lore | post_history | reply

    @property
    def text(self) -> str:
        return self.role.marker + self.body


@dataclass(frozen=True, slots=True)
class FiredEntry:
    """A lorebook entry in the prompt, for the ``/chat context`` inspector."""

    uid: str
    name: str
    reason: str  # "constant", "key 'forest'", "kept from an earlier turn", ...
    placement: str  # "before_char", "after_char", "before message 123", "at depth 4"
    tokens: int


@dataclass(frozen=True, slots=True)
class TokenBreakdown:
    """Tokens per part, each counted on its own (so the parts may differ from the total by a few tokens)."""

    system: int
    lore: int
    examples: int
    history: int
    post_history: int
    reply: int


@dataclass(frozen=True, slots=True)
class BuiltPrompt:
    text: str  # ends with the model turn
    stop: list[str]
    prompt_tokens: int  # counted on the whole text
    budget: int  # context - max new tokens
    breakdown: TokenBreakdown
    turns: tuple[Turn, ...]  # text == "".join(turn.text for turn in turns)
    message_ids: tuple[int, ...]  # history messages in the prompt, oldest first
    messages_available: int  # history messages that had something to say (after OOC/empty filtering)
    lore_fired: tuple[FiredEntry, ...]
    lore_dropped: tuple[str, ...]  # entries that fired but did not fit the lorebook budget
    lore_problems: tuple[str, ...]  # malformed or unsafe entries/keys that were skipped
    prime: str | None  # "Name:" when the prompt ends with it (then the reply must not repeat it)
    continuing: bool  # the prompt ends inside the persona's partial reply (Continue)
    participants: tuple[str, ...]  # other speakers, for clean_reply
    examples_included: int  # example blocks in the prompt
    newest_cut: bool  # the newest message (or the partial reply) had to be shortened
    window_reused: bool  # the conversation's previous window was kept (the prompt extends the last one)

    @property
    def messages_included(self) -> int:
        return len(self.message_ids)


@dataclass(slots=True)
class _Item:
    msg_id: int | None
    role: Role  # USER (humans, bots, other personas) or MODEL (this persona)
    speaker: str
    line: str  # USER: "Name: text"; MODEL: "text" (the name is written once per turn)
    first: int  # tokens as the first item of a turn: marker (and the persona's name) included
    joined: int  # tokens as a further line of the previous item's turn: "\n" + line
    scan: str  # "Name: text", what the lorebook scans


@dataclass(slots=True)
class _Definitions:
    """Per-persona work that does not depend on the turn (cached by the persona's content)."""

    key: str
    lorebook: Lorebook | None
    examples: list[list[ExampleTurn]]


@dataclass(slots=True)
class _Window:
    """What a conversation's last prompt looked like, so the next one can keep its prefix."""

    persona_key: str
    user: str  # whom {{user}} names in the definitions while this window lasts
    anchor_id: int | None
    head_lore: tuple[str, ...]
    late_lore: dict[str, int]
    examples: int


@dataclass(slots=True)
class _Layout:
    start: int
    head_lore: list[tuple[LoreMatch, str]]  # (match, reason shown)
    late_lore: dict[str, tuple[LoreMatch, int, str]]  # uid -> (match, message id it precedes, reason)
    depth_lore: list[LoreMatch]
    examples: int
    newest: _Item | None = None  # the newest item, cut, when it had to be
    reused: bool = False
    dropped: list[str] = field(default_factory=list)


_K = TypeVar("_K")
_V = TypeVar("_V")


class _LRU(OrderedDict[_K, _V]):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: _K, value: _V) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)


class PromptBuilder:
    """Builds prompts for one engine. Long-lived, synchronous and safe to share between tasks and threads."""

    def __init__(
        self,
        counter: TokenCounter,
        context_tokens: int,
        max_new_tokens: int,
        *,
        default_system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        default_post_history: str = DEFAULT_POST_HISTORY,
        trim_fraction: float = DEFAULT_TRIM_FRACTION,
        lore_fraction: float = DEFAULT_LORE_FRACTION,
        max_name_stops: int = MAX_NAME_STOPS,
        message_cache_size: int = 20_000,
        conversation_cache_size: int = 4096,
    ) -> None:
        if max_new_tokens >= context_tokens:
            raise ValueError(f"max_new_tokens ({max_new_tokens}) must be below the context ({context_tokens})")
        if not 0.0 <= trim_fraction < 1.0:
            raise ValueError("trim_fraction must be in [0, 1)")
        self.counter = counter
        self.context_tokens = context_tokens
        self.max_new_tokens = max_new_tokens
        self.default_system_prompt = default_system_prompt
        self.default_post_history = default_post_history
        self.trim_fraction = trim_fraction
        self.lore_fraction = lore_fraction
        self.max_name_stops = max_name_stops
        self._lock = threading.Lock()
        self._messages: _LRU[tuple[Any, ...], tuple[int, int]] = _LRU(message_cache_size)
        self._texts: _LRU[str, int] = _LRU(4096)
        self._items: _LRU[tuple[Any, ...], _Item] = _LRU(message_cache_size)  # rendered plain messages
        self._windows: OrderedDict[Hashable, _Window] = OrderedDict()
        self._window_limit = conversation_cache_size
        self._definitions: OrderedDict[str, _Definitions] = OrderedDict()
        self.tokenized_messages = 0  # how many message lines were counted (not served from the cache)

    # ---- token counting with caches ----------------------------------------------------------------------------

    def _count(self, text: str) -> int:
        if not text:
            return 0
        with self._lock:
            cached = self._texts.get(text)
        if cached is not None:
            return cached
        value = self.counter.count_tokens(text)
        with self._lock:
            self._texts.put(text, value)
        return value

    def _count_message(self, key: tuple[Any, ...], first: str, joined: str) -> tuple[int, int]:
        """Token counts of a message line in its two possible places, cached by message id, edit and text.

        Each is counted with its surroundings (the turn marker, the newline) because tokenizers merge across
        such joins: counting the line alone would misjudge every turn by a token or so.
        """
        with self._lock:
            cached = self._messages.get(key)
            if cached is not None:
                self._messages.move_to_end(key)
                return cached
        value = (self.counter.count_tokens(first), self.counter.count_tokens(joined))
        with self._lock:
            self._messages.put(key, value)
            self.tokenized_messages += 1
        return value

    def _keep_item(self, key: tuple[Any, ...], item: _Item) -> None:
        with self._lock:
            self._items.put(key, item)

    # ---- public API --------------------------------------------------------------------------------------------

    def budget(self, max_new_tokens: int | None = None) -> int:
        return self.context_tokens - (max_new_tokens if max_new_tokens is not None else self.max_new_tokens)

    def forget(self, conversation: Hashable) -> None:
        """Drop a conversation's window (e.g. after a scene reset; it would be rebuilt anyway)."""
        with self._lock:
            self._windows.pop(conversation, None)

    def check_persona(self, persona: PersonaSpec, *, user_name: str = "User") -> int:
        """Tokens the persona's fixed part takes; raises :class:`PersonaTooLarge` when it leaves too little room.

        Call it when a persona is created, imported or edited, so the admin hears about it then and not mid-scene.
        """
        budget = self.budget()
        minimum = min(MIN_CONVERSATION_TOKENS, budget // 4)
        ctx = _Context(self, persona, [], user_name=user_name, persona_id=persona.id, mentions=None, budget=budget)
        fixed = ctx.fixed_tokens()
        if fixed + minimum > budget:
            raise ctx.too_large(fixed, budget - minimum, minimum)
        return fixed

    def build(
        self,
        persona: PersonaSpec,
        history: Sequence[HistoryMessage],
        *,
        user_name: str,
        persona_id: int | None = None,
        mentions: Mentions | Mapping[str, Any] | None = None,
        continue_text: str | None = None,
        conversation: Hashable | None = None,
        max_new_tokens: int | None = None,
    ) -> BuiltPrompt:
        """The prompt for the persona's next reply (or, with ``continue_text``, the rest of its last one).

        ``history``: the scene's messages, oldest first; pass enough to fill the context (the builder trims).
        ``user_name``: who triggered the reply (``{{user}}``). ``persona_id``: tells the persona's own messages
        from other personas' (defaults to ``persona.id``). ``conversation``: a key (e.g. the channel id) under
        which the window is remembered so consecutive prompts share their prefix; None builds from scratch.
        ``continue_text``: the persona's partial reply, not included in ``history``; the prompt then ends inside
        it. Raises :class:`PersonaTooLarge` when the persona alone leaves no room for the conversation.
        """
        budget = self.budget(max_new_tokens)
        if budget <= MIN_NEWEST_TOKENS:
            raise PromptError(f"max_new_tokens leaves only {budget} tokens of the {self.context_tokens} for the prompt")
        ctx = _Context(
            self,
            persona,
            history,
            user_name=user_name,
            persona_id=persona.id if persona_id is None else persona_id,
            mentions=mentions,
            budget=budget,
            continue_text=continue_text,
        )
        window: _Window | None = None
        if conversation is not None:
            with self._lock:
                window = self._windows.get(conversation)
        layout = None
        if window is not None and window.persona_key == ctx.defs.key:
            ctx.set_definition_user(window.user)
            layout = ctx.reuse(window)
            if layout is None and not ctx.has_spoken(window.user):
                # A new window may keep the old name (and the system block with it) while that person is around.
                ctx.set_definition_user(ctx.user)
        if layout is None:
            layout = ctx.fresh(keep_room=conversation is not None, previous=window)
        prompt = ctx.finish(layout)
        if conversation is not None:
            saved = ctx.window_of(layout)
            with self._lock:
                self._windows[conversation] = saved
                self._windows.move_to_end(conversation)
                while len(self._windows) > self._window_limit:
                    self._windows.popitem(last=False)
        return prompt

    def _definitions_for(self, persona: PersonaSpec) -> _Definitions:
        raw = json.dumps(
            [
                persona.name,
                persona.nickname,
                persona.example_dialogue,
                persona.lorebook,
            ],
            sort_keys=True,
            default=str,
        )
        key = hashlib.blake2b(raw.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
        with self._lock:
            found = self._definitions.get(key)
            if found is not None:
                self._definitions.move_to_end(key)
                return found
        lorebook = Lorebook.from_dict(persona.lorebook) if persona.lorebook else None
        if lorebook is not None and lorebook.problems:
            log.info("Lorebook of persona %r: %d problem(s) skipped", persona.name, len(lorebook.problems))
        definitions = _Definitions(
            key=key,
            lorebook=lorebook if lorebook is not None and lorebook.entries else None,
            examples=parse_examples(persona.example_dialogue, persona.display_name),
        )
        with self._lock:
            self._definitions[key] = definitions
            while len(self._definitions) > 256:
                self._definitions.popitem(last=False)
        return definitions


@lru_cache(maxsize=1024)
def _persona_text(text: str, char: str, user: str) -> str:
    """A persona or lorebook field as it enters the prompt: macros filled in, tidied, markers defused."""
    return neutralize(tidy(expand_macros(text, char=char, user=user)))


class _Context:
    """One build: the persona's texts for this turn, the rendered history, and the layout arithmetic."""

    def __init__(
        self,
        builder: PromptBuilder,
        persona: PersonaSpec,
        history: Sequence[HistoryMessage],
        *,
        user_name: str,
        persona_id: int | None,
        mentions: Mentions | Mapping[str, Any] | None,
        budget: int,
        continue_text: str | None = None,
    ) -> None:
        self.b = builder
        self.persona = persona
        self.budget = budget
        self.reserve = max(8, budget // 100)  # slack for token merges where pieces join
        self.char = clean_name(persona.display_name, "Character")
        self.user = clean_name(user_name, "User")
        self.persona_id = persona_id
        self.mentions = Mentions.coerce(mentions)
        self.defs = builder._definitions_for(persona)
        self.newline_tokens = builder._count("\n")
        self.set_definition_user(self.user)
        # The post-history instructions sit after the history, outside the cached prefix: always the real user.
        phi_template = with_original(persona.post_history_instructions, builder.default_post_history)
        self.post_history = _persona_text(
            phi_template if persona.post_history_instructions.strip() else builder.default_post_history,
            self.char,
            self.user,
        )

        self.items = self._render(history)
        self.messages_available = len(self.items)
        self.continuation: str | None = None
        if continue_text is not None:
            self.continuation = self._continuation(continue_text)
        self._prepare_costs()

        book = self.defs.lorebook
        self.matches: dict[str, LoreMatch] = {}
        if book is not None:
            scan = [item.scan for item in self.items]
            if self.continuation:
                scan.append(f"{self.char}: {self.continuation}")
            self.matches = {m.entry.uid: m for m in book.scan(scan)}
        self.entries = {e.uid: e for e in book.entries} if book is not None else {}
        book_budget = book.token_budget if book is not None and book.token_budget else budget
        self.lore_budget = min(book_budget, int(budget * builder.lore_fraction))

    # ---- persona texts -----------------------------------------------------------------------------------------

    def set_definition_user(self, name: str) -> None:
        """Whose name ``{{user}}`` stands for in the persona's definitions (system block, examples, lorebook).

        It is the triggering user when a conversation's first window is built, and stays so while that person takes
        part in the history: in a channel where several people take turns, following each trigger would rewrite
        the system block, and with it the whole cached prefix, on nearly every turn. The post-history instructions
        always name the triggering user.
        """
        self.def_user = name
        self._system_bodies: dict[tuple[str, ...], str] = {}
        persona = self.persona
        self.description = self._field(persona.description)
        self.personality = self._field(persona.personality)
        self.scenario = self._field(persona.scenario)
        template = with_original(persona.system_prompt, self.b.default_system_prompt)
        self.template = expand_macros(
            template if persona.system_prompt.strip() else self.b.default_system_prompt, char=self.char, user=name
        )

    def has_spoken(self, name: str) -> bool:
        """Whether ``name`` wrote any of the history's messages."""
        folded = name.casefold()
        return any(item.role is Role.USER and item.speaker.casefold() == folded for item in self.items)

    def _field(self, text: str) -> str:
        return _persona_text(text, self.char, self.def_user)

    def lore_text(self, match: LoreMatch) -> str:
        return self._field(match.entry.content)

    def system_body(self, head: Sequence[LoreMatch]) -> str:
        key = tuple(m.entry.uid for m in head)
        body = self._system_bodies.get(key)
        if body is None:
            body = self._system_bodies[key] = self._system_body(head)
        return body

    def _system_body(self, head: Sequence[LoreMatch]) -> str:
        before = [self.lore_text(m) for m in head if m.entry.position is LorePosition.BEFORE_CHAR]
        after = [self.lore_text(m) for m in head if m.entry.position is not LorePosition.BEFORE_CHAR]
        parts = [
            *before,
            self.description,
            f"{self.char}'s personality: {self.personality}" if self.personality else "",
            f"Scenario: {self.scenario}" if self.scenario else "",
            *after,
        ]
        block = "\n".join(p for p in parts if p)
        if PERSONA_SLOT.search(self.template):
            text = PERSONA_SLOT.sub(lambda _m: block, self.template, count=1)
            text = PERSONA_SLOT.sub("", text)
        else:
            text = "\n".join(p for p in (self.template.strip(), block) if p)
        return neutralize(text)

    def tail_turns(self, continuation: str | None) -> list[Turn]:
        turns = [Turn(Role.SYSTEM, self.post_history, "post_history")] if self.post_history else []
        if continuation is not None:
            turns.append(Turn(Role.MODEL, neutralize(f"{self.char}: {continuation}"), "reply"))
        else:
            turns.append(Turn(Role.MODEL, f"{self.char}:", "reply"))
        return turns

    def fixed_tokens(self) -> int:
        """System prompt + persona block + post-history instructions + the reply prefix (no lore, no history)."""
        return self.b._count(Role.SYSTEM.marker + self.system_body([])) + self._tail_cost(self.continuation)

    def _tail_cost(self, continuation: str | None) -> int:
        return sum(self.b._count(t.text) for t in self.tail_turns(continuation))

    def too_large(self, needed: int, available: int, reserved: int) -> PersonaTooLarge:
        count = self.b._count
        p = self.persona
        sizes = {
            "description": count(self.description),
            "personality": count(self.personality),
            "scenario": count(self.scenario),
            "system prompt": count(p.system_prompt),
            "post-history instructions": count(self.post_history),
        }
        parts = ", ".join(f"{name} {size}" for name, size in sizes.items() if size)
        largest = max(sizes, key=lambda k: sizes[k])
        return PersonaTooLarge(
            f"Persona {p.name!r} is too large for this model: its system prompt and character definition take "
            f"{needed} tokens ({parts}), but a {self.b.context_tokens}-token context with "
            f"{self.b.context_tokens - self.budget} tokens reserved for the reply leaves {self.budget}, and "
            f"{reserved} of those must stay free for the conversation. Shorten the {largest} by at least "
            f"{needed - available} tokens (about {(needed - available) * 4} characters), or lower the reply length.",
            needed=needed,
            available=available,
        )

    # ---- history -----------------------------------------------------------------------------------------------

    def _is_own(self, message: HistoryMessage, kind: MessageKind) -> bool:
        if kind is not MessageKind.PERSONA:
            return False
        if self.persona_id is not None and message.persona_id is not None:
            return message.persona_id == self.persona_id
        return clean_name(message.author_name).casefold() in {
            self.char.casefold(),
            clean_name(self.persona.name).casefold(),
        }

    def _render(self, history: Sequence[HistoryMessage]) -> list[_Item]:
        # Every turn passes the whole recent history (hundreds of messages) and nearly all of it was rendered for
        # the previous turn: the first pass finds those in the builder's cache under one lock, with each author's
        # current name looked up once; only the rest (usually the newest message) is rendered in the second.
        users = self.mentions.users
        names: dict[int, str | None] = {}
        char = self.char
        found: list[_Item | tuple[HistoryMessage, bool, str | None, tuple[Any, ...] | None]] = []
        cache = self.b._items
        with self.b._lock:
            for message in history:
                kind = kind_of(message)
                own = self._is_own(message, kind)
                raw_name: str | None = None
                if kind is MessageKind.HUMAN and not own:
                    author = message.author_id
                    if author in names:
                        raw_name = names[author]
                    else:
                        raw_name = names[author] = users.get(author)
                content = message.content or ""
                # A message without markup or attachments renders from these fields alone.
                cache_key = None
                if not message.attachments and "<" not in content:
                    cache_key = (message.id, message.edited_at, content, message.author_name, raw_name, own, char)
                    cached = cache.get(cache_key)
                    if cached is not None:
                        cache.move_to_end(cache_key)
                        found.append(cached)
                        continue
                found.append((message, own, raw_name, cache_key))
        items: list[_Item] = []
        for entry in found:
            if isinstance(entry, _Item):
                items.append(entry)
                continue
            message, own, raw_name, cache_key = entry
            item = self._render_one(message, own, raw_name)
            if item is None:
                continue
            if cache_key is not None:
                self.b._keep_item(cache_key, item)
            items.append(item)
        return items

    def _render_one(self, message: HistoryMessage, own: bool, raw_name: str | None) -> _Item | None:
        """One message as a prompt line (None when it has no place in the prompt)."""
        content = message.content or ""
        if not own and is_out_of_character(content):
            return None
        text = message_text(content, message.attachments, self.mentions, created_at=message.created_at)
        if not text:
            return None
        if own:
            speaker, line = self.char, neutralize(text)
            role = Role.MODEL
        else:
            speaker = clean_name(raw_name or message.author_name)
            line = neutralize(f"{speaker}: {text}")
            role = Role.USER
        head = role.marker + (f"{self.char}: " if role is Role.MODEL else "")
        key = (message.id, message.edited_at, head, line)
        first, joined = self.b._count_message(key, head + line, "\n" + line)
        scan = line if role is Role.USER else f"{speaker}: {line}"
        return _Item(message.id, role, speaker, line, first, joined, scan)

    def _continuation(self, text: str) -> str:
        cont = neutralize(tidy(text))
        # The partial reply may also be in the history (the caller passed everything): do not show it twice.
        tail: list[_Item] = []
        for item in reversed(self.items):
            if item.role is not Role.MODEL:
                break
            tail.insert(0, item)
        if tail:
            joined = "\n".join(item.line for item in tail)
            if cont.startswith(joined) or joined.startswith(cont):
                del self.items[len(self.items) - len(tail) :]
                self.messages_available = len(self.items)
        return cont

    def _prepare_costs(self) -> None:
        """Per-item costs as the first item of a turn and as a continuation of the previous item's turn."""
        self.first_cost: list[int] = []
        self.next_cost: list[int] = []
        for i, item in enumerate(self.items):
            self.first_cost.append(item.first)
            joins = i > 0 and self.items[i - 1].role is item.role
            self.next_cost.append(item.joined if joins else item.first)
        self.index_of = {item.msg_id: i for i, item in enumerate(self.items) if item.msg_id is not None}

    def history_cost(self, start: int, breaks: set[int]) -> int:
        """Estimated tokens of items[start:] (turns break where lore turns are inserted)."""
        if start >= len(self.items):
            return 0
        total = self.first_cost[start]
        for i in range(start + 1, len(self.items)):
            total += self.first_cost[i] if i in breaks else self.next_cost[i]
        return total

    def _start_for(self, cap: int, breaks: set[int]) -> int:
        """The earliest start whose history fits ``cap`` (len(items) when not even the newest item fits)."""
        n = len(self.items)
        if n == 0:
            return 0
        total = self.first_cost[n - 1]
        if total > cap:
            return n
        start = n - 1
        while start > 0:
            # Adding items[start-1] in front: it becomes the turn's first item, items[start] may now join it.
            joined = start not in breaks and self.items[start - 1].role is self.items[start].role
            delta = self.first_cost[start - 1] - self.first_cost[start]
            delta += self.next_cost[start] if joined else self.first_cost[start]
            if total + delta > cap:
                break
            total += delta
            start -= 1
        return start

    # ---- lore placement ----------------------------------------------------------------------------------------

    def lore_cost(self, match: LoreMatch) -> int:
        return self.b._count(self.lore_text(match)) + self.newline_tokens

    def depth_index(self, match: LoreMatch, start: int) -> int:
        """Insert-before index of an @depth entry (len(items) = after the last message)."""
        return max(start, len(self.items) - match.entry.depth)

    def insertions(self, layout: _Layout) -> dict[int, list[Turn]]:
        by_index: dict[int, list[LoreMatch]] = {}
        for match, msg_id, _reason in layout.late_lore.values():
            by_index.setdefault(self.index_of[msg_id], []).append(match)
        for match in layout.depth_lore:
            by_index.setdefault(self.depth_index(match, layout.start), []).append(match)
        turns: dict[int, list[Turn]] = {}
        for index, matches in by_index.items():
            matches.sort(key=lambda m: (m.entry.insertion_order, m.entry.index))
            body = neutralize("\n".join(self.lore_text(m) for m in matches))
            turns[index] = [Turn(Role.SYSTEM, body, "lore")]
        return turns

    def _by_importance(self, matches: Sequence[LoreMatch]) -> list[LoreMatch]:
        return sorted(matches, key=lambda m: (-m.entry.priority, -m.entry.insertion_order, m.entry.index))

    def _in_order(self, matches: Sequence[LoreMatch]) -> list[LoreMatch]:
        return sorted(matches, key=lambda m: (m.entry.insertion_order, m.entry.index))

    # ---- layouts -----------------------------------------------------------------------------------------------

    def example_cost(self, count: int) -> int:
        return sum(self.b._count(t.text) for t in self.example_turns(count))

    def example_turns(self, count: int) -> list[Turn]:
        turns: list[Turn] = []
        for block in self.defs.examples[:count]:
            for ex in block:
                text = self._field(ex.text)
                if not text:
                    continue
                if ex.role is Role.USER:
                    body = f"{self.def_user}: {text}"
                elif ex.role is Role.MODEL:
                    body = f"{self.char}: {text}"
                else:
                    body = text
                turns.append(Turn(ex.role, neutralize(body), "examples"))
        return turns

    def reuse(self, window: _Window) -> _Layout | None:
        """The previous window extended by this turn's messages, or None when it no longer fits."""
        if window.persona_key != self.defs.key or window.examples > len(self.defs.examples):
            return None
        if window.anchor_id is None:
            start = 0
        elif window.anchor_id in self.index_of:
            start = self.index_of[window.anchor_id]
        else:
            return None
        head: list[tuple[LoreMatch, str]] = []
        for uid in window.head_lore:
            entry = self.entries.get(uid)
            if entry is None:
                return None
            fired = self.matches.get(uid)
            head.append((fired, fired.reason) if fired else (LoreMatch(entry, ""), "kept from an earlier turn"))
        late: dict[str, tuple[LoreMatch, int, str]] = {}
        for uid, msg_id in window.late_lore.items():
            entry = self.entries.get(uid)
            index = self.index_of.get(msg_id)
            if entry is None or index is None or index < start:
                return None
            fired = self.matches.get(uid)
            late[uid] = (fired or LoreMatch(entry, ""), msg_id, fired.reason if fired else "kept from an earlier turn")
        layout = _Layout(start=start, head_lore=head, late_lore=late, depth_lore=[], examples=window.examples)
        used = sum(self.lore_cost(m) for m, _ in head) + sum(self.lore_cost(m) for m, _, _ in late.values())
        placed = set(window.head_lore) | set(late)
        newest_id = self.items[-1].msg_id if self.items else None
        for match in self._by_importance([m for uid, m in self.matches.items() if uid not in placed]):
            cost = self.lore_cost(match)
            if used + cost > self.lore_budget:
                layout.dropped.append(match.entry.name)
                continue
            if match.entry.position is LorePosition.AT_DEPTH:
                layout.depth_lore.append(match)
            elif newest_id is not None:
                late[match.entry.uid] = (match, newest_id, match.reason)
            else:
                return None
            used += cost
        layout.depth_lore = self._in_order(layout.depth_lore)
        if self.estimate(layout) > self.budget - self.reserve:
            return None
        layout.reused = True
        return layout

    def breaks(self, layout: _Layout) -> set[int]:
        found = {self.index_of[msg_id] for _, msg_id, _ in layout.late_lore.values()}
        found.update(self.depth_index(m, layout.start) for m in layout.depth_lore)
        return found

    def estimate(self, layout: _Layout) -> int:
        head = [m for m, _ in layout.head_lore]
        total = self.b._count(Role.SYSTEM.marker + self.system_body(head))
        total += self.example_cost(layout.examples)
        breaks = self.breaks(layout)
        if layout.newest is not None:
            total += layout.newest.first
        else:
            total += self.history_cost(layout.start, breaks)
        total += sum(self.b._count(t.text) for turns in self.insertions(layout).values() for t in turns)
        return total + self._tail_cost(self.continuation)

    def fresh(self, *, keep_room: bool, previous: _Window | None = None) -> _Layout:
        """A new window: everything that fits by priority, leaving room to grow when the window will be kept."""
        avail = self.budget - self.reserve
        fixed = self.fixed_tokens()
        if fixed + MIN_NEWEST_TOKENS > self.budget:
            raise self.too_large(fixed, self.budget - MIN_NEWEST_TOKENS, MIN_NEWEST_TOKENS)
        if self.continuation is not None and fixed > avail // 2:
            # An over-long partial reply: keep its end, the part the model continues from.
            self.continuation = self._cut_continuation(avail)
            fixed = self.fixed_tokens()
        newest_cost = self.first_cost[-1] if self.items else 0
        lore_room = min(self.lore_budget, max(0, avail - fixed - newest_cost))
        candidates = self._by_importance(list(self.matches.values()))
        layout = self._place(self._with_lore(candidates, lore_room), keep_room)
        if previous is not None and previous.persona_key == self.defs.key and self.items:
            # Entries of the last window stay while one of their keys is still in the prompt's history.
            text = "\n".join(item.scan for item in self.items[layout.start :])
            folded = text.casefold()
            kept = [
                LoreMatch(self.entries[uid], "kept from an earlier turn")
                for uid in dict.fromkeys((*previous.head_lore, *previous.late_lore))
                if uid not in self.matches and uid in self.entries and self.entries[uid].matches(text, folded)
            ]
            if kept:
                layout = self._place(self._with_lore(candidates + kept, lore_room), keep_room)
        return layout

    def _with_lore(self, candidates: Sequence[LoreMatch], room: int) -> _Layout:
        """An empty layout with the lorebook entries that fit ``room``, in order of importance."""
        layout = _Layout(start=0, head_lore=[], late_lore={}, depth_lore=[], examples=0)
        used = 0
        chosen: list[LoreMatch] = []
        for match in candidates:
            cost = self.lore_cost(match)
            if used + cost > room:
                if match.entry.uid in self.matches:
                    layout.dropped.append(match.entry.name)
                continue
            chosen.append(match)
            used += cost
        chosen = self._in_order(chosen)
        layout.head_lore = [(m, m.reason) for m in chosen if m.entry.position is not LorePosition.AT_DEPTH]
        layout.depth_lore = [m for m in chosen if m.entry.position is LorePosition.AT_DEPTH]
        return layout

    def _place(self, layout: _Layout, keep_room: bool) -> _Layout:
        """Choose the history start (and example blocks) for a layout whose lore is set."""
        avail = self.budget - self.reserve
        system = self.b._count(Role.SYSTEM.marker + self.system_body([m for m, _ in layout.head_lore]))
        tail = self._tail_cost(self.continuation)
        lore_turns = sum(self.b._count(t.text) for turns in self.insertions(layout).values() for t in turns)
        cap = avail - system - tail - lore_turns
        n = len(self.items)
        if n == 0:
            return layout
        breaks = self.breaks(layout)
        start = self._start_for(cap, breaks)
        if start >= n:
            layout.start = n - 1
            layout.newest = self._cut_item(self.items[-1], max(cap, MIN_NEWEST_TOKENS))
            return layout
        room = int(cap * self.b.trim_fraction) if keep_room else 0
        if start == 0:
            used_history = self.history_cost(0, breaks)
            for count in range(1, len(self.defs.examples) + 1):
                if used_history + self.example_cost(count) > cap - room:
                    break
                layout.examples = count
        elif room:
            start = max(start, min(n - 1, self._start_for(cap - room, breaks)))
        layout.start = start
        return layout

    def _cut_item(self, item: _Item, max_tokens: int) -> _Item:
        """``item`` shortened so that its turn fits ``max_tokens`` (the newest message is always shown)."""
        prefix = f"{item.speaker}: " if item.role is Role.USER else ""
        body = item.line[len(prefix) :] if prefix and item.line.startswith(prefix) else item.line
        head = item.role.marker + (f"{self.char}: " if item.role is Role.MODEL else "")
        count = self.b.counter.count_tokens

        def fits(size: int) -> bool:
            return count(head + prefix + body[:size].rstrip() + CUT_MARKER) <= max_tokens

        low, high = 0, len(body)
        while low < high:
            mid = (low + high + 1) // 2
            if fits(mid):
                low = mid
            else:
                high = mid - 1
        line = neutralize(prefix + body[:low].rstrip() + CUT_MARKER)
        return replace(item, line=line, first=count(head + line), joined=count("\n" + line))

    def _cut_continuation(self, avail: int) -> str:
        assert self.continuation is not None
        text = self.continuation
        allowed = avail // 2 - (self.fixed_tokens() - self._tail_cost(self.continuation)) - self._tail_cost("")
        count = self.b.counter.count_tokens
        low, high = 0, len(text)  # low: the shortest kept suffix found to fit, searched from the end
        best = ""
        while low <= high:
            mid = (low + high) // 2
            candidate = CONTINUE_CUT_MARKER + text[len(text) - mid :].lstrip()
            if count(candidate) <= max(allowed, 1):
                best, low = candidate, mid + 1
            else:
                high = mid - 1
        return best or CONTINUE_CUT_MARKER.strip()

    # ---- assembly ----------------------------------------------------------------------------------------------

    def render(self, layout: _Layout) -> list[Turn]:
        head = [m for m, _ in layout.head_lore]
        turns = [Turn(Role.SYSTEM, self.system_body(head), "system")]
        turns.extend(self.example_turns(layout.examples))
        inserted = self.insertions(layout)
        items = self.items[layout.start :]
        if layout.newest is not None and items:
            items = [*items[:-1], layout.newest]
        group: list[_Item] = []

        def flush() -> None:
            if not group:
                return
            if group[0].role is Role.MODEL:
                body = f"{self.char}: " + "\n".join(item.line for item in group)
            else:
                body = "\n".join(item.line for item in group)
            turns.append(Turn(group[0].role, neutralize(body), "history"))
            group.clear()

        for offset, item in enumerate(items):
            index = layout.start + offset
            if index in inserted:
                flush()
                turns.extend(inserted[index])
            if group and group[-1].role is not item.role:
                flush()
            group.append(item)
        flush()
        if len(self.items) in inserted:
            turns.extend(inserted[len(self.items)])
        turns.extend(self.tail_turns(self.continuation))
        return turns

    def _shrink(self, layout: _Layout, over: int) -> bool:
        """Make the layout smaller by about ``over`` tokens; False when nothing is left to drop."""
        if layout.examples:
            layout.examples -= 1
            return True
        n = len(self.items)
        if layout.newest is None and layout.start < n - 1:
            freed = 0
            while layout.start < n - 1 and freed < over:
                freed += self.first_cost[layout.start]
                layout.start += 1
            layout.late_lore = {
                uid: value for uid, value in layout.late_lore.items() if self.index_of[value[1]] >= layout.start
            }
            return True
        if layout.depth_lore:
            layout.dropped.append(layout.depth_lore.pop().entry.name)
            return True
        if layout.late_lore:
            uid = next(reversed(layout.late_lore))
            layout.dropped.append(layout.late_lore.pop(uid)[0].entry.name)
            return True
        if layout.head_lore:
            layout.dropped.append(layout.head_lore.pop()[0].entry.name)
            return True
        if n:
            current = layout.newest or self.items[-1]
            target = current.first - over - 1
            if target < MIN_NEWEST_TOKENS // 2:
                return False
            layout.start = n - 1
            layout.newest = self._cut_item(self.items[-1], target)
            return True
        return False

    def finish(self, layout: _Layout) -> BuiltPrompt:
        count = self.b.counter.count_tokens
        while True:
            turns = self.render(layout)
            text = "".join(turn.text for turn in turns)
            tokens = count(text)
            if tokens <= self.budget:
                break
            if not self._shrink(layout, tokens - self.budget):
                fixed = self.fixed_tokens()
                raise self.too_large(fixed, self.budget - MIN_NEWEST_TOKENS, MIN_NEWEST_TOKENS)
        return self._result(layout, turns, text, tokens)

    def _result(self, layout: _Layout, turns: list[Turn], text: str, tokens: int) -> BuiltPrompt:
        # History turns are not recounted (they change every turn): their cached per-message counts add up.
        parts = {"system": 0, "lore": 0, "examples": 0, "history": 0, "post_history": 0, "reply": 0}
        for turn in turns:
            if turn.part != "history":
                parts[turn.part] += self.b._count(turn.text)
        if layout.newest is not None:
            parts["history"] = layout.newest.first
        else:
            parts["history"] = self.history_cost(layout.start, self.breaks(layout))
        head_lore_tokens = sum(self.lore_cost(m) for m, _ in layout.head_lore)
        parts["system"] -= head_lore_tokens
        parts["lore"] += head_lore_tokens

        placed = [(m, reason, m.entry.position.value) for m, reason in layout.head_lore]
        placed += [(m, reason, f"before message {msg_id}") for m, msg_id, reason in layout.late_lore.values()]
        placed += [(m, m.reason, f"at depth {m.entry.depth}") for m in layout.depth_lore]
        fired = [FiredEntry(m.entry.uid, m.entry.name, why, where, self.lore_cost(m)) for m, why, where in placed]

        included = self.items[layout.start :]
        speakers: list[str] = [self.user]
        for item in reversed(included):
            if item.role is Role.USER:
                speakers.append(item.speaker)
        participants: list[str] = []
        seen = {self.char.casefold()}
        for name in speakers:
            if name.casefold() not in seen:
                seen.add(name.casefold())
                participants.append(name)
        book = self.defs.lorebook
        return BuiltPrompt(
            text=text,
            stop=stop_strings(participants, limit=self.b.max_name_stops),
            prompt_tokens=tokens,
            budget=self.budget,
            breakdown=TokenBreakdown(**parts),
            turns=tuple(turns),
            message_ids=tuple(item.msg_id for item in included if item.msg_id is not None),
            messages_available=self.messages_available,
            lore_fired=tuple(fired),
            lore_dropped=tuple(dict.fromkeys(layout.dropped)),
            lore_problems=book.problems if book is not None else (),
            prime=None if self.continuation is not None else f"{self.char}:",
            continuing=self.continuation is not None,
            participants=tuple(participants[:MAX_PARTICIPANTS]),
            examples_included=layout.examples,
            newest_cut=layout.newest is not None or bool(self.continuation and self.continuation.startswith("[…]")),
            window_reused=layout.reused,
        )

    def window_of(self, layout: _Layout) -> _Window:
        anchor = self.items[layout.start].msg_id if layout.start < len(self.items) else None
        return _Window(
            persona_key=self.defs.key,
            user=self.def_user,
            anchor_id=anchor,
            head_lore=tuple(m.entry.uid for m, _ in layout.head_lore),
            late_lore={uid: msg_id for uid, (_, msg_id, _) in layout.late_lore.items()},
            examples=layout.examples,
        )
