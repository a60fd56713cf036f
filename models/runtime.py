"""The runtime interface every model backend implements, and the model spec grammar.

Model spec grammar (CLI flag ``--model``, config files, ``load_runtime(spec)``)::

    spec     := ""  |  "default"                      the embedded SmolLM2-135M-Instruct
              | "mlx:" target                         explicit in-process MLX backend
              | "openai:" base_url ["#" model_name]   any OpenAI-compatible server
              | target                                same as "mlx:" target
              | spec "+adapter:" adapter              an mlx spec plus a LoRA adapter
    target   := local directory                       an mlx-lm model dir (config.json,
                                                      *.safetensors, tokenizer files)
              | org "/" name                          a Hugging Face id already in the local
                                                      HF cache (never downloaded)
    adapter  := local directory | shipped name        an mlx-lm LoRA adapter dir
                                                      (adapter_config.json, adapters.safetensors)
                                                      or one shipped in models/adapters/

Examples: ``None`` or ``"default"``; ``"./models/smollm2"``; ``"mlx-community/SmolLM2-135M-Instruct"``;
``"mlx:~/models/qwen"``; ``"openai:http://127.0.0.1:8080/v1#qwen2.5-coder"``;
``"default+adapter:./adapters/mine"``; ``"default+adapter:smollm2-agents"``.

A target that names an existing directory is a path, even when it looks like ``org/name``;
``~`` is expanded. A ``.gguf`` file is not loaded directly: import it once with
``loopbus models import FILE.gguf`` and pass the resulting directory. For ``openai:`` the part
after ``#`` is the ``model`` field sent to the server (default ``"default"``). An adapter
applies to in-process models only (``default``, ``mlx:``, paths, ids), never to ``openai:``; it
must have been trained on the same base model (see :mod:`loopbus.models.adapters`).

This module stays light: it imports no mlx; backends are imported when a runtime is loaded.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, cast, runtime_checkable

from loopbus.models.errors import HOW_TO_GET_A_MODEL, InvalidModelSpec, ModelNotFound

Message = dict[str, Any]
#: Separates a model spec from its LoRA adapter: ``default+adapter:DIR``.
ADAPTER_SEP = "+adapter:"
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _part_text(part: object) -> Any:
    if isinstance(part, dict):
        return cast("dict[str, Any]", part).get("text", "")
    return str(part)


def normalize_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Flatten OpenAI-style content parts (``[{"type": "text", "text": ...}]``) into strings."""
    out: list[dict[str, Any]] = []
    for m in messages:
        content = m.get("content", "")
        if isinstance(content, list):
            content = "".join(_part_text(p) for p in cast("list[object]", content))
        elif content is None:
            content = ""
        out.append({**m, "content": content})
    return out


@dataclass
class Generation:
    """The result of one model call.

    ``prompt_tokens`` counts the whole templated prompt; ``cached_tokens`` of them were reused
    from the prefix cache (so ``prompt_tokens - cached_tokens`` were prefilled); ``prefill_s`` and
    ``decode_s`` split the wall time. ``finish_reason`` is ``"stop"`` (end of turn, or the schema
    is complete) or ``"length"`` (hit ``max_tokens``). ``token_ids`` holds the generated ids when
    the backend knows them (mlx: yes, including the end-of-turn token; openai: empty).
    """

    text: str
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    prefill_s: float
    decode_s: float
    finish_reason: str
    token_ids: list[int] = field(default_factory=list[int])

    @property
    def decode_tps(self) -> float:
        """Tokens per second after the first one (which ``prefill_s`` already includes)."""
        return (self.completion_tokens - 1) / self.decode_s if self.decode_s > 0 else 0.0


@runtime_checkable
class Runtime(Protocol):
    """What the agent loop uses for every model call, whatever the backend."""

    spec: str
    supports_schema: bool

    @property
    def context_window(self) -> int:
        """Prompt plus completion tokens the model takes (an attribute or a property)."""
        ...

    def count_tokens(self, messages: list[Message]) -> int:
        """Tokens of the chat-templated prompt (with the assistant header) for ``messages``."""
        ...

    def count_text(self, text: str) -> int:
        """Tokens of plain ``text`` (no template, no special tokens)."""
        ...

    def new_cache(self) -> object:
        """An opaque prefix-cache handle; pass it to every call of one run (one conversation)."""
        ...

    def generate(
        self,
        messages: list[Message],
        *,
        schema: dict[str, Any] | None = None,
        max_tokens: int = 512,
        temperature: float = 0.0,
        cache: object | None = None,
    ) -> Generation:
        """Complete ``messages``; with ``schema`` the text is JSON that conforms to it.

        Greedy at ``temperature=0``. With a schema, ``finish_reason == "length"`` means the
        token budget ran out first and the text is an incomplete document.
        """
        ...

    def stream(
        self,
        messages: list[Message],
        *,
        schema: dict[str, Any] | None = None,
        max_tokens: int = 512,
        temperature: float = 0.0,
        cache: object | None = None,
    ) -> Iterator[str]:
        """Like :meth:`generate` but yields text chunks as they are decoded.

        The generator's return value (``StopIteration.value``) is the :class:`Generation`.
        """
        ...


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec: which backend, its target (a path, HF id or base URL) and the
    LoRA adapter (a directory or shipped name; ``""`` for none)."""

    backend: Literal["default", "mlx", "openai"]
    target: str = ""
    model_name: str = "default"
    adapter: str = ""


def parse_spec(spec: str | None) -> ModelSpec:
    """Parse a model spec string (see the module docstring for the grammar)."""
    s = (spec or "").strip()
    base, sep, adapter = s.rpartition(ADAPTER_SEP)
    if sep:
        adapter = adapter.strip()
        if not adapter:
            raise InvalidModelSpec(
                f"Model spec {spec!r}: '{ADAPTER_SEP}' needs a directory, "
                "e.g. default+adapter:./my-adapter."
            )
        parsed = parse_spec(base or "default")
        if parsed.backend == "openai":
            raise InvalidModelSpec(
                f"Model spec {spec!r}: adapters load into in-process MLX models only; serve the "
                "adapted model instead (python -m loopbus.models.server --model 'SPEC+adapter:DIR')."
            )
        if parsed.adapter:
            raise InvalidModelSpec(f"Model spec {spec!r}: at most one adapter.")
        return ModelSpec(parsed.backend, parsed.target, parsed.model_name, adapter)
    if s in ("", "default"):
        return ModelSpec("default")
    if s.startswith("openai:"):
        url, _, name = s.removeprefix("openai:").partition("#")
        if not re.match(r"^https?://[^/\s]+", url):
            raise InvalidModelSpec(
                f"Model spec {spec!r}: expected openai:http://HOST:PORT/v1#MODEL-NAME, "
                "e.g. openai:http://127.0.0.1:8080/v1#default."
            )
        return ModelSpec("openai", url.rstrip("/"), name or "default")
    if s.startswith("mlx:"):
        s = s.removeprefix("mlx:").strip()
        if not s:
            raise InvalidModelSpec("Model spec 'mlx:' needs a directory or an org/name id.")
    return ModelSpec("mlx", s)


def resolve_mlx_target(target: str) -> Path:
    """Turn an mlx target (directory or Hugging Face id) into a local model directory.

    Never touches the network: ``HF_HUB_OFFLINE=1`` is set when unset, and only the local HF
    cache is consulted. Raises :class:`ModelNotFound` with instructions otherwise.
    """
    path = Path(target).expanduser()
    if path.suffix == ".gguf":
        raise ModelNotFound(
            f"{target} is a GGUF file; mlx-lm cannot load it directly. Convert it once with "
            f"`loopbus models import {target}` and pass the directory it prints."
        )
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFound(
                f"{path} is not an mlx-lm model directory (no config.json). {HOW_TO_GET_A_MODEL}"
            )
        return path
    looks_like_path = target.startswith(("/", ".", "~")) or path.exists()
    if looks_like_path or not _HF_ID.match(target):
        raise ModelNotFound(f"Model directory {target} does not exist. {HOW_TO_GET_A_MODEL}")
    return _hf_cached_snapshot(target)


def _hf_cached_snapshot(repo_id: str) -> Path:
    import os

    # Must be set before huggingface_hub reads its constants; we never download.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads these at import time; read them now so a late change is honoured.
    cache_dir = os.environ.get("HF_HUB_CACHE") or (
        str(Path(os.environ["HF_HOME"]) / "hub") if os.environ.get("HF_HOME") else None
    )
    try:
        # huggingface_hub's own annotation is partly unknown (an untyped dict parameter).
        from huggingface_hub import snapshot_download  # pyright: ignore[reportUnknownVariableType]

        found = Path(snapshot_download(repo_id, local_files_only=True, cache_dir=cache_dir))
    except Exception as exc:  # LocalEntryNotFoundError, offline errors, bad ids...
        raise ModelNotFound(
            f"Hugging Face model {repo_id} is not in the local cache and loopbus never downloads "
            f"({type(exc).__name__}). On a machine with internet: `huggingface-cli download "
            f"{repo_id}`. {HOW_TO_GET_A_MODEL}"
        ) from exc
    if not (found / "config.json").is_file():
        raise ModelNotFound(
            f"The cached copy of {repo_id} at {found} has no config.json. {HOW_TO_GET_A_MODEL}"
        )
    return found


def model_dir(spec: str | None) -> Path:
    """The local model directory of an in-process spec without adapter (for training one)."""
    parsed = parse_spec(spec)
    if parsed.backend == "openai":
        raise InvalidModelSpec(
            f"Model spec {spec!r}: an openai: server's weights are not local; give the model "
            "directory (or default)."
        )
    if parsed.adapter:
        raise InvalidModelSpec(
            f"Model spec {spec!r}: give the base model, without '{ADAPTER_SEP}...'."
        )
    if parsed.backend == "default":
        from loopbus.models.embedded import ensure_default_model

        return Path(ensure_default_model())
    return resolve_mlx_target(parsed.target)


def load_runtime(spec: str | None = None, *, context_window: int | None = None) -> Runtime:
    """Load the runtime a model spec names (see the module docstring for the grammar).

    ``context_window`` overrides the window read from the model config (or, for ``openai:``,
    the default of 8192 tokens). Loaded mlx models are memoized per (directory, adapter) in
    this process. The runtime's ``spec`` is the full spec string, adapter included.
    """
    parsed = parse_spec(spec)
    if parsed.backend == "openai":
        from loopbus.models.openai_backend import OpenAIRuntime

        return OpenAIRuntime(
            parsed.target, parsed.model_name, spec=spec or "", context_window=context_window
        )
    adapter = None
    if parsed.adapter:
        from loopbus.models.adapters import resolve_adapter  # checked before any weight is loaded

        adapter = resolve_adapter(parsed.adapter)
    if parsed.backend == "default":
        from loopbus.models.embedded import (
            ensure_default_model,  # written lazily: heavy on first use
        )

        path = Path(ensure_default_model())
    else:
        path = resolve_mlx_target(parsed.target)
    from loopbus.models.mlx_backend import MLXRuntime

    return MLXRuntime.load(
        path, spec=spec or "default", context_window=context_window, adapter=adapter
    )
