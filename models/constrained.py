"""JSON-schema constrained decoding with llguidance, applied portably as an mlx-lm logits processor.

llguidance's bundled ``llguidance.mlx`` helper uses a Metal kernel, so it cannot run on Linux.
Here the token bitmask is filled by llguidance into a numpy buffer, unpacked to one byte per
token with ``np.unpackbits`` and applied with ``mx.where(mask, logits, -inf)``: a few tens of
microseconds per token, negligible next to a forward pass.

Costs are paid once: :class:`SchemaConstrainer` builds the llguidance tokenizer (about a second
for a 50k vocabulary) once per model, and compiles each distinct schema once; every generation
then deep-copies the compiled matcher (cheap).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import mlx.core as mx
import numpy as np

from loopbus.models.errors import SchemaRejected

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions  # only in llguidance's stubs

#: Compact JSON by default: no free whitespace, so a weak model cannot spin on spaces or
#: newlines until max_tokens. A schema's own "x-guidance" options still take precedence.
JSON_DEFAULTS: JsonCompileOptions = {"whitespace_flexible": False}
#: Compiled schemas kept per model. Decoding policies build a schema per turn from the run's
#: state (agents/run/policy.py), so a long-lived agent process must not keep every one forever.
MAX_COMPILED_SCHEMAS = 64


# Only positions where "matches fewer documents" keeps the whole schema sound (not "not", "if").
_SCHEMA_KEYS = ("items", "additionalProperties", "then", "else", "unevaluatedItems")
_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
_SCHEMA_LISTS = ("anyOf", "oneOf", "prefixItems", "items")


def tighten(schema: Any, *, in_all_of: bool = False) -> Any:
    """Return ``schema`` with ``additionalProperties: false`` on objects that list properties.

    JSON Schema allows unlisted keys by default, and a weak model happily invents them. Generating
    from a subset of the valid documents is always sound (the output still validates), so the
    grammar forbids extra keys unless the schema asks for them (``additionalProperties``,
    ``patternProperties``, ``unevaluatedProperties``). Members of ``allOf`` are left alone, where
    each member sees only part of the keys.
    """
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SCHEMA_KEYS:
        if isinstance(out.get(key), dict):
            out[key] = tighten(out[key])
    for key in _SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {k: tighten(v) for k, v in out[key].items()}
    for key in _SCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [tighten(v) for v in out[key]]
    if isinstance(out.get("allOf"), list):
        out["allOf"] = [tighten(v, in_all_of=True) for v in out["allOf"]]
    props = out.get("properties")
    open_keys = ("additionalProperties", "patternProperties", "unevaluatedProperties")
    if (
        not in_all_of
        and isinstance(props, dict)
        and not any(k in out for k in open_keys)
        and all(r in props for r in out.get("required", []))
    ):
        out["additionalProperties"] = False
    return out


class SchemaConstrainer:
    """Per-model factory of JSON-schema logits processors (tokenizer and grammars cached)."""

    def __init__(self, hf_tokenizer: Any, n_vocab: int, eos_token_ids: list[int]) -> None:
        self._hf_tokenizer = hf_tokenizer
        self._n_vocab = n_vocab
        self._eos = eos_token_ids
        self._lltok: Any = None
        self._matchers: OrderedDict[str, Any] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()

    @property
    def lltokenizer(self) -> Any:
        """The llguidance tokenizer, built on first use (expensive) and then reused."""
        with self._lock:
            if self._lltok is None:
                import llguidance.hf

                n_vocab = max(self._n_vocab, len(self._hf_tokenizer))
                self._lltok = llguidance.hf.from_tokenizer(
                    self._hf_tokenizer, n_vocab=n_vocab, eos_token=self._eos
                )
            return self._lltok

    def compile(self, schema: dict[str, Any]) -> Any:
        """Compile ``schema`` to a fresh ``LLMatcher``; raise :class:`SchemaRejected` if invalid."""
        import llguidance

        key = json.dumps(schema, sort_keys=True)
        template = self._matchers.get(key)
        if template is not None:
            self._matchers.move_to_end(key)
        if template is None:
            try:
                grammar = llguidance.LLMatcher.grammar_from_json_schema(
                    tighten(schema), defaults=JSON_DEFAULTS
                )
            except (ValueError, TypeError) as exc:
                raise SchemaRejected(f"Schema is not a JSON object: {exc}") from exc
            tok = self.lltokenizer
            is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, tok)
            if is_error:
                raise SchemaRejected(
                    f"The constrained-decoding compiler rejected the JSON schema: {messages[0]} "
                    "Simplify the schema (llguidance supports most of JSON Schema draft 2020-12; "
                    "see its docs for unsupported keywords) or pass no schema."
                )
            template = llguidance.LLMatcher(tok, grammar, log_level=0)
            if template.is_error():
                raise SchemaRejected(f"JSON schema rejected: {template.get_error()}")
            self._matchers[key] = template
            while len(self._matchers) > MAX_COMPILED_SCHEMAS:
                self._matchers.popitem(last=False)
        return template.deep_copy()

    def processor(self, schema: dict[str, Any], logits_vocab: int) -> JsonLogitsProcessor:
        """A fresh logits processor for one generation under ``schema``."""
        return JsonLogitsProcessor(self.compile(schema), logits_vocab)


class JsonLogitsProcessor:
    """An mlx-lm logits processor that masks every token the grammar forbids.

    mlx-lm calls it once per step with the token history (prompt + sampled so far) and the
    logits of the next position. Each call after the first feeds the previously sampled token to
    the matcher before computing the next mask, so the matcher's state always matches the text.
    """

    def __init__(self, matcher: Any, logits_vocab: int) -> None:
        self.matcher = matcher
        self._vocab = logits_vocab
        words = (logits_vocab + 31) // 32
        self._bitmask = np.full((1, words), -1, dtype=np.int32)
        self._started = False
        self.consumed = 0

    @property
    def done(self) -> bool:
        """True once the grammar is complete and nothing may follow (time to stop)."""
        return bool(self.matcher.is_stopped())

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        if self._started:
            token = tokens[-1].item()
            assert isinstance(token, int)  # token ids are an integer array
            if not self.matcher.consume_token(token):
                raise SchemaRejected(
                    f"Constrained decoding diverged at token {token}: {self.matcher.get_error()}"
                )
            self.consumed += 1
        self._started = True
        from llguidance.numpy import fill_next_token_bitmask

        fill_next_token_bitmask(self.matcher, self._bitmask)
        bits = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little")
        # mlx's stub wants __dlpack__(*args, **kwargs), which numpy's keyword-only one is not.
        allowed = mx.array(bits[: self._vocab].astype(np.bool_))  # pyright: ignore[reportArgumentType]
        return mx.where(allowed, logits, mx.array(-np.inf, dtype=logits.dtype))
