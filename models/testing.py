"""Build a tiny *real* mlx-lm model for tests and benchmarks (never a mock).

:func:`build_tiny_model` writes a standard mlx-lm llama model directory: seeded random float32
weights (hidden 64, 2 layers), a byte-level BPE tokenizer trained with the ``tokenizers``
library on a fixed, generated corpus (JSON-ish and English text, so tokens span JSON
punctuation the way real vocabularies do), ChatML special tokens and a ChatML chat template.
Everything is deterministic: two builds produce byte-identical files. Greedy generation
produces deterministic garbage, which is exactly what cache-equality and constraint tests need.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_WORDS = (
    "the agent reads a file and writes a finding to the bus then waits for the next event "
    "tool call result error outcome decision run task python code string number list object "
    "type name path line value true false null search grep open close count sum hello world "
    "model token cache prefix schema union member field answer question because therefore"
).split()


def _corpus(seed: int) -> list[str]:
    """A fixed pseudo-random corpus of prose and JSON documents (deterministic per seed)."""
    rng = random.Random(seed)
    docs: list[str] = []
    for _ in range(400):
        docs.append(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 30))) + ".")
        obj = {
            "type": rng.choice(["RunPython", "Answer", "ReadFile", "Search"]),
            rng.choice(_WORDS): rng.choice(
                [rng.randint(-999, 9999), rng.choice(_WORDS), True, None, [1, 2, 3]]
            ),
            "code": f"print({rng.randint(0, 99)} + {rng.randint(0, 99)})",
        }
        docs.append(json.dumps(obj, separators=(",", ":") if rng.random() < 0.5 else None))
    return docs


def build_tokenizer(dest: Path, *, vocab_size: int = 1024, seed: int = 0) -> int:
    """Train the tiny byte-level BPE and write tokenizer files into ``dest``; returns vocab size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    tok.save(str(dest / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|im_start|>",
        "eos_token": "<|im_end|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "add_bos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
        "chat_template": CHATML_TEMPLATE,
    }
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (dest / "special_tokens_map.json").write_text(
        json.dumps({k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")})
    )
    return tok.get_vocab_size()


def build_tiny_model(
    dest: Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    vocab_size: int = 1024,
    seed: int = 0,
) -> Path:
    """Write a tiny llama model directory into ``dest`` (created if needed) and return it."""
    import numpy as np

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    n_vocab = build_tokenizer(dest, vocab_size=vocab_size, seed=seed)
    eos_id = SPECIAL_TOKENS.index("<|im_end|>")
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "intermediate_size": hidden_size * 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "vocab_size": n_vocab,
        "max_position_embeddings": 2048,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "bos_token_id": SPECIAL_TOKENS.index("<|im_start|>"),
        "eos_token_id": eos_id,
        "torch_dtype": "float32",
    }
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    (dest / "generation_config.json").write_text(json.dumps({"eos_token_id": eos_id}))

    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models.llama import Model, ModelArgs

    model = Model(ModelArgs.from_dict(config))
    # numpy's generator (not mx.random) so weights are identical on every platform.
    rng = np.random.default_rng(seed)
    weights: dict[str, mx.array] = {}
    params = tree_flatten(model.parameters())
    assert isinstance(params, list)  # a list unless a dict `destination` is passed
    for name, param in params:
        if name.endswith("norm.weight"):
            value = np.ones(param.shape, dtype=np.float32)
        elif "embed_tokens" in name:
            # Large embeddings make the (tied) output logits peaky: no near-ties under greedy.
            value = rng.normal(0.0, 0.5, param.shape).astype(np.float32)
        else:
            # 3x the usual init scale: varied (not one repeated token) greedy output.
            value = rng.normal(0.0, 3.0 / np.sqrt(param.shape[-1]), param.shape)
            value = value.astype(np.float32)
        weights[name] = mx.array(value)
    mx.save_safetensors(str(dest / "model.safetensors"), weights, metadata={"format": "mlx"})
    return dest
