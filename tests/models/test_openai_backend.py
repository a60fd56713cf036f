"""The openai backend against a real local server (`python -m loopbus.models.server`, a subprocess that
serves the tiny model through the mlx backend) - no mock objects."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loopbus.models import load_runtime
from loopbus.models.errors import BackendUnreachable, ModelError
from loopbus.models.mlx_backend import MLXRuntime
from loopbus.models.openai_backend import OpenAIRuntime

REPO = Path(__file__).resolve().parents[2]
SCHEMA = {
    "anyOf": [
        {
            "type": "object",
            "properties": {
                "type": {"const": "answer"},
                "text": {"type": "string", "maxLength": 30},
            },
            "required": ["type", "text"],
        },
        {
            "type": "object",
            "properties": {
                "type": {"const": "run_python"},
                "code": {"type": "string", "maxLength": 30},
            },
            "required": ["type", "code"],
        },
        {"type": "object", "properties": {"type": {"const": "done"}}, "required": ["type"]},
    ]
}


@pytest.fixture(scope="module")
def server_url(tiny_model_path: Path) -> Iterator[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loopbus.models.server",
            "--model",
            str(tiny_model_path),
            "--port",
            "0",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("listening on "):
            proc.kill()
            pytest.fail(f"server did not start: {line}{proc.stderr.read() if proc.stderr else ''}")
        yield line.split()[-1]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def remote(server_url: str) -> OpenAIRuntime:
    rt = load_runtime(f"openai:{server_url}#tiny")
    assert isinstance(rt, OpenAIRuntime)
    return rt


def _drain(it: Iterator[str]) -> tuple[list[str], Any]:
    chunks: list[str] = []
    while True:
        try:
            chunks.append(next(it))
        except StopIteration as stop:
            return chunks, stop.value


def test_same_greedy_text_as_in_process(
    remote: OpenAIRuntime, tiny_rt: MLXRuntime, chat: list[dict[str, str]]
) -> None:
    gen = remote.generate(chat, max_tokens=20)
    local = tiny_rt.generate(chat, max_tokens=20)
    assert gen.text == local.text
    assert gen.prompt_tokens == local.prompt_tokens and gen.completion_tokens == 20
    assert gen.finish_reason == "length"


def test_streaming_over_sse(
    remote: OpenAIRuntime, tiny_rt: MLXRuntime, chat: list[dict[str, str]]
) -> None:
    chunks, gen = _drain(remote.stream(chat, max_tokens=20))
    assert len(chunks) > 1
    assert "".join(chunks) == gen.text == tiny_rt.generate(chat, max_tokens=20).text
    assert gen.completion_tokens == 20 and gen.prompt_tokens > 0


def test_response_format_schema_is_enforced(remote: OpenAIRuntime) -> None:
    for prompt in ("count lines", "say hi", "compute 2+2"):
        gen = remote.generate([{"role": "user", "content": prompt}], schema=SCHEMA, max_tokens=120)
        value = json.loads(gen.text)
        assert value["type"] in {"answer", "run_python", "done"}
        assert set(value) <= {"type", "text", "code"}
    chunks, gen = _drain(
        remote.stream([{"role": "user", "content": "x"}], schema=SCHEMA, max_tokens=120)
    )
    assert json.loads("".join(chunks))["type"] in {"answer", "run_python", "done"}


def test_server_prefix_cache_is_reported(remote: OpenAIRuntime, chat: list[dict[str, str]]) -> None:
    cache = remote.new_cache()
    first = remote.generate(chat, max_tokens=8, cache=cache)
    follow = chat + [
        {"role": "assistant", "content": first.text},
        {"role": "user", "content": "and then?"},
    ]
    second = remote.generate(follow, max_tokens=8, cache=cache)
    assert second.cached_tokens >= first.prompt_tokens
    assert cache.reused >= first.prompt_tokens


def test_counts_and_window_come_from_the_server(
    remote: OpenAIRuntime, tiny_rt: MLXRuntime, chat: list[dict[str, str]]
) -> None:
    assert remote.context_window == tiny_rt.context_window == 2048
    text = "read the file and count the lines"
    assert remote.count_text(text) == tiny_rt.count_text(text)  # exact, via /tokenize
    assert remote.count_tokens(chat) == tiny_rt.count_tokens(chat)  # via /apply-template
    assert load_runtime(f"openai:{remote.base_url}#tiny", context_window=99).context_window == 99


def test_schema_rejected_by_server(remote: OpenAIRuntime) -> None:
    with pytest.raises(ModelError, match="look-around"):
        remote.generate(
            [{"role": "user", "content": "x"}],
            schema={"type": "string", "pattern": "(?<=a)b"},
            max_tokens=5,
        )


def test_unreachable_server() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rt = load_runtime(f"openai:http://127.0.0.1:{port}/v1#m")  # loading does not connect
    with pytest.raises(BackendUnreachable, match="python -m loopbus.models.server"):
        rt.generate([{"role": "user", "content": "hi"}], max_tokens=4)
    with pytest.raises(BackendUnreachable):
        _drain(rt.stream([{"role": "user", "content": "hi"}], max_tokens=4))
    assert rt.context_window == 8192  # documented fallback when the server cannot be asked
    assert rt.count_text("abcdef") == 2  # over-estimate without a tokenizer
    assert rt.count_tokens([{"role": "user", "content": "abcdef"}]) == 2 + 2 + 4 + 3


def test_wrong_path_is_an_http_error(server_url: str) -> None:
    rt = load_runtime(f"openai:{server_url.removesuffix('/v1')}/v2#tiny")
    with pytest.raises(BackendUnreachable, match="HTTP 404"):
        rt.generate([{"role": "user", "content": "hi"}], max_tokens=4)


def test_server_cli_reports_a_missing_model(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "loopbus.models.server",
            "--model",
            str(tmp_path / "nope"),
            "--port",
            "0",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("Error: ") and "loopbus models import" in done.stderr
