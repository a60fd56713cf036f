"""The ``openai:`` backend: any OpenAI-compatible chat-completions server, over stdlib urllib.

Works with ``python -m loopbus.models.server`` (ours), ``mlx_lm.server``, llama.cpp's server, Ollama and
vLLM. A JSON schema is sent as ``response_format={"type": "json_schema", "json_schema": {"name":
..., "schema": ..., "strict": true}}``; whether the output really conforms depends on the server
(ours, llama.cpp and vLLM enforce it).

Token counting: when the server offers llama.cpp's ``POST /tokenize`` and ``POST
/apply-template`` (ours does too), counts are exact, with the server's tokenizer and chat
template. Otherwise a text counts one token per 3 UTF-8 bytes, an over-estimate (BPE vocabularies
average about 4) so context budgets stay safe, and each message adds its role and 4 tokens of
template markers.

The prefix cache lives in the server (llama.cpp's ``cache_prompt``, mlx_lm.server's and ours
prompt caches); ``new_cache()`` returns a plain handle and ``cached_tokens`` is what the server
reports in ``usage.prompt_tokens_details.cached_tokens`` (0 when it does not say).
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from loopbus.models.errors import BackendUnreachable, ModelError, SchemaRejected
from loopbus.models.runtime import Generation, Message, normalize_messages

DEFAULT_CONTEXT_WINDOW = 8192


class OpenAICache:
    """Handle for the ``openai`` backend: the server keeps the KV cache; we keep the tally."""

    def __init__(self) -> None:
        self.prefilled = 0
        self.reused = 0


class OpenAIRuntime:
    """A model served over HTTP by an OpenAI-compatible server."""

    supports_schema = True

    def __init__(
        self,
        base_url: str,
        model_name: str = "default",
        *,
        spec: str = "",
        context_window: int | None = None,
        timeout_s: float = 600.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        self.spec = spec or f"openai:{self.base_url}#{model_name}"
        self.timeout_s = timeout_s
        self._context_window = context_window
        self._tokenize_ok: bool | None = None
        self._template_ok: bool | None = None

    # -- HTTP ------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        url: str,
        body: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        req.add_header("Accept", "application/json")
        try:
            return urllib.request.urlopen(req, timeout=timeout or self.timeout_s)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:500]
            if exc.code == 400 and "schema" in detail.lower():
                raise SchemaRejected(f"The server at {url} rejected the schema: {detail}") from exc
            raise BackendUnreachable(
                f"{url} answered HTTP {exc.code}: {detail or exc.reason}. Check the model name "
                f"after '#' in the spec ({self.model_name!r}) and the server's log."
            ) from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise BackendUnreachable(
                f"Cannot reach the model server at {self.base_url} ({reason}). Start one, e.g. "
                f"`python -m loopbus.models.server --model DIR --port "
                f"{urlsplit(self.base_url).port or 8080}`, or fix the URL in the model spec."
            ) from exc

    def _json(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        timeout: float | None = None,
        url: str | None = None,
    ) -> Any:
        with self._request(method, url or self.base_url + path, body, timeout) as resp:
            return json.loads(resp.read())

    # -- sizes -----------------------------------------------------------------------------

    @property
    def context_window(self) -> int:
        """Override, else what ``GET /models`` says (vLLM/ours), else 8192."""
        if self._context_window is None:
            self._context_window = DEFAULT_CONTEXT_WINDOW
            try:
                listing = self._json("GET", "/models", timeout=5)
                for entry in listing.get("data", []):
                    if entry.get("id") in (self.model_name, None) or len(listing["data"]) == 1:
                        for key in ("context_window", "max_model_len", "context_length"):
                            if isinstance(entry.get(key), int):
                                self._context_window = entry[key]
                                break
            except (ModelError, ValueError, AttributeError):
                pass  # not fatal: generation reports unreachable servers itself
        return self._context_window

    @context_window.setter
    def context_window(self, value: int) -> None:
        self._context_window = value

    def _server_root(self) -> str:
        parts = urlsplit(self.base_url)
        return f"{parts.scheme}://{parts.netloc}"

    def count_text(self, text: str) -> int:
        """Exact with a ``/tokenize`` endpoint, else an over-estimate (see module docstring)."""
        if self._tokenize_ok is not False:
            try:
                with self._request(
                    "POST",
                    self._server_root() + "/tokenize",
                    {"content": text, "add_special": False},
                    timeout=30,
                ) as r:
                    tokens = json.loads(r.read()).get("tokens")
                if isinstance(tokens, list):
                    self._tokenize_ok = True
                    return len(tokens)
            except (ModelError, ValueError):
                pass
            self._tokenize_ok = False
        return math.ceil(len(text.encode()) / 3)

    def count_tokens(self, messages: list[Message]) -> int:
        """Exact with llama.cpp's ``/apply-template`` + ``/tokenize`` (ours has both), else
        content and role counts plus a few tokens per message for the template's markers."""
        msgs = normalize_messages(messages)
        if self._template_ok is not False:
            try:
                out = self._json(
                    "POST",
                    "",
                    {"messages": msgs},
                    timeout=30,
                    url=self._server_root() + "/apply-template",
                )
                prompt = out.get("prompt")
                if isinstance(prompt, str):
                    self._template_ok = True
                    return self.count_text(prompt)
            except (ModelError, ValueError, AttributeError):
                pass
            self._template_ok = False
        per_message = [
            self.count_text(m["content"]) + self.count_text(str(m.get("role", ""))) + 4
            for m in msgs
        ]
        return sum(per_message) + 3

    def new_cache(self) -> OpenAICache:
        """A handle that tallies the server's reported cache reuse."""
        return OpenAICache()

    # -- generation ------------------------------------------------------------------------

    def _body(
        self,
        messages: list[Message],
        schema: dict[str, Any] | None,
        max_tokens: int,
        temperature: float,
        stream: bool,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model_name,
            "messages": normalize_messages(messages),
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": stream,
        }
        if stream:
            body["stream_options"] = {"include_usage": True}
        if schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": str(schema.get("title") or "response"),
                    "schema": schema,
                    "strict": True,
                },
            }
        return body

    def generate(
        self,
        messages: list[Message],
        *,
        schema: dict[str, Any] | None = None,
        max_tokens: int = 512,
        temperature: float = 0.0,
        cache: object | None = None,
    ) -> Generation:
        """One non-streaming chat completion."""
        t0 = time.perf_counter()
        out = self._json(
            "POST",
            "/chat/completions",
            self._body(messages, schema, max_tokens, temperature, stream=False),
        )
        elapsed = time.perf_counter() - t0
        try:
            choice = out["choices"][0]
            text = choice["message"].get("content") or ""
        except (KeyError, IndexError, TypeError) as exc:
            raise BackendUnreachable(
                f"Unexpected answer from {self.base_url}: {out!r:.300}"
            ) from exc
        gen = self._generation(
            text,
            out.get("usage") or {},
            choice.get("finish_reason"),
            out.get("timings") or {},
            elapsed,
            0.0,
        )
        self._tally(cache, gen)
        return gen

    def stream(
        self,
        messages: list[Message],
        *,
        schema: dict[str, Any] | None = None,
        max_tokens: int = 512,
        temperature: float = 0.0,
        cache: object | None = None,
    ) -> Iterator[str]:
        """Server-sent events; yields content deltas and returns the :class:`Generation`."""
        t0 = time.perf_counter()
        t_first: float | None = None
        parts: list[str] = []
        usage: dict[str, Any] = {}
        finish: str | None = None
        body = self._body(messages, schema, max_tokens, temperature, stream=True)
        with self._request("POST", self.base_url + "/chat/completions", body) as resp:
            for raw in resp:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                event = json.loads(payload)
                usage = event.get("usage") or usage
                for choice in event.get("choices") or []:
                    finish = choice.get("finish_reason") or finish
                    delta = (choice.get("delta") or {}).get("content")
                    if delta:
                        if t_first is None:
                            t_first = time.perf_counter()
                        parts.append(delta)
                        yield delta
        t_end = time.perf_counter()
        t_first = t_first or t_end
        gen = self._generation("".join(parts), usage, finish, {}, t_end - t_first, t_first - t0)
        self._tally(cache, gen)
        return gen

    def _generation(
        self,
        text: str,
        usage: dict[str, Any],
        finish: str | None,
        timings: dict[str, Any],
        decode_s: float,
        prefill_s: float,
    ) -> Generation:
        details = usage.get("prompt_tokens_details") or {}
        if "prompt_ms" in timings and not prefill_s:  # llama.cpp and ours report the split
            prefill_s = timings["prompt_ms"] / 1000
            decode_s = max(0.0, decode_s - prefill_s)
        return Generation(
            text=text,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            cached_tokens=int(details.get("cached_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            prefill_s=prefill_s,
            decode_s=decode_s,
            finish_reason=finish or "stop",
        )

    @staticmethod
    def _tally(cache: object | None, gen: Generation) -> None:
        if isinstance(cache, OpenAICache):
            cache.prefilled += gen.prompt_tokens - gen.cached_tokens
            cache.reused += gen.cached_tokens
