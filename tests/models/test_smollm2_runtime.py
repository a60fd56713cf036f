"""Integration on the embedded SmolLM2-135M-Instruct (imported once per session): a constrained
decision for a small union parses, and the prefix cache is exact on a real model too."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from loopbus.models import load_runtime
from loopbus.models.mlx_backend import MLXRuntime

pytestmark = pytest.mark.slow


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Answer(Strict):
    type: Literal["Answer"]
    text: str


class RunPython(Strict):
    type: Literal["RunPython"]
    code: str


class ReadFile(Strict):
    type: Literal["ReadFile"]
    path: str


DECISION = TypeAdapter(Annotated[Answer | RunPython | ReadFile, Field(discriminator="type")])


@pytest.fixture(scope="module")
def smol(smollm2_path: Path) -> MLXRuntime:
    rt = load_runtime()  # no spec: the embedded default
    assert isinstance(rt, MLXRuntime) and rt.path.resolve() == smollm2_path.resolve()
    return rt


def test_default_spec_is_smollm2(smol: MLXRuntime) -> None:
    assert smol.context_window == 8192 and smol.vocab_size == 49152
    assert smol.count_text("Hello world") == 2


def test_constrained_decision_parses(smol: MLXRuntime) -> None:
    messages = [
        {
            "role": "system",
            "content": "You are an agent. Reply with one JSON tool call: "
            "Answer, RunPython or ReadFile.",
        },
        {"role": "user", "content": "What is the capital of France?"},
    ]
    gen = smol.generate(messages, schema=DECISION.json_schema(), max_tokens=60)
    assert gen.finish_reason == "stop"
    decision = DECISION.validate_json(gen.text)
    assert isinstance(decision, Answer | RunPython | ReadFile)


def test_prefix_cache_is_exact_on_smollm2(smol: MLXRuntime) -> None:
    cache = smol.new_cache()
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Name a color."}]
    for follow_up in ("Another one?", "And one more."):
        cached = smol.generate(messages, max_tokens=6, cache=cache)
        fresh = smol.generate(messages, max_tokens=6)
        assert cached.token_ids == fresh.token_ids
        messages += [
            {"role": "assistant", "content": cached.text},
            {"role": "user", "content": follow_up},
        ]
    last = smol.generate(messages, max_tokens=6, cache=cache)
    # A real model's reply re-tokenizes to what it sampled: only the new message (with the
    # end marker of a reply cut by max_tokens) is prefilled.
    new = "<|im_end|>\n<|im_start|>user\nAnd one more.<|im_end|>\n<|im_start|>assistant\n"
    assert last.prompt_tokens - last.cached_tokens <= smol.count_text(new)
    assert last.token_ids == smol.generate(messages, max_tokens=6).token_ids
