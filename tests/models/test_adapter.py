"""LoRA adapters in model specs (``SPEC+adapter:DIR``): grammar, checks, loading, generation.

A real adapter is trained on the tiny real model (a few iterations, well under a second of
training) and loaded through the public spec; nothing is mocked.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from loopbus.models import load_runtime, parse_spec
from loopbus.models.adapters import BASE_KEY
from loopbus.models.errors import AdapterMismatch, AdapterNotFound, InvalidModelSpec, ModelError
from loopbus.models.runtime import ModelSpec, model_dir

PROMPT = [{"role": "user", "content": "Which file holds the answer?"}]
TARGET = '{"action":"read_file","path":"notes/todo.txt"}'


@pytest.fixture(scope="module")
def adapter(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter trained on the tiny model to answer PROMPT with TARGET."""
    from loopbus.agents.distill.pipeline import TrainOptions, train_adapter

    root = tmp_path_factory.mktemp("adapter")
    data = root / "data"
    data.mkdir()
    record = {"messages": [*PROMPT, {"role": "assistant", "content": TARGET}]}
    (data / "train.jsonl").write_text((json.dumps(record) + "\n") * 4)
    options = TrainOptions(iters=10, batch_size=2, layers=2, rank=8, learning_rate=1e-2)
    train_adapter(data, root / "lora", model=str(tiny_model_path), options=options)
    return root / "lora"


def _target_nll(runtime: Any) -> float:
    """Mean negative log-likelihood of TARGET's tokens after PROMPT under ``runtime``'s model."""
    import mlx.core as mx
    import mlx.nn as nn

    prompt = runtime.prompt_ids(PROMPT)
    target = runtime.tokenizer.encode(TARGET, add_special_tokens=False)
    tokens = mx.array([prompt + target])
    logits = runtime.model(tokens[:, :-1])[:, len(prompt) - 1 :]
    return nn.losses.cross_entropy(logits, tokens[:, len(prompt) :]).mean().item()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("default+adapter:./a", ModelSpec("default", adapter="./a")),
        ("+adapter:shipped", ModelSpec("default", adapter="shipped")),
        ("mlx:org/name+adapter:/x/y", ModelSpec("mlx", "org/name", adapter="/x/y")),
        ("./m+adapter: ./b ", ModelSpec("mlx", "./m", adapter="./b")),
        ("org/name", ModelSpec("mlx", "org/name")),
    ],
)
def test_parse_adapter_specs(spec: str, expected: ModelSpec) -> None:
    assert parse_spec(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("default+adapter:", "needs a directory"),
        ("openai:http://127.0.0.1:8080/v1#m+adapter:./a", "in-process MLX models only"),
        ("default+adapter:a+adapter:b", "at most one adapter"),
    ],
)
def test_bad_adapter_specs(spec: str, message: str) -> None:
    with pytest.raises(InvalidModelSpec, match=message):
        parse_spec(spec)


def test_missing_or_incomplete_adapter(tiny_model_path: Path, tmp_path: Path) -> None:
    with pytest.raises(AdapterNotFound, match="does not exist") as missing:
        load_runtime(f"{tiny_model_path}+adapter:{tmp_path / 'nope'}")
    assert isinstance(missing.value, ModelError)  # the CLI prints it as `Error: ...`
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "adapter_config.json").write_text("{}")
    with pytest.raises(AdapterNotFound, match="no adapters.safetensors"):
        load_runtime(f"{tiny_model_path}+adapter:{tmp_path / 'half'}")


def test_adapter_changes_the_model_and_keeps_the_spec(tiny_model_path: Path, adapter: Path) -> None:
    base = load_runtime(str(tiny_model_path))
    spec = f"{tiny_model_path}+adapter:{adapter}"
    adapted = load_runtime(spec)
    assert adapted.spec == spec  # recorded as is in run.task settings.model
    assert adapted.model is not base.model and adapted.adapter == adapter
    assert load_runtime(spec).model is adapted.model  # memoized per (model, adapter)
    assert load_runtime(str(tiny_model_path)).model is base.model  # the base stays untouched
    # Training lowered the loss of its target: the adapter is really applied.
    assert _target_nll(adapted) < _target_nll(base) - 0.5
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config[BASE_KEY]["hidden_size"] == 64 and config[BASE_KEY]["weights_sha256"]


def test_adapter_keeps_constrained_decoding_and_prefix_cache(
    tiny_model_path: Path, adapter: Path
) -> None:
    adapted = load_runtime(f"{tiny_model_path}+adapter:{adapter}")
    schema = {
        "type": "object",
        "properties": {
            "action": {"const": "read_file"},
            "path": {"type": "string", "maxLength": 12},
        },
        "required": ["action", "path"],
        "additionalProperties": False,
    }
    plain = adapted.generate(PROMPT, schema=schema, max_tokens=40)
    assert json.loads(plain.text)["action"] == "read_file"
    cache = adapted.new_cache()
    first = adapted.generate(PROMPT, schema=schema, max_tokens=40, cache=cache)
    follow = [*PROMPT, {"role": "assistant", "content": first.text}, *PROMPT]
    cached = adapted.generate(follow, schema=schema, max_tokens=40, cache=cache)
    fresh = adapted.generate(follow, schema=schema, max_tokens=40)
    assert first.text == plain.text
    assert cached.cached_tokens > 0 and cached.token_ids == fresh.token_ids


def test_adapter_for_another_base_model_is_refused(
    tmp_path: Path, tiny_model_path: Path, adapter: Path
) -> None:
    import mlx.core as mx

    from loopbus.models.testing import build_tiny_model

    wider = build_tiny_model(tmp_path / "wider", hidden_size=96)
    with pytest.raises(AdapterMismatch, match="hidden_size 64 .adapter. vs 96 .model."):
        load_runtime(f"{wider}+adapter:{adapter}")
    # Same architecture, other weights: caught by the recorded weights hash.
    other = tmp_path / "other"
    shutil.copytree(tiny_model_path, other)
    weights = mx.load(str(other / "model.safetensors"))
    weights = {name: w * 1.5 if "embed" in name else w for name, w in weights.items()}
    mx.save_safetensors(str(other / "model.safetensors"), weights, metadata={"format": "mlx"})
    with pytest.raises(AdapterMismatch, match="other weights"):
        load_runtime(f"{other}+adapter:{adapter}")
    # An adapter without loopbus's record (plain mlx_lm.lora output) is checked by shapes.
    foreign = tmp_path / "foreign"
    shutil.copytree(adapter, foreign)
    config = json.loads((foreign / "adapter_config.json").read_text())
    del config[BASE_KEY]
    (foreign / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AdapterMismatch, match="does not fit"):
        load_runtime(f"{wider}+adapter:{foreign}")
    assert load_runtime(f"{tiny_model_path}+adapter:{foreign}").adapter == foreign


def test_model_dir_refuses_adapters_and_servers(tiny_model_path: Path) -> None:
    assert model_dir(str(tiny_model_path)) == tiny_model_path
    with pytest.raises(InvalidModelSpec, match="without"):
        model_dir(f"{tiny_model_path}+adapter:x")
    with pytest.raises(InvalidModelSpec, match="not local"):
        model_dir("openai:http://127.0.0.1:1/v1")


def test_shipped_adapter_fits_the_embedded_model(smollm2_path: Path) -> None:
    from loopbus.agents.builtin import get_agent
    from loopbus.agents.run.decide import get_decider
    from loopbus.models.adapters import arch_identity, resolve_adapter, shipped_adapters

    assert "smollm2-agents" in shipped_adapters()
    path = resolve_adapter("smollm2-agents")
    assert (path / "adapters.safetensors").stat().st_size < 5_000_000  # small enough to commit
    assert (path / "RECIPE.md").is_file()
    config = json.loads((path / "adapter_config.json").read_text())
    base = config[BASE_KEY]
    ours = arch_identity(json.loads((smollm2_path / "config.json").read_text()))
    assert {k: base[k] for k in ours} == ours
    # Trained on the current prompts of the built-in agents with tools: a prompt changed since
    # makes the adapter stale (rebuild it with `make adapter`).
    from loopbus.agents.distill.pipeline import prompt_sha

    trained = config["loopbus_training"]["dataset"]["functions"]
    for name in ("assistant", "watcher", "coder"):
        agent_function = get_agent(name).function
        assert trained[agent_function]["prompt_sha256"] == prompt_sha(agent_function), name
    function = get_agent("assistant").function
    # Loads on the embedded model (its weights hash is checked) and decides under the schema.
    runtime = load_runtime("default+adapter:smollm2-agents")
    decider = get_decider(function)
    task = {"task": "Read owner.txt and tell me the owner."}
    log = f'<event type="run.task" ts="2026-12-03T09:00:00.000Z">{json.dumps(task)}</event>'
    gen = runtime.generate(decider.messages(log), schema=decider.schema, max_tokens=60)
    assert decider.parse(gen.text).action in decider.actions()
