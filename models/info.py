"""Describe a model without loading it: GGUF files, mlx-lm directories and model specs.

Used by ``loopbus models info``. Everything here reads metadata only (GGUF key/values,
``config.json``, a safetensors header), so it is quick even for large models.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from .errors import ModelError
from .gguf_import import SUPPORTED_ARCHITECTURES, open_gguf, read_metadata


def gguf_summary(src: str | os.PathLike[str]) -> dict[str, Any]:
    """Architecture, vocabulary, context window and tensor types of a GGUF file (no conversion)."""

    reader = open_gguf(Path(src))
    meta = read_metadata(reader)
    arch = str(meta.get("general.architecture", ""))
    types = Counter(t.tensor_type.name for t in reader.tensors)
    return {
        "path": str(src),
        "format": "gguf",
        "name": meta.get("general.name"),
        "architecture": arch,
        "supported": arch in SUPPORTED_ARCHITECTURES,
        "vocab_size": len(meta.get("tokenizer.ggml.tokens", []) or []),
        "context_window": meta.get(f"{arch}.context_length"),
        "dtype": ", ".join(f"{k} x{v}" for k, v in types.most_common()),
        "layers": meta.get(f"{arch}.block_count"),
        "chat_template": bool(meta.get("tokenizer.chat_template")),
    }


def model_dir_summary(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The same summary for an mlx-lm model directory (reads config.json and a weight header)."""
    root = Path(path)
    config_file = root / "config.json"
    if not config_file.is_file():
        raise ModelError(f"{root} is not a model directory (no config.json)")
    config = json.loads(config_file.read_text())
    dtype = config.get("torch_dtype") or config.get("dtype")
    weights = sorted(root.glob("*.safetensors"))
    if weights:
        dtype = _safetensors_dtype(weights[0]) or dtype
    tok_config_file = root / "tokenizer_config.json"
    tok_config = json.loads(tok_config_file.read_text()) if tok_config_file.is_file() else {}
    return {
        "path": str(root),
        "format": "mlx",
        "architecture": config.get("model_type"),
        "vocab_size": config.get("vocab_size"),
        "context_window": config.get("max_position_embeddings")
        or (config.get("text_config") or {}).get("max_position_embeddings"),
        "dtype": dtype,
        "layers": config.get("num_hidden_layers"),
        "chat_template": bool(tok_config.get("chat_template"))
        or (root / "chat_template.jinja").is_file(),
    }


def _safetensors_dtype(path: Path) -> str | None:
    """The dtype of the first tensor in a safetensors file, from its JSON header."""
    names = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "U32": "quantized (uint32)"}
    with path.open("rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        if not 0 < size < 100 << 20:
            return None
        header = json.loads(fh.read(size))
    for key, value in header.items():
        if key != "__metadata__":
            return names.get(value.get("dtype"), str(value.get("dtype")).lower())
    return None


def describe(spec: str | None) -> dict[str, Any]:
    """Summary of whatever a model spec or a ``.gguf`` path names, plus the CPU/BLAS setup.

    ``None``/``"default"`` imports the embedded model on first use; ``openai:`` specs ask the
    server (through :func:`models.load_runtime`) for what it reports.
    """
    from . import blas
    from .runtime import parse_spec, resolve_mlx_target

    text = (spec or "").strip()
    if text.endswith(".gguf") and Path(text).expanduser().is_file():
        info = gguf_summary(Path(text).expanduser())
    else:
        parsed = parse_spec(text)
        if parsed.backend == "openai":
            from .runtime import load_runtime

            runtime = load_runtime(text)
            info = {
                "spec": text,
                "format": "openai",
                "context_window": runtime.context_window,
                "supports_schema": runtime.supports_schema,
            }
            return info
        if parsed.backend == "default":
            from .embedded import ensure_default_model

            info = model_dir_summary(ensure_default_model())
        else:
            info = model_dir_summary(resolve_mlx_target(parsed.target))
    info["compute_dtype"] = blas.compute_dtype() or "as stored (Metal)"
    info["openblas"] = blas.openblas_path() or "not found (reference BLAS: slow float32 matmuls)"
    return info
