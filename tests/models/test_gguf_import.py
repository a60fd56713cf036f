"""GGUF import: tiny GGUF files written here with the `gguf` package, converted, and run.

Each file is laid out the way llama.cpp's converter writes it (Q/K rows permuted for llama,
Gemma norms stored as 1 + w, some tensors Q8_0-quantized), and the converted directory must
compute exactly what an mlx-lm model built from the original weights computes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import mlx.core as mx
import numpy as np
import pytest
from gguf.quants import dequantize, quantize

from loopbus.models.errors import ModelError, UnsupportedGGUF
from loopbus.models.gguf_import import import_gguf
from loopbus.models.info import gguf_summary, model_dir_summary

Q8 = gguf.GGMLQuantizationType.Q8_0
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
MERGES = [("h", "e"), ("l", "l"), ("Ġ", "w"), ("o", "r"), ("he", "ll"), ("Ġw", "or"), ("hell", "o")]
# Six layers: Gemma 3 alternates five sliding-window layers with one global layer.
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, LAYERS = 64, 4, 2, 16, 128, 6


def _byte_tokens() -> list[str]:
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = SPECIALS + alphabet + ["".join(m) for m in MERGES]
    return tokens


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's LlamaModel.permute (convert_hf_to_gguf.py), applied to Q and K."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _reference_weights(arch: str, vocab: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Hugging Face-layout float32 weights; Q8_0-bound ones already round-tripped."""

    def rnd(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def q8(w: np.ndarray) -> np.ndarray:
        return dequantize(quantize(w, Q8), Q8).reshape(w.shape).astype(np.float32)

    # Gemma multiplies embeddings by sqrt(hidden); keep them small so the stream is not constant.
    embed_scale = 0.1 if arch == "gemma3" else 1.0
    w: dict[str, np.ndarray] = {
        "model.embed_tokens.weight": q8(rnd(vocab, HIDDEN, scale=embed_scale))
    }
    w["model.norm.weight"] = 1.0 + rnd(HIDDEN, scale=0.1)
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = q8(rnd(HEADS * HEAD_DIM, HIDDEN))
        w[p + "self_attn.k_proj.weight"] = rnd(KV_HEADS * HEAD_DIM, HIDDEN)
        w[p + "self_attn.v_proj.weight"] = q8(rnd(KV_HEADS * HEAD_DIM, HIDDEN))
        w[p + "self_attn.o_proj.weight"] = rnd(HIDDEN, HEADS * HEAD_DIM)
        w[p + "mlp.gate_proj.weight"] = q8(rnd(FFN, HIDDEN))
        w[p + "mlp.up_proj.weight"] = rnd(FFN, HIDDEN)
        w[p + "mlp.down_proj.weight"] = q8(rnd(HIDDEN, FFN))
        w[p + "input_layernorm.weight"] = 1.0 + rnd(HIDDEN, scale=0.1)
        w[p + "post_attention_layernorm.weight"] = 1.0 + rnd(HIDDEN, scale=0.1)
        if arch == "qwen2":
            w[p + "self_attn.q_proj.bias"] = rnd(HEADS * HEAD_DIM)
            w[p + "self_attn.k_proj.bias"] = rnd(KV_HEADS * HEAD_DIM)
            w[p + "self_attn.v_proj.bias"] = rnd(KV_HEADS * HEAD_DIM)
        if arch == "gemma3":
            w[p + "pre_feedforward_layernorm.weight"] = rnd(HIDDEN, scale=0.1)
            w[p + "post_feedforward_layernorm.weight"] = rnd(HIDDEN, scale=0.1)
            w[p + "self_attn.q_norm.weight"] = rnd(HEAD_DIM, scale=0.1)
            w[p + "self_attn.k_norm.weight"] = rnd(HEAD_DIM, scale=0.1)
    if arch == "gemma3":
        # GGUF stores Gemma norms as 1 + w in float32; (1 + w) - 1 is what the file can give back.
        for name in [n for n in w if n.endswith("norm.weight")]:
            w[name] = (w[name] + np.float32(1.0)) - np.float32(1.0)
    return w


_TO_GGUF = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm",
    "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
}


def _gguf_name(name: str, arch: str) -> str:
    if name == "model.embed_tokens.weight":
        return "token_embd.weight"
    if name == "model.norm.weight":
        return "output_norm.weight"
    if name == "lm_head.weight":
        return "output.weight"
    _, _, layer, rest = name.split(".", 3)
    base, kind = rest.rsplit(".", 1)
    gemma = {
        "post_attention_layernorm": "post_attention_norm",
        "pre_feedforward_layernorm": "ffn_norm",
        "post_feedforward_layernorm": "post_ffw_norm",
    }
    table = {
        **_TO_GGUF,
        **(gemma if arch == "gemma3" else {"post_attention_layernorm": "ffn_norm"}),
    }
    return f"blk.{layer}.{table[base]}.{kind}"


def write_gguf(
    path: Path,
    arch: str,
    weights: dict[str, np.ndarray],
    *,
    vocab: list[str],
    add_bos: bool = False,
) -> Path:
    """Write ``weights`` as llama.cpp would: renamed, Q/K permuted, norms shifted, some Q8_0."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(256)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_key_length(HEAD_DIM)
    writer.add_value_length(HEAD_DIM)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(1_000_000.0 if arch == "gemma3" else 10000.0)
    if arch == "gemma3":
        writer.add_sliding_window(512)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab)
    writer.add_token_types([3 if t in SPECIALS else 1 for t in vocab])
    writer.add_token_merges([" ".join(m) for m in MERGES])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(add_bos)
    writer.add_chat_template(CHATML)
    for name, value in weights.items():
        data = value
        if arch == "llama" and ".q_proj." in name:
            data = _permute(value, HEADS)
        elif arch == "llama" and ".k_proj." in name:
            data = _permute(value, KV_HEADS)
        if arch == "gemma3" and name.endswith("norm.weight"):
            data = value + 1.0
        quantized = name.endswith(
            (
                "embed_tokens.weight",
                "q_proj.weight",
                "v_proj.weight",
                "gate_proj.weight",
                "down_proj.weight",
            )
        )
        if quantized:
            writer.add_tensor(_gguf_name(name, arch), quantize(data, Q8), raw_dtype=Q8)
        else:
            writer.add_tensor(_gguf_name(name, arch), np.ascontiguousarray(data, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _expected_config(arch: str, vocab: int) -> dict[str, Any]:
    common = {
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "intermediate_size": FFN,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "rms_norm_eps": 1e-6,
        "vocab_size": vocab,
        "max_position_embeddings": 256,
        "tie_word_embeddings": True,
    }
    if arch == "gemma3":
        return {
            **common,
            "model_type": "gemma3_text",
            "rope_theta": 1_000_000.0,
            "rope_local_base_freq": 10000.0,
            "sliding_window": 512,
            "sliding_window_pattern": 6,
            "query_pre_attn_scalar": HEAD_DIM,
        }
    return {**common, "model_type": arch, "rope_theta": 10000.0}


def _reference_model(config: dict[str, Any], weights: dict[str, np.ndarray]) -> Any:
    from mlx_lm.utils import _get_classes

    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    arrays = model.sanitize({k: mx.array(v) for k, v in weights.items()})
    model.load_weights(list(arrays.items()), strict=True)
    mx.eval(model.parameters())
    return model


def _greedy(model: Any, prompt: list[int], steps: int = 12) -> tuple[list[int], np.ndarray]:
    ids = list(prompt)
    first_logits = None
    for _ in range(steps):
        logits = model(mx.array([ids]))[0, -1]
        if first_logits is None:
            first_logits = np.array(logits)
        ids.append(int(mx.argmax(logits).item()))
    return ids[len(prompt) :], first_logits


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_converted_model_generates_same_tokens_as_original(tmp_path: Path, arch: str) -> None:
    from mlx_lm import load

    vocab = _byte_tokens()
    weights = _reference_weights(arch, len(vocab), np.random.default_rng(7))
    src = write_gguf(tmp_path / f"tiny-{arch}.gguf", arch, weights, vocab=vocab)

    dest = import_gguf(src, tmp_path / "out", progress=False)

    config = json.loads((dest / "config.json").read_text())
    expected = _expected_config(arch, len(vocab))
    assert {k: config[k] for k in expected} == expected
    model, _ = load(str(dest))
    # The stored tensors are exactly the originals (layouts undone, nothing lost).
    converted = dict(mx.load(str(dest / "model.safetensors")).items())
    assert sorted(converted) == sorted(weights)
    for name, value in weights.items():
        np.testing.assert_array_equal(np.array(converted[name]), value, err_msg=name)

    reference = _reference_model(expected, weights)
    prompt = [5, 80, 17, 101, 33, 64]
    want, want_logits = _greedy(reference, prompt)
    got, got_logits = _greedy(model, prompt)
    assert got == want
    np.testing.assert_allclose(got_logits, want_logits, rtol=1e-5, atol=1e-5)
    assert len(set(want)) > 1  # random weights, not a degenerate constant stream


def test_permutation_matters(tmp_path: Path) -> None:
    """Guard: reading llama Q/K as stored (still permuted) would change the generation."""
    vocab = _byte_tokens()
    weights = _reference_weights("llama", len(vocab), np.random.default_rng(7))
    permuted = dict(weights)
    for i in range(LAYERS):
        q, k = (
            f"model.layers.{i}.self_attn.q_proj.weight",
            f"model.layers.{i}.self_attn.k_proj.weight",
        )
        permuted[q], permuted[k] = _permute(weights[q], HEADS), _permute(weights[k], KV_HEADS)
    config = _expected_config("llama", len(vocab))
    prompt = [5, 80, 17, 101, 33, 64]
    _, right = _greedy(_reference_model(config, weights), prompt, steps=1)
    _, wrong = _greedy(_reference_model(config, permuted), prompt, steps=1)
    assert not np.allclose(right, wrong, atol=1e-3)


def test_tokenizer_and_chat_template(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    vocab = _byte_tokens()
    weights = _reference_weights("llama", len(vocab), np.random.default_rng(1))
    src = write_gguf(tmp_path / "tiny.gguf", "llama", weights, vocab=vocab, add_bos=True)
    dest = import_gguf(src, tmp_path / "out", progress=False)
    tok = AutoTokenizer.from_pretrained(str(dest))

    ids = tok.encode("hello world", add_special_tokens=False)
    assert [vocab[i] for i in ids] == ["hello", "Ġwor", "l", "d"]
    assert tok.decode(ids) == "hello world"
    assert tok.encode("hello")[0] == 0  # add_bos_token -> BOS post-processor
    text = "naïve café ✓ <|im_end|>"
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    assert tok.encode("<|im_end|>", add_special_tokens=False) == [2]  # special, matched whole

    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    tok_config = json.loads((dest / "tokenizer_config.json").read_text())
    assert tok_config["eos_token"] == "<|im_end|>" and tok_config["bos_token"] == "<|endoftext|>"
    assert tok_config["model_max_length"] == 256
    assert json.loads((dest / "config.json").read_text())["eos_token_id"] == 2


def test_sentencepiece_tokenizer(tmp_path: Path) -> None:
    """`tokenizer.ggml.model == "llama"`: merges derived from scores, byte fallback."""
    from transformers import AutoTokenizer

    from loopbus.models.gguf_tokenizer import write_tokenizer

    pieces = [
        "▁",
        "h",
        "e",
        "l",
        "o",
        "w",
        "r",
        "d",
        "he",
        "ll",
        "▁h",
        "▁w",
        "hell",
        "▁hell",
        "▁hello",
        "or",
        "▁wor",
        "ld",
        "▁world",
    ]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)
    scores = [0.0] * (3 + 256) + [-float(i) for i in range(len(pieces))]
    meta = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_bos_token": True,
    }
    summary = write_tokenizer(meta, tmp_path, context_length=128)
    assert summary.vocab_size == len(tokens) and summary.eos_token_ids == [2]
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    ids = tok.encode("hello world")
    assert [tokens[i] for i in ids] == ["<s>", "▁hello", "▁world"]
    assert tok.decode(ids, skip_special_tokens=True) == "hello world"
    # Characters outside the vocabulary fall back to their UTF-8 bytes and decode back.
    ids = tok.encode("hé", add_special_tokens=False)
    assert "<0xC3>" in [tokens[i] for i in ids]
    assert tok.decode(ids) == "hé"


def test_garbage_file_is_unsupported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"this is not a gguf file at all" * 10)
    with pytest.raises(UnsupportedGGUF, match="not a readable GGUF"):
        import_gguf(bad, tmp_path / "out", progress=False)
    with pytest.raises(UnsupportedGGUF, match="no such file"):
        import_gguf(tmp_path / "missing.gguf", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_unknown_architecture_is_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "mamba.gguf"
    writer = gguf.GGUFWriter(str(path), "mamba")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnsupportedGGUF, match="'mamba' is not supported"):
        import_gguf(path, tmp_path / "out", progress=False)
    assert gguf_summary(path)["supported"] is False
    assert list(tmp_path.iterdir()) == [path]  # no temporary directory left behind


def test_existing_destination_and_summaries(tmp_path: Path) -> None:
    vocab = _byte_tokens()
    weights = _reference_weights("llama", len(vocab), np.random.default_rng(2))
    src = write_gguf(tmp_path / "tiny.gguf", "llama", weights, vocab=vocab)
    dest = import_gguf(src, tmp_path / "out", progress=False, dtype="bfloat16")
    with pytest.raises(ModelError, match="already exists"):
        import_gguf(src, dest, progress=False)
    assert import_gguf(src, dest, progress=False, overwrite=True) == dest

    info = model_dir_summary(dest)
    assert info["architecture"] == "llama" and info["vocab_size"] == len(vocab)
    assert info["context_window"] == 256 and info["dtype"] == "float32"
    assert info["chat_template"] is True
    raw = gguf_summary(src)
    assert raw["architecture"] == "llama" and raw["supported"] is True
    assert raw["context_window"] == 256 and "Q8_0" in raw["dtype"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tiny.gguf"]


@pytest.mark.parametrize(
    ("pre", "pieces"),
    [
        ("default", ["Hi", "Ġ12345", "Ġworld"]),
        ("smollm", ["Hi", "Ġ", "1", "2", "3", "4", "5", "Ġworld"]),
        ("llama-bpe", ["Hi", "Ġ", "123", "45", "Ġworld"]),
        ("qwen2", ["Hi", "Ġ", "1", "2", "3", "4", "5", "Ġworld"]),
    ],
)
def test_byte_level_pre_tokenizers(tmp_path: Path, pre: str, pieces: list[str]) -> None:
    """`tokenizer.ggml.pre` names select the original split rules (digits differ most)."""
    from tokenizers import Tokenizer

    from loopbus.models.gguf_tokenizer import write_tokenizer

    vocab = _byte_tokens()
    meta = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": vocab,
        "tokenizer.ggml.token_type": [3 if t in SPECIALS else 1 for t in vocab],
        "tokenizer.ggml.merges": [" ".join(m) for m in MERGES],
    }
    write_tokenizer(meta, tmp_path, context_length=None)
    tok = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert [p for p, _ in tok.pre_tokenizer.pre_tokenize_str("Hi 12345 world")] == pieces
    assert tok.decode(tok.encode("Hi 12345 world").ids) == "Hi 12345 world"
