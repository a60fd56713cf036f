"""Convert a GGUF file (llama.cpp's format) into a standard mlx-lm model directory.

mlx-lm has no GGUF loader, and ``mx.load`` reads only Q4_0/Q4_1/Q8_0 GGUF tensors (K-quants
fail); MLX-quantized matmuls are also very slow on CPU. So the importer dequantizes every
tensor with the ``gguf`` package (numpy, every quantization type) and writes plain
``safetensors`` that ``mlx_lm.load`` reads directly:

* ``config.json``: mlx-lm's config for the architecture (``llama``, ``qwen2``, ``qwen3``,
  ``gemma3`` -> ``gemma3_text``). mlx-lm 0.32 reads ``rope_theta`` (and for Gemma 3
  ``rope_local_base_freq``, ``sliding_window_pattern``) at the top level, so they go there.
* ``model.safetensors`` (or shards of at most 2 GiB + an index): tensors renamed from GGUF
  names (``blk.N.attn_q.weight``) to Hugging Face names
  (``model.layers.N.self_attn.q_proj.weight``). llama.cpp's converter permutes the rows of the
  Q and K projections of llama-architecture models for its rotary kernel; that is undone here.
  Gemma stores RMSNorm weights as ``1 + w``; mlx-lm's Gemma norm adds the 1 itself, so 1 is
  subtracted. Without ``output.weight`` the embeddings are tied.
* ``tokenizer.json``, ``tokenizer_config.json`` (with the chat template and special tokens),
  rebuilt from the GGUF metadata by :mod:`loopbus.models.gguf_tokenizer`.
* ``loopbus_import.json``: where the directory came from (source file, architecture, dtype).

Weight dtype: by default float32 on Linux/Intel (only float32 matmuls are fast on the CPU
backend, see :mod:`loopbus.models.blas`) and bfloat16 on Apple Silicon (Metal; halves the disk).
Dequantized GGUF values are exactly representable in float32, so a float32 import computes
the same function as the original file.

The conversion writes into a temporary sibling directory and renames it into place, so an
interrupted import never leaves a half-written model behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .blas import default_weight_dtype
from .errors import ModelError, UnsupportedGGUF
from .gguf_tokenizer import TokenizerSummary, write_tokenizer

#: Largest safetensors shard written (bytes); bounds the importer's peak memory.
SHARD_BYTES = 2 << 30
IMPORT_MARKER = "loopbus_import.json"

# Per-layer GGUF tensor names -> Hugging Face names (llama.cpp's gguf/tensor_mapping.py, inverted).
_LAYER_NAMES: dict[str, str] = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
_GLOBAL_NAMES: dict[str, str] = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
# Tensors llama.cpp derives from the config and mlx-lm recomputes itself.
_SKIPPED = {"rope_freqs.weight"}
_LAYER_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")
_GLOBAL_RE = re.compile(r"^([a-z_]+)\.(weight|bias)$")


@dataclass(frozen=True)
class _Arch:
    """How one GGUF architecture maps onto an mlx-lm model type."""

    model_type: str
    hf_class: str
    permute_qk: bool = False  # llama.cpp permuted Q/K rows (llama family only)
    norm_plus_one: bool = False  # RMSNorm weights stored as 1 + w (Gemma)
    # GGUF's ffn_norm is Gemma 3's *pre*-feed-forward norm.
    renames: dict[str, str] = field(default_factory=dict)


_ARCHS: dict[str, _Arch] = {
    "llama": _Arch("llama", "LlamaForCausalLM", permute_qk=True),
    "qwen2": _Arch("qwen2", "Qwen2ForCausalLM"),
    "qwen3": _Arch("qwen3", "Qwen3ForCausalLM"),
    "gemma3": _Arch(
        "gemma3_text",
        "Gemma3ForCausalLM",
        norm_plus_one=True,
        renames={"ffn_norm": "pre_feedforward_layernorm"},
    ),
}
SUPPORTED_ARCHITECTURES = tuple(_ARCHS)


def open_gguf(src: Path) -> Any:
    """A ``gguf.GGUFReader`` for ``src``; :class:`UnsupportedGGUF` when unreadable."""
    import gguf

    if not src.is_file():
        raise UnsupportedGGUF(f"{src}: no such file; pass the path of a .gguf model file")
    with src.open("rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise UnsupportedGGUF(
            f"{src} is not a readable GGUF file (it does not start with the bytes 'GGUF'); "
            "pass a llama.cpp .gguf model file, and check that the download is complete"
        )
    try:
        return gguf.GGUFReader(src)
    except Exception as exc:  # the reader raises ValueError/struct errors/IndexError
        raise UnsupportedGGUF(
            f"{src} is not a readable GGUF file ({type(exc).__name__}: {exc}); "
            "check that the download is complete (GGUF files start with the bytes 'GGUF')"
        ) from exc


def read_metadata(reader: Any) -> dict[str, Any]:
    """GGUF key/value metadata as plain Python values (strings, numbers, lists)."""
    meta: dict[str, Any] = {}
    for key, fld in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        try:
            meta[key] = fld.contents()
        except Exception:  # an exotic value type we do not need
            continue
    return meta


def _f32(value: Any) -> float:
    import numpy as np

    return float(repr(np.float32(value)).removeprefix("np.float32(").removesuffix(")"))


def _hparams(meta: dict[str, Any], arch: str) -> dict[str, Any]:
    def get(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    hidden = int(get("embedding_length"))
    heads = int(get("attention.head_count"))
    kv_heads = get("attention.head_count_kv", heads)
    head_dim = int(get("attention.key_length", hidden // heads))
    return {
        "hidden_size": hidden,
        "num_hidden_layers": int(get("block_count")),
        "intermediate_size": int(get("feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(kv_heads),
        "head_dim": head_dim,
        # Stored as float32: 1e-5 reads back as 9.99999974e-06; print it the way it was written.
        "rms_norm_eps": _f32(get("attention.layer_norm_rms_epsilon", 1e-6)),
        "max_position_embeddings": int(get("context_length", 4096)),
    }


def build_config(
    meta: dict[str, Any], *, vocab_size: int, tied: bool, tokenizer: TokenizerSummary | None
) -> dict[str, Any]:
    """The mlx-lm ``config.json`` for a GGUF file's metadata."""
    arch = str(meta.get("general.architecture", ""))
    spec = _ARCHS.get(arch)
    if spec is None:
        raise UnsupportedGGUF(
            f"GGUF architecture {arch or '(none)'!r} is not supported; loopbus imports "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}. For other models use a Hugging Face "
            "checkpoint with mlx_lm.convert, or serve the GGUF with llama.cpp and use "
            "--model openai:http://127.0.0.1:8080/v1#MODEL"
        )
    try:
        hp = _hparams(meta, arch)
    except (TypeError, ValueError) as exc:
        raise UnsupportedGGUF(
            f"GGUF metadata lacks {arch}.* hyper-parameters ({exc}); the file is incomplete"
        ) from exc
    config: dict[str, Any] = {
        "architectures": [spec.hf_class],
        "model_type": spec.model_type,
        **hp,
        "vocab_size": vocab_size,
        "tie_word_embeddings": tied,
        "rope_theta": _f32(meta.get(f"{arch}.rope.freq_base", 10000.0)),
    }
    scaling = meta.get(f"{arch}.rope.scaling.type")
    factor = meta.get(f"{arch}.rope.scaling.factor")
    if scaling == "linear" and factor and float(factor) != 1.0:
        config["rope_scaling"] = {"type": "linear", "rope_type": "linear", "factor": float(factor)}
    if arch == "llama":
        config.update(attention_bias=False, mlp_bias=False)
    if arch == "gemma3":
        # llama.cpp hard-codes these for Gemma 3 (llama-model.cpp) instead of storing them.
        big = hp["num_hidden_layers"] == 62  # the 27B scales queries by hidden/heads
        config.update(
            rope_local_base_freq=10000.0,
            sliding_window=int(meta.get("gemma3.attention.sliding_window", 512)),
            sliding_window_pattern=6,
            query_pre_attn_scalar=(
                hp["hidden_size"] // hp["num_attention_heads"] if big else hp["head_dim"]
            ),
        )
    if tokenizer is not None:
        if tokenizer.bos_token_id is not None:
            config["bos_token_id"] = tokenizer.bos_token_id
        if tokenizer.eos_token_ids:
            ids = tokenizer.eos_token_ids
            config["eos_token_id"] = ids[0] if len(ids) == 1 else ids
    return config


def _unpermute(weights: Any, n_head: int) -> Any:
    """Invert llama.cpp's ``LlamaModel.permute`` of Q/K rows (interleaved -> half-split rope)."""
    shape = weights.shape
    return (
        weights.reshape(n_head, shape[0] // n_head // 2, 2, *shape[1:])
        .swapaxes(1, 2)
        .reshape(shape)
    )


def hf_name(gguf_name: str, arch: str) -> str | None:
    """The Hugging Face tensor name for a GGUF tensor name (None: tensor is not needed)."""
    if gguf_name in _SKIPPED:
        return None
    spec = _ARCHS[arch]
    if m := _LAYER_RE.match(gguf_name):
        layer, base, kind = m.groups()
        target = spec.renames.get(base) or _LAYER_NAMES.get(base)
        if target is not None:
            return f"model.layers.{layer}.{target}.{kind}"
    elif m := _GLOBAL_RE.match(gguf_name):
        base, kind = m.groups()
        if base in _GLOBAL_NAMES:
            return f"{_GLOBAL_NAMES[base]}.{kind}"
    raise UnsupportedGGUF(
        f"GGUF tensor {gguf_name!r} has no counterpart in mlx-lm's {spec.model_type} model; "
        "the file is probably a variant (vision tower, MoE, ...) loopbus cannot import"
    )


def _dequantized(tensor: Any) -> Any:
    import numpy as np
    from gguf.quants import dequantize

    try:
        values = dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError as exc:
        raise UnsupportedGGUF(
            f"tensor {tensor.name!r} uses {tensor.tensor_type.name}, which the gguf package "
            f"cannot dequantize ({exc}); upgrade gguf or re-quantize the file"
        ) from exc
    shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
    return np.asarray(values, dtype=np.float32).reshape(shape)


def _converted(reader: Any, meta: dict[str, Any], arch: str) -> Iterator[tuple[str, Any]]:
    """(hf_name, float32 numpy array) for every tensor, with GGUF-specific layouts undone."""
    spec = _ARCHS[arch]
    heads = int(meta[f"{arch}.attention.head_count"])
    kv_heads = int(meta.get(f"{arch}.attention.head_count_kv", heads))
    for tensor in reader.tensors:
        name = hf_name(tensor.name, arch)
        if name is None:
            continue
        values = _dequantized(tensor)
        if spec.permute_qk and ".self_attn.q_proj." in name:
            values = _unpermute(values, heads)
        elif spec.permute_qk and ".self_attn.k_proj." in name:
            values = _unpermute(values, kv_heads)
        if spec.norm_plus_one and name.endswith("norm.weight"):
            values = values - 1.0
        yield name, values


class _ShardWriter:
    """Collects tensors and writes safetensors shards of at most :data:`SHARD_BYTES`."""

    def __init__(self, dest: Path, dtype: str) -> None:
        self.dest, self.dtype = dest, dtype
        self.pending: dict[str, Any] = {}
        self.pending_bytes = 0
        self.files: list[tuple[Path, list[str]]] = []

    def add(self, name: str, values: Any) -> None:
        import mlx.core as mx

        array = mx.array(values)
        if self.dtype != "float32":
            array = array.astype(getattr(mx, self.dtype))
        mx.eval(array)
        self.pending[name] = array
        self.pending_bytes += array.nbytes
        if self.pending_bytes >= SHARD_BYTES:
            self.flush()

    def flush(self) -> None:
        import mlx.core as mx

        if not self.pending:
            return
        path = self.dest / f"shard-{len(self.files):05d}.safetensors"
        mx.save_safetensors(str(path), self.pending, metadata={"format": "mlx"})
        self.files.append((path, list(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def finish(self) -> None:
        """Name the shards the way mlx-lm and transformers expect."""
        self.flush()
        if len(self.files) == 1:
            self.files[0][0].rename(self.dest / "model.safetensors")
            return
        total, weight_map = len(self.files), {}
        for i, (path, names) in enumerate(self.files, 1):
            final = f"model-{i:05d}-of-{total:05d}.safetensors"
            path.rename(self.dest / final)
            weight_map.update(dict.fromkeys(names, final))
        index = {"metadata": {}, "weight_map": weight_map}
        (self.dest / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _progress(enabled: bool) -> Any:
    """A rich progress bar on stderr (a no-op object when disabled)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    console = Console(stderr=True, quiet=not enabled)
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
        disable=not enabled,
    )


def default_dest(src: Path) -> Path:
    """Where ``import_gguf`` writes when no destination is given: the loopbus model cache."""
    from .embedded import models_cache_dir

    return models_cache_dir() / src.name.removesuffix(".gguf")


def import_gguf(
    src: str | os.PathLike[str],
    dest: str | os.PathLike[str] | None = None,
    *,
    progress: bool = True,
    dtype: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert the GGUF file ``src`` into an mlx-lm model directory and return its path.

    ``dest`` defaults to ``$LOOPBUS_CACHE/models/<file stem>``. ``dtype`` is the stored weight
    dtype (``float32``, ``bfloat16`` or ``float16``; default :func:`loopbus.models.blas.default_weight_dtype`).
    An existing ``dest`` is an error unless ``overwrite``. Raises :class:`UnsupportedGGUF` for
    unreadable files, unknown architectures or tensor types.

    Example::

        path = import_gguf("SmolLM2-135M-Instruct.Q4_1.gguf", "models/smollm2")
        model, tokenizer = mlx_lm.load(str(path))
    """
    src_path = Path(src).expanduser()
    reader = open_gguf(src_path)
    meta = read_metadata(reader)
    arch = str(meta.get("general.architecture", ""))
    dtype = dtype or default_weight_dtype()
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ModelError(f"unknown weight dtype {dtype!r}; use float32, bfloat16 or float16")
    names = {t.name for t in reader.tensors}
    if "token_embd.weight" not in names:
        raise UnsupportedGGUF(f"{src_path} has no token_embd.weight tensor; not a language model")
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    vocab_size = int(embd.shape.tolist()[-1])
    # Fails early (before any dequantization) for unknown architectures.
    config = build_config(
        meta, vocab_size=vocab_size, tied="output.weight" not in names, tokenizer=None
    )

    dest_path = Path(dest).expanduser() if dest is not None else default_dest(src_path)
    if dest_path.exists() and any(dest_path.iterdir()) and not overwrite:
        raise ModelError(
            f"{dest_path} already exists; remove it, pass another destination, or use --overwrite"
        )
    dest_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest_path.name}.", suffix=".tmp", dir=dest_path.parent))
    started = time.perf_counter()
    try:
        tokenizer = write_tokenizer(meta, tmp, context_length=config["max_position_embeddings"])
        config = build_config(
            meta, vocab_size=vocab_size, tied="output.weight" not in names, tokenizer=tokenizer
        )
        config["torch_dtype"] = dtype
        writer = _ShardWriter(tmp, dtype)
        with _progress(progress) as bar:
            task = bar.add_task(f"importing {src_path.name}", total=len(reader.tensors))
            for name, values in _converted(reader, meta, arch):
                writer.add(name, values)
                bar.advance(task)
            bar.update(task, completed=len(reader.tensors))
        writer.finish()
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        marker = {
            "source": str(src_path.resolve()),
            "source_bytes": src_path.stat().st_size,
            "architecture": arch,
            "model_type": config["model_type"],
            "dtype": dtype,
            "file_type": meta.get("general.file_type"),
            "name": meta.get("general.name"),
            "seconds": round(time.perf_counter() - started, 2),
        }
        (tmp / IMPORT_MARKER).write_text(json.dumps(marker, indent=2))
        _install(tmp, dest_path, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest_path


def _install(tmp: Path, dest: Path, *, overwrite: bool) -> None:
    """Move the finished directory into place with a rename (atomic on one filesystem)."""
    if dest.exists() and overwrite:
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        dest.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    elif dest.exists() and not any(dest.iterdir()):
        dest.rmdir()
    try:
        os.rename(tmp, dest)
    except OSError as exc:  # another process installed a model there in the meantime
        raise ModelError(
            f"{dest} appeared while importing (another import finished first); "
            "use it, or pass --overwrite to replace it"
        ) from exc
    os.chmod(dest, 0o755)


if __name__ == "__main__":  # pragma: no cover - debugging aid
    print(import_gguf(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
