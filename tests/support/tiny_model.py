"""A tiny random-weight Llama model in GGUF, written with the ``gguf`` package, for tests that need a real model.

llama.cpp loads it like any Llama-2 GGUF: a SentencePiece-style ("llama") vocabulary of about 800 tokens with byte
fallback, so any text tokenizes and detokenizes back exactly; BOS/EOS like Llama-2; two transformer blocks of width
64. It is a few hundred KB and generates hundreds of tokens per second on one core.

The weights are random, so the text is gibberish, but it is *readable* gibberish: embedding dimension 0 is a
constant that no layer writes to, which lets the output matrix carry a per-token bias. It pushes down byte tokens,
control tokens and (unless ``favour_eos``) EOS, so the model writes words from its vocabulary and keeps going until
``max_new_tokens``. With ``favour_eos=True`` it ends every reply with EOS at once (to test that path).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Words the vocabulary holds (with a leading "▁", plus every prefix so SentencePiece merges can reach them).
_WORDS = [
    "the",
    "and",
    "you",
    "her",
    "his",
    "she",
    "he",
    "they",
    "was",
    "is",
    "are",
    "not",
    "but",
    "with",
    "for",
    "that",
    "this",
    "have",
    "what",
    "who",
    "when",
    "where",
    "how",
    "said",
    "smiled",
    "looked",
    "walked",
    "forest",
    "light",
    "shadow",
    "voice",
    "hand",
    "eyes",
    "softly",
    "gently",
    "quiet",
    "warm",
    "cold",
    "night",
    "day",
    "morning",
    "river",
    "stone",
    "tree",
    "leaf",
    "wind",
    "fire",
    "water",
    "heart",
    "dream",
    "story",
    "world",
    "friend",
    "stranger",
    "traveller",
    "Seraphina",
    "guardian",
    "magic",
    "glade",
    "healing",
    "rest",
    "safe",
    "here",
    "there",
    "yes",
    "no",
    "please",
    "thank",
    "welcome",
    "hello",
    "system",
    "user",
    "model",
    "character",
    "persona",
    "scenario",
    "reply",
]
_SPACE = "\u2581"  # SentencePiece's visible space

N_EMBD = 64
N_HEAD = 4
N_LAYER = 2
N_FF = 128
CONTEXT_LENGTH = 4096
BIAS_LEVEL = 4.0  # the constant in embedding dimension 0


def tiny_vocab() -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and token types of the tiny SentencePiece vocabulary."""
    from gguf import TokenType

    tokens = ["<unk>", "<s>", "</s>"]
    types = [TokenType.UNKNOWN, TokenType.CONTROL, TokenType.CONTROL]
    scores = [0.0, 0.0, 0.0]
    for byte in range(256):
        tokens.append(f"<0x{byte:02X}>")
        types.append(TokenType.BYTE)
        scores.append(0.0)
    pieces: list[str] = [_SPACE] + [chr(c) for c in range(0x21, 0x7F)]
    seen = set(pieces)
    for word in _WORDS:
        for end in range(2, len(word) + 2):
            piece = _SPACE + word[: end - 1]
            if piece not in seen:
                seen.add(piece)
                pieces.append(piece)
    for piece in pieces:
        tokens.append(piece)
        types.append(TokenType.NORMAL)
        # SentencePiece merges the pair whose result scores highest: longer pieces win, like a trained model.
        scores.append(float(len(piece)) - len(tokens) * 1e-4)
    return tokens, scores, [int(t) for t in types]


def make_tiny_gguf(path: Path, *, seed: int = 1234, favour_eos: bool = False) -> Path:
    """Write the tiny model to ``path`` (a ``.gguf`` file) and return the path."""
    from gguf import GGUFWriter, LlamaFileType

    rng = np.random.default_rng(seed)
    tokens, scores, types = tiny_vocab()
    n_vocab = len(tokens)
    head_dim = N_EMBD // N_HEAD

    def weight(rows: int, cols: int, scale: float) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)

    embeddings = weight(n_vocab, N_EMBD, 1.0)
    embeddings[:, 0] = BIAS_LEVEL
    output = weight(n_vocab, N_EMBD, 0.3)
    bias = np.zeros(n_vocab, dtype=np.float32)
    bias[: 3 + 256] = -6.0  # unk, BOS, EOS and the byte-fallback tokens: rarely generated
    bias[2] = 6.0 if favour_eos else -6.0
    output[:, 0] = bias
    ones = np.ones(N_EMBD, dtype=np.float32)
    layer_norm = ones.copy()
    layer_norm[0] = 0.0  # the layers do not read the bias dimension ...

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = GGUFWriter(str(path), "llama")
    writer.add_name("rpbot tiny test model")
    writer.add_context_length(CONTEXT_LENGTH)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(0)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(True)

    writer.add_tensor("token_embd.weight", embeddings)
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", output)
    for block in range(N_LAYER):
        attn_out = weight(N_EMBD, N_EMBD, 0.05)
        ffn_down = weight(N_EMBD, N_FF, 0.05)
        attn_out[0, :] = 0.0  # ... and do not write to it, so it stays constant to the end
        ffn_down[0, :] = 0.0
        writer.add_tensor(f"blk.{block}.attn_norm.weight", layer_norm)
        writer.add_tensor(f"blk.{block}.attn_q.weight", weight(N_EMBD, N_EMBD, 0.3))
        writer.add_tensor(f"blk.{block}.attn_k.weight", weight(N_EMBD, N_EMBD, 0.3))
        writer.add_tensor(f"blk.{block}.attn_v.weight", weight(N_EMBD, N_EMBD, 0.3))
        writer.add_tensor(f"blk.{block}.attn_output.weight", attn_out)
        writer.add_tensor(f"blk.{block}.ffn_norm.weight", layer_norm)
        writer.add_tensor(f"blk.{block}.ffn_gate.weight", weight(N_FF, N_EMBD, 0.3))
        writer.add_tensor(f"blk.{block}.ffn_up.weight", weight(N_FF, N_EMBD, 0.3))
        writer.add_tensor(f"blk.{block}.ffn_down.weight", ffn_down)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
