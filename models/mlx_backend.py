"""The in-process MLX backend (mlx-lm 0.32): chat template, greedy by default, prefix KV cache
across turns, JSON-schema constrained decoding.

Prefix cache: a :class:`PrefixCache` handle holds an mlx-lm prompt cache plus the exact token
ids whose keys/values it holds. On each call the new prompt is compared with those ids; the
cache is trimmed back to the common prefix (or rebuilt when a layer cannot be trimmed, e.g. a
full rotating window) and only the remaining tokens are prefilled. After a call the cache holds
the prompt plus every token fed back through the model (mlx-lm's ``generate_step`` feeds each
sampled token before yielding it, so that is all yielded tokens, the end-of-turn token
included); the handle records exactly those, checked against the cache's own offset. The next
turn's prompt normally starts with the previous prompt and the assistant's reply, so it reuses
everything up to the new message.

Threads: a loaded model is shared by every runtime for its directory in the process and is
not thread-safe; run one call at a time (``loopbus.models.server`` serializes requests with a lock).

Compute dtype: without Metal (Linux CPU) bf16/f16 matmuls are slow and only float32 benefits
from a faster BLAS (see :mod:`loopbus.models.blas`), so non-quantized float16/bfloat16 weights are cast
to float32 at load when ``loopbus.models.blas.compute_dtype()`` says so. ``LOOPBUS_DTYPE=native`` keeps
the stored dtype.
"""

from __future__ import annotations

import copy
import json
import os
import threading
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

from loopbus.models.blas import load_in_process

# Before MLX's library is loaded: the fast BLAS for library users too (see models/blas.py).
load_in_process()

import mlx.core as mx  # noqa: E402

# transformers (imported by mlx-lm) warns on every start that PyTorch is missing; we never need it.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from loopbus.models.errors import ModelError, ModelNotFound  # noqa: E402
from loopbus.models.runtime import Generation, Message, normalize_messages  # noqa: E402

_FALLBACK_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx")
# (model dir, adapter dir or None) -> (model, tokenizer, config): an adapter changes the weights,
# so an adapted model is a second copy, never the plain one modified in place.
_LOADED: dict[tuple[Path, Path | None], tuple[Any, Any, dict[str, Any]]] = {}
_LOAD_LOCK = threading.Lock()


class PrefixCache:
    """Opaque per-run cache handle: an mlx-lm prompt cache and the token ids it covers.

    ``prefilled`` and ``reused`` accumulate over the calls made with this handle.
    """

    def __init__(self, runtime: MLXRuntime) -> None:
        self.runtime = runtime
        self.kv: list[Any] | None = None
        self.tokens: list[int] = []
        self.prefilled = 0
        self.reused = 0

    def reset(self) -> None:
        """Drop everything cached (the next call prefills its whole prompt)."""
        self.kv = None
        self.tokens = []


def _cast_for_cpu(model: Any) -> None:
    from loopbus.models.blas import compute_dtype

    if compute_dtype() is None or os.environ.get("LOOPBUS_DTYPE", "").lower() == "native":
        return
    from mlx.utils import tree_flatten, tree_unflatten

    slow = (mx.bfloat16, mx.float16)
    params = tree_flatten(model.parameters())
    assert isinstance(params, list)  # a list unless a dict `destination` is passed
    quantized = any(name.endswith(".scales") for name, _ in params)
    # Quantized models keep their (packed) weights; casting their scales would not help.
    if quantized:
        return
    changed = [(n, p.astype(mx.float32)) for n, p in params if p.dtype in slow]
    if changed:
        model.update(tree_unflatten(changed))
        mx.eval(model.parameters())


def load_fresh(path: Path) -> tuple[Any, Any, dict[str, Any]]:
    """A new, private copy of the model at ``path`` (not memoized; float32 on CPU as usual):
    for callers that change the model, such as LoRA training."""
    import mlx_lm

    try:
        loaded = mlx_lm.load(str(path), return_config=True)
    except (FileNotFoundError, ValueError) as exc:
        raise ModelNotFound(
            f"Could not load an mlx-lm model from {path}: {exc}. The directory needs "
            "config.json, *.safetensors and tokenizer files (`loopbus models import "
            "FILE.gguf` writes one)."
        ) from exc
    assert len(loaded) == 3  # load()'s type covers both return_config values
    model, tokenizer, config = loaded
    _cast_for_cpu(model)
    return model, tokenizer, config


def _load(path: Path, adapter: Path | None = None) -> tuple[Any, Any, dict[str, Any]]:
    with _LOAD_LOCK:
        key = (path.resolve(), adapter.resolve() if adapter is not None else None)
        if key not in _LOADED:
            if adapter is not None:
                from loopbus.models.adapters import check_config

                # Architecture mismatches fail before the weights are read.
                check_config(adapter, json.loads((path / "config.json").read_text()), path)
            model, tokenizer, config = load_fresh(key[0])
            if adapter is not None:
                from loopbus.models.adapters import apply_adapter

                apply_adapter(model, config, adapter.resolve(), path)
            _LOADED[key] = (model, tokenizer, config)
        return _LOADED[key]


class MLXRuntime:
    """An mlx-lm model and tokenizer loaded in this process (see the module docstring)."""

    supports_schema = True

    def __init__(
        self,
        path: Path,
        model: Any,
        tokenizer: Any,
        config: dict[str, Any],
        *,
        spec: str,
        context_window: int | None = None,
        adapter: Path | None = None,
    ) -> None:
        self.path = path
        self.adapter = adapter
        self.spec = spec
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.context_window = context_window or self._config_context_window()
        self.eos_token_ids = sorted(tokenizer.eos_token_ids)
        self.vocab_size = int(config.get("vocab_size") or len(tokenizer._tokenizer))
        self._constrainer: Any = None

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        spec: str = "",
        context_window: int | None = None,
        adapter: Path | None = None,
    ) -> MLXRuntime:
        """Load (or reuse, memoized per directory and adapter) the model at ``path``, with the
        LoRA ``adapter`` directory applied (see :mod:`loopbus.models.adapters`)."""
        path = Path(path)
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"{path} has no config.json: not an mlx-lm model directory.")
        model, tokenizer, config = _load(path, adapter)
        return cls(
            path,
            model,
            tokenizer,
            config,
            spec=spec or str(path),
            context_window=context_window,
            adapter=adapter,
        )

    def _config_context_window(self) -> int:
        configs = [self.config, self.config.get("text_config") or {}]
        for cfg in configs:
            for key in _CONTEXT_KEYS:
                if isinstance(cfg.get(key), int) and cfg[key] > 0:
                    return int(cfg[key])
        limit = getattr(self.tokenizer._tokenizer, "model_max_length", 0) or 0
        return int(limit) if 0 < limit < 1_000_000 else 2048

    # -- tokens ---------------------------------------------------------------------------

    def render(self, messages: list[Message]) -> str:
        """The chat-templated prompt text, ending with the assistant header."""
        msgs = normalize_messages(messages)
        kwargs: dict[str, Any] = {"add_generation_prompt": True, "tokenize": False}
        if not self.tokenizer.has_chat_template:
            kwargs["chat_template"] = _FALLBACK_TEMPLATE
        return self.tokenizer.apply_chat_template(msgs, **kwargs)

    def prompt_ids(self, messages: list[Message]) -> list[int]:
        """Token ids of the chat-templated prompt."""
        text = self.render(messages)
        bos = self.tokenizer.bos_token
        # Same rule as mlx-lm: add BOS only when the template did not already emit it.
        add_special = bool(bos) and not text.startswith(bos) and self._adds_bos()
        return list(self.tokenizer.encode(text, add_special_tokens=add_special))

    def _adds_bos(self) -> bool:
        return bool(getattr(self.tokenizer._tokenizer, "add_bos_token", False))

    def count_tokens(self, messages: list[Message]) -> int:
        """Tokens of the chat-templated prompt (what a call with ``messages`` would prefill)."""
        return len(self.prompt_ids(messages))

    def count_text(self, text: str) -> int:
        """Tokens of plain ``text`` without special tokens."""
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def new_cache(self) -> PrefixCache:
        """A fresh prefix-cache handle for one run."""
        return PrefixCache(self)

    # -- generation ------------------------------------------------------------------------

    @property
    def constrainer(self) -> Any:
        """The per-model llguidance adapter (built on first schema use, then reused)."""
        if self._constrainer is None:
            from loopbus.models.constrained import SchemaConstrainer

            self._constrainer = _constrainer_for(self)
            assert isinstance(self._constrainer, SchemaConstrainer)
        return self._constrainer

    def generate(
        self,
        messages: list[Message],
        *,
        schema: dict[str, Any] | None = None,
        max_tokens: int = 512,
        temperature: float = 0.0,
        cache: object | None = None,
    ) -> Generation:
        """Complete ``messages`` (see :class:`loopbus.models.runtime.Runtime`)."""
        it = self.stream(
            messages, schema=schema, max_tokens=max_tokens, temperature=temperature, cache=cache
        )
        while True:
            try:
                next(it)
            except StopIteration as stop:
                return stop.value

    def stream(
        self,
        messages: list[Message],
        *,
        schema: dict[str, Any] | None = None,
        max_tokens: int = 512,
        temperature: float = 0.0,
        cache: object | None = None,
    ) -> Iterator[str]:
        """Yield text chunks; the generator returns the :class:`Generation`."""
        return self.stream_ids(
            self.prompt_ids(messages),
            schema=schema,
            max_tokens=max_tokens,
            temperature=temperature,
            cache=cache,
        )

    def stream_ids(
        self,
        prompt: list[int],
        *,
        schema: dict[str, Any] | None = None,
        max_tokens: int = 512,
        temperature: float = 0.0,
        cache: object | None = None,
    ) -> Iterator[str]:
        """Like :meth:`stream` for an already tokenized prompt."""
        from mlx_lm.generate import generate_step
        from mlx_lm.sample_utils import make_sampler

        if cache is not None and not isinstance(cache, PrefixCache):
            raise ModelError("cache must come from this runtime's new_cache().")
        if not prompt:
            raise ModelError("Empty prompt: pass at least one message.")
        if len(prompt) >= self.context_window:
            raise ModelError(
                f"The prompt has {len(prompt)} tokens but the context window is "
                f"{self.context_window}: elide older context or load with a larger window."
            )
        max_tokens = max(1, min(max_tokens, self.context_window - len(prompt)))
        processor = None
        if schema is not None:
            processor = self.constrainer.processor(schema, self.vocab_size)
        kv, reused = self._prepare_cache(cache, prompt)

        return self._decode(
            generate_step(
                mx.array(prompt[reused:]),
                self.model,
                max_tokens=max_tokens,
                sampler=make_sampler(temp=temperature),
                logits_processors=[processor] if processor else None,
                prompt_cache=kv,
            ),
            prompt,
            reused,
            cache,
            kv,
            processor,
        )

    def _prepare_cache(self, cache: PrefixCache | None, prompt: list[int]) -> tuple[Any, int]:
        """Trim ``cache`` to its common prefix with ``prompt``; return (kv, tokens reused)."""
        from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache

        if cache is None:
            return make_prompt_cache(self.model), 0
        if cache.kv is None:
            cache.kv, cache.tokens = make_prompt_cache(self.model), []
        common = 0
        for a, b in zip(cache.tokens, prompt, strict=False):
            if a != b:
                break
            common += 1
        # At least one prompt token must go through the model to get the next logits.
        reuse = min(common, len(prompt) - 1)
        drop = len(cache.tokens) - reuse
        if drop > 0:
            if can_trim_prompt_cache(cache.kv) and trim_prompt_cache(cache.kv, drop) == drop:
                cache.tokens = cache.tokens[:reuse]
            else:
                cache.kv, cache.tokens, reuse = make_prompt_cache(self.model), [], 0
        return cache.kv, reuse

    def _decode(
        self,
        steps: Generator[tuple[Any, Any], None, None],
        prompt: list[int],
        reused: int,
        cache: PrefixCache | None,
        kv: Any,
        processor: Any,
    ) -> Iterator[str]:
        # A shallow copy shares the expensive token map but keeps this call's state private.
        detok = copy.copy(self.tokenizer.detokenizer)
        detok.reset()
        eos = set(self.eos_token_ids)
        generated: list[int] = []
        finish = "length"
        t0 = time.perf_counter()
        t_first = t0
        try:
            for token, _ in steps:
                if not generated:
                    t_first = time.perf_counter()
                generated.append(token)
                if token in eos:
                    finish = "stop"
                    break
                detok.add_token(token)
                segment = detok.last_segment  # reading it consumes it
                if segment:
                    yield segment
                if processor is not None and processor.done:
                    finish = "stop"
                    break
        finally:
            steps.close()
            if cache is not None:
                self._record(cache, kv, prompt, generated, reused)
        detok.finalize()
        segment = detok.last_segment
        if segment:
            yield segment
        t_end = time.perf_counter()
        text = detok.text
        return Generation(
            text=text,
            prompt_tokens=len(prompt),
            cached_tokens=reused,
            completion_tokens=len(generated),
            prefill_s=t_first - t0,
            decode_s=t_end - t_first,
            finish_reason=finish,
            token_ids=generated,
        )

    @staticmethod
    def _record(
        cache: PrefixCache, kv: Any, prompt: list[int], generated: list[int], reused: int
    ) -> None:
        covered = prompt + generated
        offset = getattr(kv[0], "offset", None) if kv else None
        if not isinstance(offset, int) or offset > len(covered):
            # Unknown cache layout or inconsistent state: never guess, start over next time.
            cache.reset()
            return
        cache.kv, cache.tokens = kv, covered[:offset]
        cache.prefilled += len(prompt) - reused
        cache.reused += reused


_CONSTRAINERS: dict[Path, Any] = {}


def _constrainer_for(rt: MLXRuntime) -> Any:
    """One llguidance adapter per model directory for the whole process (it is expensive)."""
    from loopbus.models.constrained import SchemaConstrainer

    key = rt.path.resolve()
    if key not in _CONSTRAINERS:
        _CONSTRAINERS[key] = SchemaConstrainer(
            rt.tokenizer._tokenizer, rt.vocab_size, rt.eos_token_ids
        )
    return _CONSTRAINERS[key]


def describe(path: Path) -> dict[str, Any]:
    """Small summary of a model directory (architecture, vocab, window) without loading it."""
    config = json.loads((Path(path) / "config.json").read_text())
    return {
        "model_type": config.get("model_type"),
        "vocab_size": config.get("vocab_size"),
        "context_window": next((config[k] for k in _CONTEXT_KEYS if k in config), None),
    }
