"""LoRA adapters for model specs (``SPEC+adapter:DIR``) and the adapters shipped with loopbus.

An adapter directory is what ``mlx_lm.lora`` writes: ``adapter_config.json`` (LoRA rank, scale,
layers) and ``adapters.safetensors``. Adapters trained by ``loopbus distill`` also record the
identity of their base model under ``"loopbus_base"`` in the config (:func:`base_identity`:
architecture sizes plus a hash of a strided sample of the embedding weights), so loading one on
another base model fails with :class:`~loopbus.models.errors.AdapterMismatch` instead of generating
nonsense. Foreign adapters (no such key) are checked by tensor shapes only.

``DIR`` is a directory, or the name of an adapter shipped in this package (a sub-folder of
``models/adapters/``, e.g. ``default+adapter:smollm2-agents``).

This module imports no mlx at import time: :func:`resolve_adapter` and :func:`check_config`
are cheap; :func:`apply_adapter` and :func:`base_identity` run on a loaded model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from loopbus.models.errors import AdapterMismatch, AdapterNotFound

SHIPPED = Path(__file__).resolve().parent
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapters.safetensors"
#: The key of ``adapter_config.json`` holding the base model's identity.
BASE_KEY = "loopbus_base"
#: Config keys that must match between the adapter's base model and the model it is loaded on.
ARCH_KEYS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
)
_SAMPLE = 4096  # embedding values hashed for the weights fingerprint


def shipped_adapters() -> list[str]:
    """Names of the adapters shipped in ``models/adapters/``."""
    return sorted(p.name for p in SHIPPED.iterdir() if p.is_dir() and (p / CONFIG_FILE).is_file())


def resolve_adapter(target: str) -> Path:
    """The adapter directory ``target`` names (a path, else a shipped adapter's name).

    Raises :class:`AdapterNotFound` when it is missing or lacks its config or weights.
    """
    text = target.strip()
    if not text:
        raise AdapterNotFound("'+adapter:' needs a directory, e.g. default+adapter:./my-adapter")
    path = Path(text).expanduser()
    if not path.exists() and "/" not in text and (SHIPPED / text).is_dir():
        path = SHIPPED / text
    if not path.is_dir():
        shipped = ", ".join(shipped_adapters()) or "none"
        raise AdapterNotFound(
            f"adapter directory {text} does not exist (shipped adapters: {shipped}); train one "
            "with `loopbus distill train DATA_DIR --out DIR`"
        )
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (path / name).is_file()]
    if missing:
        raise AdapterNotFound(
            f"{path} is not a LoRA adapter directory: no {' or '.join(missing)} (mlx_lm.lora "
            "and `loopbus distill train` write both)"
        )
    return path


def read_config(adapter: Path) -> dict[str, Any]:
    """The adapter's ``adapter_config.json`` (AdapterNotFound when unreadable)."""
    try:
        config = json.loads((adapter / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterNotFound(f"{adapter / CONFIG_FILE} is not readable JSON: {exc}") from None
    lora = isinstance(config, dict) and config.get("fine_tune_type", "lora") != "full"
    if not isinstance(config, dict) or (
        lora and not isinstance(config.get("lora_parameters"), dict)
    ):
        raise AdapterNotFound(
            f"{adapter / CONFIG_FILE} has no lora_parameters: not an mlx-lm LoRA adapter"
        )
    return config


def arch_identity(model_config: dict[str, Any]) -> dict[str, Any]:
    """The architecture keys of a model config (a ``text_config`` fills in missing ones)."""
    text = model_config.get("text_config") or {}
    out: dict[str, Any] = {}
    for key in ARCH_KEYS:
        value = model_config.get(key, text.get(key))
        if value is not None:
            out[key] = value
    return out


def check_config(adapter: Path, model_config: dict[str, Any], model_dir: Path) -> None:
    """Refuse an adapter whose recorded base architecture differs from ``model_config``
    (before any weight is loaded). Adapters without a recorded base pass."""
    base = read_config(adapter).get(BASE_KEY)
    if not isinstance(base, dict):
        return
    ours = arch_identity(model_config)
    diffs = [
        f"{key} {base[key]!r} (adapter) vs {ours.get(key)!r} (model)"
        for key in ARCH_KEYS
        if key in base and base[key] != ours.get(key)
    ]
    if diffs:
        raise AdapterMismatch(
            f"adapter {adapter} was trained on another base model ({base.get('name', '?')}) "
            f"than {model_dir}: {'; '.join(diffs)}. Use the base model it was trained on, or "
            "train an adapter for this one with `loopbus distill train --model SPEC`"
        )


def weights_hash(model: Any) -> str:
    """sha256 of a strided sample of the token embedding, rounded to bfloat16 so a float32
    and a bfloat16 copy of the same weights hash alike."""
    import mlx.core as mx
    import numpy as np
    from mlx.utils import tree_flatten

    leaves = tree_flatten(model.parameters())
    assert isinstance(leaves, list)  # a list unless a dict `destination` is passed
    params = [(n, p) for n, p in leaves if "lora_" not in n]
    chosen = next((p for n, p in params if n.endswith("embed_tokens.weight")), None)
    if chosen is None:
        chosen = params[0][1]
    flat = chosen.reshape(-1)
    step = max(1, flat.size // _SAMPLE)
    sample = flat[::step][:_SAMPLE]
    if mx.issubdtype(sample.dtype, mx.floating):
        sample = sample.astype(mx.bfloat16).astype(mx.float32)
    return hashlib.sha256(np.array(sample).tobytes()).hexdigest()


def base_identity(model: Any, model_config: dict[str, Any], name: str = "") -> dict[str, Any]:
    """What an adapter records about its base model (see the module docstring)."""
    return {"name": name, **arch_identity(model_config), "weights_sha256": weights_hash(model)}


def apply_adapter(model: Any, model_config: dict[str, Any], adapter: Path, model_dir: Path) -> None:
    """Load the LoRA ``adapter`` into ``model`` (in place) after checking it matches the base.

    Non-quantized models get the LoRA deltas fused into their weights (no per-token cost);
    quantized ones keep the LoRA layers (fusing would re-quantize the small deltas away).
    """
    from mlx.utils import tree_flatten, tree_unflatten
    from mlx_lm.tuner.utils import load_adapters

    check_config(adapter, model_config, model_dir)
    base = read_config(adapter).get(BASE_KEY)
    if isinstance(base, dict) and base.get("weights_sha256"):
        if base["weights_sha256"] != weights_hash(model):
            raise AdapterMismatch(
                f"adapter {adapter} was trained on other weights ({base.get('name', '?')}) "
                f"than {model_dir}, though of the same architecture: its recorded weights hash "
                "differs. Use the base model it was trained on, or train one for this model "
                "with `loopbus distill train --model SPEC`"
            )
    try:
        load_adapters(model, str(adapter))
    except (ValueError, KeyError, TypeError) as exc:
        first = str(exc).splitlines()
        raise AdapterMismatch(
            f"adapter {adapter} does not fit the model {model_dir}: "
            f"{' '.join(line.strip() for line in first[:3])}"
        ) from None
    quantized = any(n.endswith(".scales") for n, _ in tree_flatten(model.parameters()))
    if not quantized:
        fused = [(n, m.fuse()) for n, m in model.named_modules() if hasattr(m, "fuse")]
        if fused:
            model.update_modules(tree_unflatten(fused))
