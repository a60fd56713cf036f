"""Distillation: oracle runs on a real bus, chat JSONL rebuilt from the bus, a trained adapter.

The runs are real agent-loop runs (real tools, real bus files); the scripted runtime answers
with gold decisions and counts tokens with the tiny real model. Training is 2-3 iterations.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from loopbus.agents.cli import main
from loopbus.agents.cli.common import EXIT_USAGE
from loopbus.agents.distill.pipeline import (
    VERDICT,
    DistillError,
    ScriptedRuntime,
    TrainOptions,
    examples_from_bus,
    oracle_runs,
    prompt_sha,
    train_adapter,
    usable_runs,
    write_dataset,
)
from loopbus.agents.distill.tasksuite import EVAL_SEED, generate_suite, oracle_json
from loopbus.agents.run.loop import run_agent
from loopbus.bus import SyncBus


def _short_tasks(root: Path, n: int = 12) -> list[Any]:
    # The tiny model's window is 2,048 tokens: keep tasks of at most two decisions, and those
    # the assistant's policy allows (it answers only after reading a file).
    tasks = generate_suite(root, seed=5, n=n)
    return [t for t in tasks if len(t.oracle) <= 2 and t.oracle[0]["action"] == "read_file"]


def test_examples_are_the_prompts_the_model_saw(
    tmp_path: Path, tiny_runtime: Any, bus_file: Path
) -> None:
    tasks = _short_tasks(tmp_path / "ws")
    assert len(tasks) >= 3
    seen: dict[str, list[list[dict[str, Any]]]] = {}
    with SyncBus(bus_file) as bus:
        for task in tasks:
            # A first answer that does not parse: skipped, its error stays in later contexts.
            runtime = ScriptedRuntime(["not json", *oracle_json(task)], counter=tiny_runtime)
            outcome = run_agent(
                "assistant",
                task.question,
                runtime=runtime,
                bus=bus,
                workspace=task.workspace,
                run_id=f"r-{task.id}",
                budget=0.95,  # the parse error makes the context longer than usual
            )
            assert outcome.kind == "done", outcome
            seen[outcome.run_id] = runtime.prompts
    examples = examples_from_bus(bus_file)
    assert {e.run_id for e in examples} == set(seen)
    for run_id, prompts in seen.items():
        mine = [e for e in examples if e.run_id == run_id]
        assert [e.messages for e in mine] == prompts[1:]  # the unparsed turn is left out
        assert "your answer was not valid" in mine[0].messages[-1]["content"]
        task = next(t for t in tasks if run_id.endswith(t.id))
        assert [e.completion for e in mine] == oracle_json(task)
        record = mine[-1].chat()
        assert record["messages"][-1] == {"role": "assistant", "content": oracle_json(task)[-1]}


def test_oracle_runs_keep_only_done_and_correct(
    tmp_path: Path, tiny_runtime: Any, bus_file: Path
) -> None:
    with SyncBus(bus_file) as bus:
        report = oracle_runs(bus, tiny_runtime, root=tmp_path / "ws", seed=5, n=6)
        verdicts = bus.events(types=VERDICT)
        correct = [v.payload["run_id"] for v in verdicts if v.payload["correct"]]
        # A done run graded wrong is not training data either.
        bus.publish(VERDICT, {"run_id": correct[0], "correct": False}, agent="grader")
        # Nor is a run that did not end done (the script never says done).
        task = _short_tasks(tmp_path / "ws2")[0]
        stuck = ScriptedRuntime(oracle_json(task)[:-1], counter=tiny_runtime)
        unfinished = run_agent(
            "assistant",
            task.question,
            runtime=stuck,
            bus=bus,
            workspace=task.workspace,
            max_turns=2,
        )
    assert unfinished.kind == "failed" and "no decision left" in (unfinished.reason or "")
    assert report.runs == len(verdicts) == 6 and report.correct == len(correct) >= 2
    assert len(report.failed) == 6 - report.correct  # long tasks may exceed the tiny budget
    # The count task's gold answer comes straight after a listing (which ends with its count):
    # the assistant's policy allows that, so it is training data.
    assert [r for r in correct if r.endswith("-count")]
    usable = usable_runs(bus_file)
    assert usable == correct[1:]
    # A gold decision the agent's policy refuses ends the run failed, so it is no training data:
    # the watcher (done only after a file read) on the assistant's count task.
    with SyncBus(bus_file) as bus:
        watched = oracle_runs(
            bus,
            tiny_runtime,
            root=tmp_path / "ws3",
            seed=5,
            n=6,
            agent="watcher",
            suite="assistant",
        )
    refused = [r for r in watched.failed if r.endswith("-count")]
    assert refused and refused[0].startswith("oracle-watcher-")  # its own run ids, same bus
    watcher_usable = usable_runs(bus_file, agent="watcher")
    assert len(watcher_usable) == watched.correct and refused[0] not in watcher_usable
    assert usable_runs(bus_file, agent="assistant") == correct[1:]
    with pytest.raises(DistillError, match="held-out evaluation seed"):
        with SyncBus(bus_file) as bus:
            oracle_runs(bus, tiny_runtime, root=tmp_path / "ws", seed=EVAL_SEED, n=1)


def test_dataset_files_and_a_short_training(
    tmp_path: Path, tiny_runtime: Any, tiny_model_path: Path, bus_file: Path
) -> None:
    with SyncBus(bus_file) as bus:
        oracle_runs(bus, tiny_runtime, root=tmp_path / "ws", seed=5, n=12)
    examples = examples_from_bus(bus_file)
    data = tmp_path / "data"
    manifest = write_dataset(examples, data, valid_fraction=0.3, seed=1)
    train = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    valid = [json.loads(line) for line in (data / "valid.jsonl").read_text().splitlines()]
    assert len(train) + len(valid) == len(examples) and valid
    assert manifest["examples"] == {"train": len(train), "valid": len(valid)}
    assert manifest["functions"] == {
        examples[0].function: {"prompt_sha256": prompt_sha(examples[0].function)}
    }

    def runs_of(records: list[dict[str, Any]]) -> set[str]:
        return {e.run_id for e in examples if e.chat() in records}

    assert not runs_of(train) & runs_of(valid)  # split by run, not by decision
    assert all(r["messages"][-1]["role"] == "assistant" for r in train + valid)

    options = TrainOptions(iters=2, batch_size=2, layers=1, rank=4, max_seq_length=1024)
    info = train_adapter(data, tmp_path / "lora", model=str(tiny_model_path), options=options)
    assert info["loopbus_training"]["dataset"] == manifest
    assert len(info["loopbus_training"]["train_loss"]) == 1
    from loopbus.models import load_runtime

    adapted = load_runtime(f"{tiny_model_path}+adapter:{tmp_path / 'lora'}")
    with SyncBus(tmp_path / "run.db") as bus:
        task = _short_tasks(tmp_path / "ws2")[0]
        outcome = run_agent(
            "assistant", task.question, runtime=adapted, bus=bus, workspace=task.workspace
        )
        settings = bus.events(types="run.task")[0].payload["settings"]
    assert outcome.kind in ("done", "max_turns", "budget_exceeded", "failed")
    assert settings["model"] == f"{tiny_model_path}+adapter:{tmp_path / 'lora'}"


def test_bad_dataset_input(tmp_path: Path, tiny_model_path: Path) -> None:
    with pytest.raises(DistillError, match="no training examples"):
        write_dataset([], tmp_path / "empty")
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    with pytest.raises(DistillError, match="ending with the assistant"):
        train_adapter(data, tmp_path / "out", model=str(tiny_model_path))
    (data / "train.jsonl").write_text("{oops\n")
    with pytest.raises(DistillError, match="train.jsonl:1 is not JSON"):
        train_adapter(data, tmp_path / "out", model=str(tiny_model_path))
    assert not (tmp_path / "out").exists()


def test_cli_errors(tmp_path: Path, tiny_model_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(
        main, ["distill", "data", str(tmp_path / "d"), "--from", str(tmp_path / "none.db")]
    )
    assert missing.exit_code == EXIT_USAGE
    assert "Error: bus file" in missing.output and "does not exist" in missing.output
    no_data = runner.invoke(
        main,
        ["distill", "train", str(tmp_path / "nodata"), "--out", str(tmp_path / "o")],
    )
    assert no_data.exit_code == EXIT_USAGE and "Error: dataset folder" in no_data.output
    record = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    (tmp_path / "train.jsonl").write_text(json.dumps(record) + "\n")
    bad_model = runner.invoke(
        main,
        ["distill", "train", str(tmp_path), "--out", str(tmp_path / "o"), "--model", "x+adapter:y"],
    )
    assert bad_model.exit_code == EXIT_USAGE and "without '+adapter:" in bad_model.output
    run = runner.invoke(
        main,
        [
            "--bus",
            str(tmp_path / "b.db"),
            "run",
            "assistant",
            "hi",
            "--model",
            f"{tiny_model_path}+adapter:{tmp_path / 'nope'}",
        ],
    )
    assert run.exit_code == EXIT_USAGE and "Error: adapter directory" in run.output


def test_shared_prefix_loss_equals_mlx_lm_loss(tiny_model_path: Path) -> None:
    """The shared-prefix pass computes exactly mlx-lm's masked-prompt loss, LoRA active."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten
    from mlx_lm.tuner.trainer import default_loss

    from loopbus.agents.distill.train import SharedPrefixTrainer, encode
    from loopbus.models.mlx_backend import load_fresh

    model, tokenizer, _ = load_fresh(tiny_model_path)
    system = {"role": "system", "content": "You answer with one JSON action. " * 8}
    records = [
        {
            "messages": [
                system,
                {"role": "user", "content": f"Read file {name}, please."},
                {"role": "assistant", "content": f'{{"action":"read_file","path":"{name}"}}'},
            ]
        }
        for name in ("a.txt", "notes/long-name.md", "b")
    ]
    examples = [encode(tokenizer, r) for r in records]
    trainer = SharedPrefixTrainer(
        model, examples, layers=1, lora={"rank": 4, "scale": 20.0, "dropout": 0.0}
    )
    assert 30 < len(trainer.prefix) < min(offset for _, offset in examples)
    # LoRA starts as a no-op (B = 0): make it change the model, so the check covers it.
    mx.random.seed(3)
    lora_b = [
        (name, mx.random.normal(p.shape) * 0.05)
        for name, p in tree_flatten(model.trainable_parameters())
        if name.endswith("lora_b")
    ]
    model.update(tree_unflatten(lora_b))
    ours, count = trainer.loss(model, *trainer.batch(examples))
    width = max(len(t) for t, _ in examples)
    padded = mx.array([t + [0] * (width - len(t)) for t, _ in examples])
    # mlx-lm's mask runs to step len(t), one past the end (a padding target): stop at the end.
    lengths = mx.array([[offset, len(t) - 1] for t, offset in examples])
    theirs, their_count = default_loss(model, padded, lengths)
    assert count.item() == their_count.item() == sum(len(t) - o for t, o in examples)
    assert abs(ours.item() - theirs.item()) < 1e-4, (ours.item(), theirs.item())


def test_prefix_groups_keep_the_loss(tiny_model_path: Path) -> None:
    """Examples of two agents (two system prompts): each group's prefix is computed once, a
    batch of one group uses it, a mixed batch the common one; the loss is mlx-lm's either way."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten
    from mlx_lm.tuner.trainer import default_loss

    from loopbus.agents.distill.train import SharedPrefixTrainer, encode
    from loopbus.models.mlx_backend import load_fresh

    model, tokenizer, _ = load_fresh(tiny_model_path)
    systems = ["You read files and answer. " * 8, "You watch folders and publish. " * 8]
    records = [
        {
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": f"Look at {name}."},
                {"role": "assistant", "content": f'{{"action":"read_file","path":"{name}"}}'},
            ]
        }
        for system in systems
        for name in ("a.txt", "notes/long-name.md")
    ]
    examples = [encode(tokenizer, r) for r in records]
    trainer = SharedPrefixTrainer(
        model,
        examples,
        layers=1,
        lora={"rank": 4, "scale": 20.0, "dropout": 0.0},
        groups=[r["messages"][0]["content"] for r in records],
    )
    common = len(trainer.prefix)
    assert [len(p.tokens) > common + 30 for p in trainer.prefixes] == [False, True, True]
    assert [trainer.group_of([e]) for e in examples] == [1, 1, 2, 2]
    assert trainer.group_of(examples[1:3]) == 0
    mx.random.seed(3)
    lora_b = [
        (name, mx.random.normal(p.shape) * 0.05)
        for name, p in tree_flatten(model.trainable_parameters())
        if name.endswith("lora_b")
    ]
    model.update(tree_unflatten(lora_b))
    for chosen, group in ((examples[:2], 1), (examples[2:], 2), (examples[1:3], 0)):
        *arrays, used = trainer.batch(chosen)
        assert used == group
        ours, count = trainer.loss(model, *arrays, used)
        width = max(len(t) for t, _ in chosen)
        padded = mx.array([t + [0] * (width - len(t)) for t, _ in chosen])
        lengths = mx.array([[offset, len(t) - 1] for t, offset in chosen])
        theirs, their_count = default_loss(model, padded, lengths)
        assert count.item() == their_count.item()
        assert abs(ours.item() - theirs.item()) < 1e-4, (group, ours.item(), theirs.item())
