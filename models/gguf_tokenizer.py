"""Rebuild a Hugging Face ``tokenizer.json`` from the tokenizer a GGUF file carries.

llama.cpp stores the whole tokenizer in the GGUF metadata (``tokenizer.ggml.*``): the token
strings, their types, BPE merges or SentencePiece scores, special token ids, the chat template
and the add-BOS/EOS flags. Two families are handled:

* ``tokenizer.ggml.model == "gpt2"`` (SmolLM2, Qwen2, Llama 3, ...): byte-level BPE. The
  pre-tokenizer regex is not stored, only a name (``tokenizer.ggml.pre``); the table below maps
  the names llama.cpp uses to the split rules of the original ``tokenizer.json``.
* ``tokenizer.ggml.model == "llama"`` (Llama 2, Mistral, Gemma 3, ...): SentencePiece BPE with
  byte fallback. GGUF keeps scores instead of merges, so merges are derived from the scores the
  way ``transformers``' SentencePiece converter does (every split of a token into two in-vocab
  pieces, ranked by the score of the merged token).

A BOS post-processor is added when the file says ``add_bos_token`` (mlx-lm and transformers
then prepend BOS when encoding, exactly like llama.cpp does).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UnsupportedGGUF

# llama.cpp token types (llama_token_type / gguf TokenType).
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6

# Split rules of the byte-level pre-tokenizers, keyed by `tokenizer.ggml.pre` (llama-vocab.cpp).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_SPLIT: dict[str, str] = {
    "llama-bpe": _LLAMA3_SPLIT,
    "llama3": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT,
    "deepseek-r1-qwen": _QWEN2_SPLIT,
}
# GPT-2's own regex preceded by splitting every digit apart (StarCoder-family tokenizers).
_PRE_DIGITS = {"smollm", "starcoder", "refact", "codeshell"}


@dataclass(frozen=True)
class TokenizerSummary:
    """What the model config needs to know about the rebuilt tokenizer."""

    vocab_size: int
    bos_token_id: int | None
    eos_token_ids: list[int]
    chat_template: str | None


def _field(meta: Mapping[str, Any], key: str, default: Any = None) -> Any:
    return meta.get(f"tokenizer.ggml.{key}", default)


def _token(tokens: list[str], idx: Any) -> str | None:
    if idx is None or not 0 <= int(idx) < len(tokens):
        return None
    return tokens[int(idx)]


def _byte_level(meta: Mapping[str, Any], tokens: list[str]) -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    merges = [tuple(m.split(" ", 1)) for m in _field(meta, "merges", [])]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    pre = str(_field(meta, "pre", "default"))
    if pre in _PRE_SPLIT:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_PRE_SPLIT[pre]), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    elif pre in _PRE_DIGITS:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    else:
        # "default"/"gpt2" and names we do not know: GPT-2's own split rule.
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def _sentencepiece_merges(
    tokens: list[str], scores: list[float], types: list[int]
) -> list[tuple[str, str]]:
    """BPE merges implied by SentencePiece scores (higher score = merged earlier).

    Only normal pieces are merge results; control, byte and unused tokens are matched whole.
    """
    vocab = {tok: i for i, tok in enumerate(tokens)}
    ranked: list[tuple[float, int, int, str, str]] = []
    for merged, idx in vocab.items():
        if types[idx] != _NORMAL:
            continue
        for cut in range(1, len(merged)):
            left, right = merged[:cut], merged[cut:]
            if left in vocab and right in vocab:
                ranked.append((-scores[idx], vocab[left], vocab[right], left, right))
    ranked.sort()
    return [(left, right) for _, _, _, left, right in ranked]


def _sentencepiece(meta: Mapping[str, Any], tokens: list[str], types: list[int]) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    scores = [float(s) for s in _field(meta, "scores", [0.0] * len(tokens))]
    merges = _sentencepiece_merges(tokens, scores, types)
    vocab = {tok: i for i, tok in enumerate(tokens)}
    unk = _token(tokens, _field(meta, "unknown_token_id", 0))
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True)
    )
    add_space = bool(_field(meta, "add_space_prefix", True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="\u2581", prepend_scheme="first" if add_space else "never", split=False
    )
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_space:
        steps.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(steps)
    return tok


def write_tokenizer(
    meta: Mapping[str, Any], dest: Path, *, context_length: int | None
) -> TokenizerSummary:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``.

    ``meta`` maps GGUF metadata keys to plain Python values. Raises :class:`UnsupportedGGUF`
    when the file carries no tokenizer or one of an unknown kind.
    """
    from tokenizers import AddedToken, processors

    kind = _field(meta, "model")
    tokens = [str(t) for t in _field(meta, "tokens", [])]
    if kind is None or not tokens:
        raise UnsupportedGGUF(
            "the GGUF file carries no tokenizer (tokenizer.ggml.model/tokens missing); "
            "re-export it with llama.cpp's convert_hf_to_gguf.py, which embeds the tokenizer"
        )
    types = [int(t) for t in _field(meta, "token_type", [_NORMAL] * len(tokens))]
    if kind == "gpt2":
        tok = _byte_level(meta, tokens)
    elif kind == "llama":
        tok = _sentencepiece(meta, tokens, types)
    else:
        raise UnsupportedGGUF(
            f"GGUF tokenizer type {kind!r} is not supported (only 'gpt2' byte-level BPE and "
            "'llama' SentencePiece); convert the original Hugging Face model with mlx_lm.convert"
        )

    # Control/user-defined/unused tokens are matched whole before the BPE model runs.
    added = [
        AddedToken(t, special=types[i] in (_CONTROL, _UNUSED), normalized=False)
        for i, t in enumerate(tokens)
        if types[i] in (_CONTROL, _USER_DEFINED, _UNUSED)
    ]
    tok.add_tokens(added)

    bos = _token(tokens, _field(meta, "bos_token_id"))
    eos = _token(tokens, _field(meta, "eos_token_id"))
    add_bos = bool(_field(meta, "add_bos_token", False)) and bos is not None
    add_eos = bool(_field(meta, "add_eos_token", False)) and eos is not None
    if add_bos or add_eos:
        single = " ".join([f"{bos}:0"] * add_bos + ["$A:0"] + [f"{eos}:0"] * add_eos)
        pair = single + " " + " ".join([f"{bos}:1"] * add_bos + ["$B:1"] + [f"{eos}:1"] * add_eos)
        ends = [bos if add_bos else None, eos if add_eos else None]
        special = [(t, tokens.index(t)) for t in dict.fromkeys(ends) if t is not None]
        tok.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=special
        )
    elif kind == "gpt2":
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.save(str(dest / "tokenizer.json"))

    specials: dict[str, str] = {}
    for name, key in (
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("unk_token", "unknown_token_id"),
        ("pad_token", "padding_token_id"),
    ):
        if (value := _token(tokens, _field(meta, key))) is not None:
            specials[name] = value
    chat_template = meta.get("tokenizer.chat_template")
    config: dict[str, Any] = {
        # The generic fast class loads tokenizer.json as written; a model-specific class
        # (LlamaTokenizer, ...) would rebuild parts of it from its own defaults.
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(context_length) if context_length else 1_000_000_000,
    }
    if chat_template:
        config["chat_template"] = str(chat_template)
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    (dest / "special_tokens_map.json").write_text(
        json.dumps(specials, indent=2, ensure_ascii=False)
    )

    eos_ids: list[int] = []
    for key in ("eos_token_id", "eot_token_id", "eom_token_id"):
        value = _field(meta, key)
        if value is not None and 0 <= int(value) < len(tokens) and int(value) not in eos_ids:
            eos_ids.append(int(value))
    bos_id = _field(meta, "bos_token_id")
    return TokenizerSummary(
        vocab_size=len(tokens),
        bos_token_id=int(bos_id) if bos_id is not None else None,
        eos_token_ids=eos_ids,
        chat_template=str(chat_template) if chat_template else None,
    )
