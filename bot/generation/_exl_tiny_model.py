"""A tiny random-weight FP16 Llama model folder that ExLlamaV2 loads: for GPU smoke tests and benchmarks.

The folder has what a real Hugging Face Llama folder has and ExLlamaV2 reads: ``config.json`` (LlamaForCausalLM),
``model.safetensors`` (FP16, random normal weights), ``tokenizer.json`` (a byte-level BPE trained here on generated
text, ``<unk>``/``<s>``/``</s>`` = 0/1/2 as in Llama-2), ``tokenizer_config.json`` and ``generation_config.json``.
It needs only numpy and ``tokenizers`` (no torch, no transformers), so it is built and checked on CPU machines too.

ExLlamaV2's kernels want a hidden size that is a multiple of 128, a head dimension of 64 or 128 and at least 256
positions; :class:`TinyLlamaSpec` checks those.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2, as in Llama-2
BOS_ID, EOS_ID = 1, 2

_SYLLABLES = ("ka", "ri", "to", "na", "mi", "sa", "lo", "ve", "th", "an", "el", "or", "in", "st", "ar", "en", "ing")
_WORDS = (
    *("the", "a", "to", "and", "of", "in", "you", "she", "he", "they", "we", "it", "is", "was", "said", "looked"),
    *("smiled", "tavern", "sword", "night", "forest", "dragon", "friend", "quietly", "her", "his", "their"),
    *("hand", "door", "light", "rain", "old", "village", "story", "tell", "me", "about"),
)
_NAMES = ("Alice", "Bob", "Seraphina", "Kael", "Mira", "Tomas")


@dataclass(frozen=True, slots=True)
class TinyLlamaSpec:
    hidden_size: int = 256
    num_layers: int = 2
    num_heads: int = 4  # head_dim = hidden_size / num_heads = 64
    num_kv_heads: int = 4
    intermediate_size: int = 512
    vocab_size: int = 1024  # BPE target; config.json's vocab is this rounded up to 128
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    seed: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def problems(self) -> list[str]:
        out = []
        if self.hidden_size % 128:
            out.append(f"hidden_size {self.hidden_size} must be a multiple of 128")
        if self.hidden_size % self.num_heads or self.head_dim not in (64, 128):
            out.append(f"head_dim (hidden_size / num_heads) must be 64 or 128, not {self.hidden_size / self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            out.append(f"num_heads {self.num_heads} must be a multiple of num_kv_heads {self.num_kv_heads}")
        if self.intermediate_size % 128:
            out.append(f"intermediate_size {self.intermediate_size} must be a multiple of 128")
        if self.max_position_embeddings < 256:
            out.append(f"max_position_embeddings {self.max_position_embeddings} must be at least 256")
        if not 300 <= self.vocab_size <= 65536:
            out.append(f"vocab_size {self.vocab_size} must be between 300 and 65536")
        if self.num_layers < 1:
            out.append("num_layers must be at least 1")
        return out


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` in the safetensors layout: u64 header length, JSON header, then the raw little-endian data."""
    dtypes = {np.dtype("float16"): "F16", np.dtype("float32"): "F32", np.dtype("int64"): "I64"}
    header: dict[str, Any] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    arrays = []
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        if array.dtype not in dtypes:
            raise ValueError(f"tensor {name}: dtype {array.dtype} is not supported")
        array = array.astype(array.dtype.newbyteorder("<"), copy=False)
        header[name] = {
            "dtype": dtypes[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
        arrays.append(array)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned, as the reference writer does
    with path.open("wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for array in arrays:
            f.write(array.tobytes())


def _corpus(rng: random.Random, lines: int = 3000) -> list[str]:
    """Roleplay-shaped text with Metharme markers, so common pieces merge into tokens."""
    out = []
    for _ in range(lines):
        words = []
        for _ in range(rng.randint(4, 14)):
            if rng.random() < 0.6:
                words.append(rng.choice(_WORDS))
            else:
                words.append("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3))))
        sentence = " ".join(words).capitalize() + rng.choice(".!?")
        role = rng.choice(("<|user|>", "<|model|>", "<|system|>", ""))
        out.append(f"{role}{rng.choice(_NAMES)}: {sentence}\n*{rng.choice(_WORDS)} {rng.choice(_WORDS)}*")
    return out


def train_tokenizer(vocab_size: int, seed: int = 0) -> Any:
    """A byte-level BPE ``tokenizers.Tokenizer`` (any text encodes; no unknown tokens)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(random.Random(seed)), trainer=trainer)
    return tokenizer


def build_tiny_llama(path: Path, spec: TinyLlamaSpec | None = None) -> Path:
    """Write the model folder at ``path`` (created if needed) and return it."""
    spec = spec or TinyLlamaSpec()
    problems = spec.problems()
    if problems:
        raise ValueError("; ".join(problems))
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(spec.vocab_size, spec.seed)
    for token_id, token in enumerate(SPECIAL_TOKENS):
        if tokenizer.token_to_id(token) != token_id:
            raise RuntimeError(f"tokenizer put {token} at {tokenizer.token_to_id(token)}, not {token_id}")
    tokenizer.save(str(path / "tokenizer.json"))
    vocab = -(-tokenizer.get_vocab_size() // 128) * 128

    rng = np.random.default_rng(spec.seed)

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)

    kv_dim = spec.num_kv_heads * spec.head_dim
    h, inter = spec.hidden_size, spec.intermediate_size
    tensors: dict[str, np.ndarray] = {
        "model.embed_tokens.weight": weight(vocab, h),
        "model.norm.weight": np.ones(h, dtype=np.float16),
        "lm_head.weight": weight(vocab, h),
    }
    for layer in range(spec.num_layers):
        prefix = f"model.layers.{layer}."
        tensors |= {
            prefix + "input_layernorm.weight": np.ones(h, dtype=np.float16),
            prefix + "post_attention_layernorm.weight": np.ones(h, dtype=np.float16),
            prefix + "self_attn.q_proj.weight": weight(h, h),
            prefix + "self_attn.k_proj.weight": weight(kv_dim, h),
            prefix + "self_attn.v_proj.weight": weight(kv_dim, h),
            prefix + "self_attn.o_proj.weight": weight(h, h),
            prefix + "mlp.gate_proj.weight": weight(inter, h),
            prefix + "mlp.up_proj.weight": weight(inter, h),
            prefix + "mlp.down_proj.weight": weight(h, inter),
        }
    write_safetensors(path / "model.safetensors", tensors)

    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": h,
        "intermediate_size": inter,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": spec.max_position_embeddings,
        "rms_norm_eps": 1e-5,
        "rope_theta": spec.rope_theta,
        "vocab_size": vocab,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "rpbot_tiny_spec": asdict(spec),
    }
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (path / "generation_config.json").write_text(json.dumps({"bos_token_id": BOS_ID, "eos_token_id": EOS_ID}) + "\n")
    tokenizer_config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True}
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    return path
