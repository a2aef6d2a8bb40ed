"""Sizing the ExLlamaV2 generator: context, batch, chunk and cache, from the settings and what the GPU supports.

Pure arithmetic, kept apart from the engine so it can be tested without CUDA. ExLlamaV2's dynamic generator asserts
on sizes it cannot use (cache not a multiple of 256 tokens, chunk not a multiple of the page, batch x 8 larger than
the chunk); here every such case becomes either a clear error naming the setting or an adjustment with a note.
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.generation.base import EngineError

PAGE_SIZE = 256  # ExLlamaV2's cache page: cache and (paged) chunk sizes are multiples of it
MAX_Q_SIZE = 8  # the generator's default tokens per sequence per forward pass; it needs batch x 8 <= chunk


def round_up(value: int, multiple: int = PAGE_SIZE) -> int:
    return -(-value // multiple) * multiple


def round_down(value: int, multiple: int = PAGE_SIZE) -> int:
    return value // multiple * multiple


@dataclass(frozen=True, slots=True)
class GeneratorPlan:
    """What the engine builds. ``notes`` are warnings worth logging (settings that were adjusted)."""

    paged: bool
    context_tokens: int  # prompt + reply, per generation
    max_batch_size: int  # generations decoded together (1 when unpaged)
    cache_tokens: int  # KV cache length shared by all generations, a multiple of PAGE_SIZE
    chunk_size: int  # prompt tokens ingested per forward pass, a multiple of PAGE_SIZE
    notes: tuple[str, ...] = ()

    @property
    def full_contexts(self) -> int:
        """How many maximum-length generations the cache holds at once."""
        return self.cache_tokens // round_up(self.context_tokens)


def plan_generator(
    *,
    context_tokens: int,
    model_max_seq_len: int,
    max_new_tokens: int,
    cache_tokens: int | None,
    max_batch_size: int,
    chunk_size: int,
    paged: bool,
) -> GeneratorPlan:
    """Turn the settings into sizes the generator accepts; raise EngineError for settings that cannot work."""
    notes: list[str] = []
    if context_tokens < PAGE_SIZE:
        raise EngineError(f"RPBOT_CONTEXT_TOKENS ({context_tokens}) must be at least {PAGE_SIZE}")
    if max_batch_size < 1:
        raise EngineError(f"RPBOT_EXLLAMAV2_MAX_BATCH_SIZE ({max_batch_size}) must be at least 1")

    context = context_tokens
    if model_max_seq_len < context:
        # Beyond its trained length a Llama model degrades badly without RoPE scaling; use what it was trained for.
        notes.append(
            f"RPBOT_CONTEXT_TOKENS is {context_tokens} but the model was trained for {model_max_seq_len} tokens; "
            f"using {model_max_seq_len} (lower RPBOT_CONTEXT_TOKENS to silence this)"
        )
        context = model_max_seq_len
    if max_new_tokens >= context:
        raise EngineError(
            f"RPBOT_MAX_NEW_TOKENS ({max_new_tokens}) leaves no room for a prompt in the {context}-token context; "
            "lower it"
        )

    # The model's forward pass is sized for one chunk and never longer than the context; paged attention needs
    # whole pages per chunk.
    chunk = max(PAGE_SIZE, round_down(min(chunk_size, context)))
    if chunk_size % PAGE_SIZE and chunk_size < context:
        notes.append(f"RPBOT_EXLLAMAV2_CHUNK_SIZE {chunk_size} is not a multiple of {PAGE_SIZE}; using {chunk}")

    if paged:
        batch = max_batch_size
        if batch * MAX_Q_SIZE > chunk:
            batch = max(1, chunk // MAX_Q_SIZE)
            notes.append(
                f"RPBOT_EXLLAMAV2_MAX_BATCH_SIZE {max_batch_size} needs a chunk of at least "
                f"{max_batch_size * MAX_Q_SIZE} tokens (the chunk is {chunk}); using a batch of {batch}"
            )
    else:
        batch = 1
        if max_batch_size > 1:
            notes.append(
                "flash-attn 2.5.7 or later is not installed, so ExLlamaV2 runs unpaged: one generation at a time "
                f"(RPBOT_EXLLAMAV2_MAX_BATCH_SIZE={max_batch_size} has no effect). Install flash-attn for "
                "continuous batching across channels"
            )

    one_context = round_up(context)
    if cache_tokens is None:
        cache = one_context if not paged else round_up(batch * context)
    else:
        if cache_tokens % PAGE_SIZE:
            raise EngineError(
                f"RPBOT_EXLLAMAV2_CACHE_TOKENS ({cache_tokens}) must be a multiple of {PAGE_SIZE}, "
                f"e.g. {round_up(cache_tokens)}"
            )
        if cache_tokens < one_context:
            raise EngineError(
                f"RPBOT_EXLLAMAV2_CACHE_TOKENS ({cache_tokens}) cannot hold one full {context}-token context; "
                f"set it to at least {one_context} or lower RPBOT_CONTEXT_TOKENS"
            )
        cache = cache_tokens
        if not paged and cache > one_context:
            notes.append(
                f"unpaged ExLlamaV2 uses only {one_context} cache tokens; RPBOT_EXLLAMAV2_CACHE_TOKENS={cache_tokens} "
                "would waste GPU memory, so the cache is sized to one context"
            )
            cache = one_context
    return GeneratorPlan(
        paged=paged,
        context_tokens=context,
        max_batch_size=batch,
        cache_tokens=cache,
        chunk_size=chunk,
        notes=tuple(notes),
    )
