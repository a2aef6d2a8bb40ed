"""The tiny random Llama that the GPU smoke test and benchmark load: checked here against what ExLlamaV2 reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from bot.generation._exl_tiny_model import TinyLlamaSpec, build_tiny_llama, write_safetensors


def read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """An independent reader of the documented layout (8-byte little-endian length, JSON header, data)."""
    blob = path.read_bytes()
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + size])
    metadata = header.pop("__metadata__", {})
    data = blob[8 + size :]
    kinds = {"F16": "<f2", "F32": "<f4", "I64": "<i8"}
    out = {}
    covered = 0
    for name, entry in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        begin, end = entry["data_offsets"]
        assert begin == covered, f"{name} leaves a gap or overlaps"
        covered = end
        out[name] = np.frombuffer(data[begin:end], dtype=kinds[entry["dtype"]]).reshape(entry["shape"])
    assert covered == len(data)
    return out, metadata


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny-llama")


def test_folder_has_what_exllamav2_reads(tiny: Path) -> None:
    names = {p.name for p in tiny.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    config = json.loads((tiny / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["hidden_size"] % 128 == 0
    assert config["hidden_size"] // config["num_attention_heads"] in (64, 128)
    assert config["max_position_embeddings"] >= 256
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)


def test_weights_have_llama_names_shapes_and_fp16(tiny: Path) -> None:
    config = json.loads((tiny / "config.json").read_text())
    tensors, metadata = read_safetensors(tiny / "model.safetensors")
    h, vocab, inter = config["hidden_size"], config["vocab_size"], config["intermediate_size"]
    kv = config["num_key_value_heads"] * config["head_dim"]
    assert metadata == {"format": "pt"}
    assert tensors["model.embed_tokens.weight"].shape == (vocab, h)
    assert tensors["lm_head.weight"].shape == (vocab, h)
    assert tensors["model.norm.weight"].shape == (h,)
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        assert tensors[p + "self_attn.q_proj.weight"].shape == (h, h)
        assert tensors[p + "self_attn.k_proj.weight"].shape == (kv, h)
        assert tensors[p + "self_attn.v_proj.weight"].shape == (kv, h)
        assert tensors[p + "self_attn.o_proj.weight"].shape == (h, h)
        assert tensors[p + "mlp.gate_proj.weight"].shape == (inter, h)
        assert tensors[p + "mlp.up_proj.weight"].shape == (inter, h)
        assert tensors[p + "mlp.down_proj.weight"].shape == (h, inter)
        assert np.all(tensors[p + "input_layernorm.weight"] == 1)
    assert len(tensors) == 3 + 9 * config["num_hidden_layers"]
    assert all(t.dtype == np.float16 for t in tensors.values())
    embed = tensors["model.embed_tokens.weight"].astype(np.float32)
    assert np.isfinite(embed).all() and 0.01 < embed.std() < 0.03


def test_tokenizer_matches_what_exllamav2_expects(tiny: Path) -> None:
    tokenizer = Tokenizer.from_file(str(tiny / "tokenizer.json"))
    config = json.loads((tiny / "config.json").read_text())
    assert [tokenizer.token_to_id(t) for t in ("<unk>", "<s>", "</s>")] == [0, 1, 2]
    assert tokenizer.get_vocab_size() <= config["vocab_size"]
    assert tokenizer.get_vocab_size() > 900  # enough merges that text is not one token per byte
    # ExLlamaV2 builds its piece table from this: " t" must be one token that decodes to itself.
    ids = tokenizer.encode(" t", add_special_tokens=False).ids
    assert len(ids) == 1 and tokenizer.decode(ids) == " t"


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny: Path) -> Tokenizer:
    return Tokenizer.from_file(str(tiny / "tokenizer.json"))


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=80))
def test_tokenizer_round_trips_any_text(tiny_tokenizer: Tokenizer, text: str) -> None:
    tokenizer = tiny_tokenizer
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert 0 not in ids  # byte-level: nothing is unknown
    assert tokenizer.decode(ids) == text


def test_same_seed_same_model(tmp_path: Path) -> None:
    spec = TinyLlamaSpec(
        hidden_size=128, num_heads=2, num_kv_heads=1, intermediate_size=256, num_layers=1, vocab_size=400
    )
    a = build_tiny_llama(tmp_path / "a", spec)
    b = build_tiny_llama(tmp_path / "b", spec)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        (TinyLlamaSpec(hidden_size=200), "multiple of 128"),
        (TinyLlamaSpec(hidden_size=256, num_heads=8), "head_dim"),
        (TinyLlamaSpec(num_kv_heads=3), "multiple of num_kv_heads"),
        (TinyLlamaSpec(max_position_embeddings=128), "at least 256"),
        (TinyLlamaSpec(intermediate_size=500), "intermediate_size"),
    ],
)
def test_specs_exllamav2_cannot_run_are_refused(tmp_path: Path, spec: TinyLlamaSpec, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        build_tiny_llama(tmp_path / "m", spec)
    assert not (tmp_path / "m").exists()


def test_safetensors_writer_aligns_and_orders(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    tensors = {"b": np.arange(3, dtype=np.int64), "a": np.ones((2, 3), dtype=np.float32)}
    write_safetensors(path, tensors, {"note": "x"})
    size = int.from_bytes(path.read_bytes()[:8], "little")
    assert size % 8 == 0
    back, metadata = read_safetensors(path)
    assert metadata == {"note": "x"}
    assert list(back) == ["a", "b"]
    np.testing.assert_array_equal(back["a"], tensors["a"])
    np.testing.assert_array_equal(back["b"], tensors["b"])
    with pytest.raises(ValueError, match="not supported"):
        write_safetensors(path, {"x": np.zeros(2, dtype=np.uint8)})
