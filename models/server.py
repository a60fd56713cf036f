"""A small OpenAI-compatible HTTP server for any model the mlx backend loads.

    python -m loopbus.models.server --model DIR_OR_SPEC [--host 127.0.0.1] [--port 8080]

Endpoints: ``GET /v1/models`` (with a non-standard ``context_window`` field),
``POST /v1/chat/completions`` (``stream`` via server-sent events, ``response_format`` of type
``json_schema`` or ``json_object`` enforced by the constrained decoder, usage with
``prompt_tokens_details.cached_tokens``, llama.cpp-style ``timings``) and llama.cpp's
``POST /tokenize`` (``{"content": str}`` -> ``{"tokens": [...]}``) and ``POST /apply-template``
(``{"messages": [...]}`` -> ``{"prompt": str}``) for exact token counts.

One model call runs at a time (MLX models are not thread-safe); a single prefix cache is shared
by all requests, which suits one agent conversation per server. Port 0 picks a free port; the
first line printed is ``listening on http://HOST:PORT/v1``. Stdlib only (ThreadingHTTPServer).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from loopbus.models.errors import ModelError, SchemaRejected


class ModelServer(ThreadingHTTPServer):
    """The HTTP server; holds the runtime, its shared prefix cache and the model lock."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], runtime: Any, model_id: str) -> None:
        super().__init__(address, Handler)
        self.runtime = runtime
        self.model_id = model_id
        self.cache = runtime.new_cache()
        self.lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    """Routes the OpenAI-compatible endpoints."""

    protocol_version = "HTTP/1.1"

    @property
    def model_server(self) -> ModelServer:
        """The server of this request (the base class types ``self.server`` as BaseServer)."""
        server = self.server
        assert isinstance(server, ModelServer)
        return server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # quiet by default; errors are answered as JSON

    def _send_json(self, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        self._send_json(status, {"error": {"message": message, "type": kind}})

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            rt = self.model_server.runtime
            self._send_json(
                200,
                {
                    "object": "list",
                    "data": [
                        {
                            "id": self.model_server.model_id,
                            "object": "model",
                            "owned_by": "loopbus",
                            "context_window": rt.context_window,
                        }
                    ],
                },
            )
        else:
            self._error(404, f"no route for GET {self.path}")

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        try:
            body = self._body()
        except (ValueError, UnicodeDecodeError) as exc:
            self._error(400, f"request body is not JSON: {exc}")
            return
        path = self.path.rstrip("/")
        if path == "/tokenize":
            rt = self.model_server.runtime
            self._send_json(
                200,
                {
                    "tokens": rt.tokenizer.encode(
                        str(body.get("content", "")),
                        add_special_tokens=bool(body.get("add_special")),
                    )
                },
            )
        elif path == "/apply-template":
            messages = body.get("messages")
            if not isinstance(messages, list):
                self._error(400, "messages must be a list")
                return
            self._send_json(200, {"prompt": self.model_server.runtime.render(messages)})
        elif path in ("/v1/chat/completions", "/chat/completions"):
            self._chat(body)
        else:
            self._error(404, f"no route for POST {self.path}")

    def _chat(self, body: dict[str, Any]) -> None:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            self._error(400, "messages must be a non-empty list")
            return
        schema = _schema_of(body.get("response_format"))
        kwargs = {
            "schema": schema,
            "max_tokens": int(body.get("max_tokens") or body.get("max_completion_tokens") or 512),
            "temperature": float(body.get("temperature") or 0.0),
        }
        rid = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        with self.model_server.lock:
            try:
                it = self.model_server.runtime.stream(
                    messages, cache=self.model_server.cache, **kwargs
                )
                if body.get("stream"):
                    self._stream(rid, it)
                    return
                while True:
                    next(it)
            except StopIteration as stop:
                gen = stop.value
            except SchemaRejected as exc:
                self._error(400, f"schema rejected: {exc}")
                return
            except ModelError as exc:
                self._error(400, str(exc))
                return
        self._send_json(
            200,
            {
                "id": rid,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.model_server.model_id,
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": gen.finish_reason,
                        "message": {"role": "assistant", "content": gen.text},
                    }
                ],
                "usage": _usage(gen),
                "timings": {"prompt_ms": gen.prefill_s * 1000, "predicted_ms": gen.decode_s * 1000},
            },
        )

    def _stream(self, rid: str, it: Any) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

        def event(obj: Any) -> None:
            self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
            self.wfile.flush()

        base = {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.model_server.model_id,
        }
        try:
            while True:
                chunk = next(it)
                event(
                    {
                        **base,
                        "choices": [
                            {"index": 0, "delta": {"content": chunk}, "finish_reason": None}
                        ],
                    }
                )
        except StopIteration as stop:
            gen = stop.value
        event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": gen.finish_reason}]})
        event({**base, "choices": [], "usage": _usage(gen)})
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def _schema_of(response_format: Any) -> dict[str, Any] | None:
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        return spec.get("schema") or {"type": "object"}
    if kind == "json_object":
        return {"type": "object"}
    return None


def _usage(gen: Any) -> dict[str, Any]:
    return {
        "prompt_tokens": gen.prompt_tokens,
        "completion_tokens": gen.completion_tokens,
        "total_tokens": gen.prompt_tokens + gen.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": gen.cached_tokens},
    }


def serve(
    spec: str | None, host: str = "127.0.0.1", port: int = 8080, context_window: int | None = None
) -> ModelServer:
    """Load the model and return a bound (not yet serving) server."""
    from loopbus.models.mlx_backend import MLXRuntime
    from loopbus.models.runtime import load_runtime

    runtime = load_runtime(spec, context_window=context_window)
    if not isinstance(runtime, MLXRuntime):
        raise ModelError(
            "loopbus.models.server serves in-process (mlx) models only, not openai: specs."
        )
    model_id = runtime.path.name if spec in (None, "", "default") else spec
    return ModelServer((host, port), runtime, str(model_id))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``python -m loopbus.models.server``)."""
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        epilog="example: python -m loopbus.models.server --model default --port 8080",
    )
    parser.add_argument("--model", default=None, help="model spec (default: embedded SmolLM2)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--context-window", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        server = serve(args.model, args.host, args.port, args.context_window)
    except ModelError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    host, port = server.server_address[:2]
    print(f"listening on http://{host}:{port}/v1", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    from loopbus.models.blas import reexec_with_openblas

    reexec_with_openblas()  # in-process generation: get the fast float32 BLAS when installed
    raise SystemExit(main())
