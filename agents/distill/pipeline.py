"""Distillation: agent runs on a bus -> mlx-lm chat JSONL of each decision -> a LoRA adapter.

Three steps, each a function (and a ``loopbus distill`` command):

* :func:`oracle_runs` runs the real agent loop over a generated task suite (the agent's own:
  :func:`loopbus.agents.distill.tasksuite.generate_for`) with :class:`loopbus.models.scripted.ScriptedRuntime` answering each turn
  with the task's gold decision (a decision the turn's policy-narrowed schema refuses ends the
  run failed), and records a ``distill.verdict`` event per run (whether the answer checked out).
  The runs land on a bus like any other runs.
* :func:`examples_from_bus` turns every run whose outcome is ``done`` (and whose verdict, when
  it has one, is correct) into one training example per decision: the chat messages the model
  sees at that turn, rebuilt from the run's own events with the *current* BAML template of its
  decision function (so training matches inference even when the recorded prompt is older),
  plus the decision JSON the run emitted as the assistant message. :func:`write_dataset` splits
  them by run into ``train.jsonl`` / ``valid.jsonl`` (``{"messages": [...]}`` per line) and a
  ``manifest.json`` (sources, counts, the sha256 of each function's prompt template, commit).
* :func:`train_adapter` trains an mlx-lm LoRA adapter on such a folder, in process (mlx-lm's own
  ``train_model``; the loss covers the assistant message only), and records the base model's
  identity and the dataset manifest in ``adapter_config.json``: load it with
  ``--model SPEC+adapter:DIR`` (see :mod:`loopbus.models.adapters`).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import subprocess
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from loopbus.agents.errors import AgentError
from loopbus.agents.run.events import RunEventType
from loopbus.models.scripted import ScriptedRuntime  # the oracle's "model" (re-exported here)

#: The event recording whether a run's answer was correct (published by :func:`oracle_runs`).
VERDICT = "distill.verdict"
DATA_FILES = ("train.jsonl", "valid.jsonl")
MANIFEST = "manifest.json"
_ROOT = Path(__file__).resolve().parents[2]
_TS = 'ts="2026-01-01T00:00:00.000Z"'
_PROBE_LOG = (
    f'<event type="{RunEventType.TASK}" {_TS}>{{"task":"Which files are here?"}}</event>\n'
    f'<event type="{RunEventType.DECISION}" {_TS}>{{"action":"list_dir","path":"."}}</event>\n'
    f'<event type="{RunEventType.TOOL_RESULT}" {_TS}>{{"tool":"list_dir","result":"a.txt"}}</event>'
)


class DistillError(AgentError):
    """Bad input to distillation: no usable runs, a malformed dataset, bad training options."""


# --------------------------------------------------------------------------- oracle runs


@dataclass
class OracleReport:
    """What :func:`oracle_runs` did: runs recorded, and how many ended done and correct."""

    runs: int
    correct: int
    failed: list[str]


def oracle_runs(
    bus: Any,
    counter: Any,
    *,
    root: Path,
    seed: int,
    n: int,
    agent: str = "assistant",
    suite: str | None = None,
) -> OracleReport:
    """Run ``agent`` on ``n`` generated tasks (``seed``; workspaces under ``root``) with the
    tasks' gold decisions as the model, and record a verdict event for each run.

    ``suite``: whose task suite (:data:`~loopbus.agents.distill.tasksuite.SUITES`), by default
    the one named like ``agent``; the verdict is that suite's (a watcher run must have
    published the expected event, see :func:`~loopbus.agents.distill.tasksuite.judge`).
    Refuses the evaluation seed (:data:`loopbus.agents.distill.tasksuite.EVAL_SEED`): training
    on the held-out suite would make the benchmark meaningless.
    """
    from loopbus.agents.distill.tasksuite import (
        EVAL_SEED,
        SUITES,
        generate_for,
        judge,
        oracle_json,
    )
    from loopbus.agents.run.loop import run_agent

    if seed == EVAL_SEED:
        raise DistillError(
            f"seed {seed} is the benchmark's held-out evaluation seed; train on another seed"
        )
    if n < 1:
        raise DistillError(f"--n must be at least 1 (got {n})")
    suite = suite or agent
    if suite not in SUITES:
        raise DistillError(
            f"no task suite for {suite!r} (suites: {', '.join(SUITES)}); "
            "name one with --suite to run another agent on it"
        )
    correct, failed = 0, []
    for task in generate_for(suite, Path(root), seed=seed, n=n):
        runtime = ScriptedRuntime(oracle_json(task), counter=counter, spec="oracle")
        # Another agent on a suite gets its own run ids: both may share one oracle bus.
        run_id = f"oracle-{task.id}" if agent == suite else f"oracle-{agent}-{task.id}"
        outcome = run_agent(
            agent,
            task.question,
            runtime=runtime,
            bus=bus,
            workspace=task.workspace,
            max_turns=len(task.oracle) + 1,
            run_id=run_id,
        )
        ok = judge(task, outcome, bus)
        correct += ok
        if not ok:
            failed.append(run_id)
        payload = {
            "run_id": outcome.run_id,
            "correct": ok,
            "task_id": task.id,
            "kind": task.kind,
            "suite": suite,
            "expected": task.expected,
        }
        if task.event_type:
            payload["event_type"] = task.event_type
        bus.publish(VERDICT, payload, agent="distill", run_id=None)
    return OracleReport(runs=n, correct=correct, failed=failed)


# --------------------------------------------------------------------------- examples


@dataclass
class Example:
    """One decision point: the prompt the model saw and the decision JSON it emitted."""

    run_id: str
    function: str
    turn: int
    messages: list[dict[str, str]]
    completion: str

    def chat(self) -> dict[str, Any]:
        """The mlx-lm chat JSONL record: the prompt messages plus the assistant's answer."""
        return {"messages": [*self.messages, {"role": "assistant", "content": self.completion}]}


def run_examples(run_id: str, events: list[Any]) -> list[Example]:
    """The decision points of one run (its events in id order, ``run.task`` first).

    The context before each model call is rebuilt from the run's events (as a resume does, with
    the call's recorded elision) and rendered with the decision function's current template.
    Model calls whose answer did not parse are skipped (their error events stay in the later
    contexts, as the model saw them).
    """
    from loopbus.agents.run.context import EventLog, LogEvent
    from loopbus.agents.run.decide import get_decider
    from loopbus.agents.run.state import context_view

    if not events or events[0].event_type != RunEventType.TASK:
        raise DistillError(f"run {run_id!r} has no run.task event first")
    try:
        function = events[0].payload["settings"]["function"]
        decider = get_decider(function)
    except (KeyError, TypeError):
        raise DistillError(f"run {run_id!r}: its run.task has no settings.function") from None
    log = EventLog()
    examples: list[Example] = []
    pending: Example | None = None
    for event in events:
        kind, payload = event.event_type, event.payload
        if kind == RunEventType.MODEL_CALL and isinstance(payload, dict):
            pending = None
            raw = payload.get("raw")
            if isinstance(raw, str) and raw.strip() and not payload.get("parse_error"):
                elided = int(payload.get("elided") or 0)
                if elided > log.elided:
                    log.elide_oldest(elided - log.elided)
                messages = decider.messages(log.render())
                turn = int(payload.get("turn") or 0)
                pending = Example(run_id, function, turn, messages, raw.strip())
        elif kind == RunEventType.DECISION and pending is not None:
            examples.append(pending)
            pending = None
        view = context_view(kind, payload) if isinstance(payload, dict) else None
        if view is not None:
            ts = payload.get("ts") or event.created_at
            log.append(LogEvent(kind, ts, view), pinned=kind == RunEventType.TASK)
    return examples


def usable_runs(bus_path: str | Path, *, agent: str | None = None) -> list[str]:
    """Run ids (oldest first) whose outcome is ``done`` and whose verdict, if any, is correct."""
    from loopbus.bus.runs_queries import events_of_types, runs

    done = [row["run_id"] for row in reversed(runs(bus_path, agent=agent, outcome="done"))]
    wrong = {
        e.payload.get("run_id")
        for e in events_of_types(bus_path, (VERDICT,))
        if isinstance(e.payload, dict) and not e.payload.get("correct")
    }
    return [run_id for run_id in done if run_id not in wrong]


def examples_from_bus(bus_path: str | Path, *, agent: str | None = None) -> list[Example]:
    """Every decision point of the usable runs (see :func:`usable_runs`) on a bus file."""
    from loopbus.bus.runs_queries import events_of_runs

    path = Path(bus_path)
    if not path.is_file():
        raise DistillError(f"bus file {path} does not exist")
    run_ids = usable_runs(path, agent=agent)
    by_run: dict[str, list[Any]] = {run_id: [] for run_id in run_ids}
    for event in events_of_runs(path, run_ids):
        if event.run_id is not None:  # always: they are selected by run id
            by_run[event.run_id].append(event)
    return [example for run_id in run_ids for example in run_examples(run_id, by_run[run_id])]


def prompt_sha(function: str) -> str:
    """sha256 of the messages a decision function's current prompt renders for a fixed probe
    log (a task, a decision, a tool result): changes with the template and the history layout."""
    from loopbus.agents.run.decide import get_decider

    messages = get_decider(function).messages(_PROBE_LOG)
    text = json.dumps(messages, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def source_commit() -> dict[str, Any]:
    """The git commit of this checkout and whether the prompt sources differ from it."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", *args], cwd=_ROOT, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    changed = git("status", "--porcelain", "--", "baml_src", "baml_client", "agents/run/decide.py")
    return {"commit": git("rev-parse", "HEAD") or None, "prompt_sources_modified": bool(changed)}


def write_dataset(
    examples: list[Example],
    out: Path,
    *,
    valid_fraction: float = 0.1,
    seed: int = 0,
    sources: list[str] | None = None,
) -> dict[str, Any]:
    """Write ``train.jsonl``, ``valid.jsonl`` and ``manifest.json`` into ``out``; returns the
    manifest. Runs (not single decisions) are split, so no run is in both files."""
    if not examples:
        raise DistillError(
            "no training examples: no run ended done (with a correct verdict) on the given buses"
        )
    if not 0 <= valid_fraction < 1:
        raise DistillError(f"--valid-fraction must be in [0, 1) (got {valid_fraction})")
    run_ids = sorted({e.run_id for e in examples})
    random.Random(seed).shuffle(run_ids)
    n_valid = math.ceil(len(run_ids) * valid_fraction) if len(run_ids) > 1 else 0
    valid_runs = set(run_ids[: min(n_valid, len(run_ids) - 1)])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    counts = {"train": 0, "valid": 0}
    with (
        (out / "train.jsonl").open("w", encoding="utf-8") as train,
        (out / "valid.jsonl").open("w", encoding="utf-8") as valid,
    ):
        for example in examples:
            split = "valid" if example.run_id in valid_runs else "train"
            (valid if split == "valid" else train).write(
                json.dumps(example.chat(), ensure_ascii=False) + "\n"
            )
            counts[split] += 1
    functions = sorted({e.function for e in examples})
    manifest = {
        "examples": counts,
        "runs": {"train": len(run_ids) - len(valid_runs), "valid": len(valid_runs)},
        "functions": {name: {"prompt_sha256": prompt_sha(name)} for name in functions},
        "sources": sources or [],
        "seed": seed,
        **source_commit(),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


# --------------------------------------------------------------------------- training


@dataclass
class TrainOptions:
    """LoRA training options (mlx-lm's names). ``layers``: the last N transformer blocks."""

    iters: int = 100
    batch_size: int = 2
    layers: int = 8
    rank: int = 8
    scale: float = 20.0
    learning_rate: float = 1e-4
    max_seq_length: int = 2048
    seed: int = 0
    steps_per_report: int = 10
    val_batches: int = 4


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DistillError(f"{path}:{number} is not JSON: {exc}") from None
        messages = record.get("messages") if isinstance(record, dict) else None
        if not (
            isinstance(messages, list)
            and messages
            and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages)
            and messages[-1].get("role") == "assistant"
        ):
            raise DistillError(
                f"{path}:{number} is not an mlx-lm chat record ending with the assistant "
                'message ({"messages": [{"role": ..., "content": ...}, ...]})'
            )
        records.append(record)
    return records


class _Losses:
    """An mlx-lm TrainingCallback that keeps the reported losses."""

    def __init__(self, progress: Callable[[str], None] | None = None) -> None:
        self.train: list[tuple[int, float]] = []
        self.valid: list[tuple[int, float]] = []
        self.progress = progress
        self.started = time.perf_counter()

    def on_train_loss_report(self, info: dict[str, Any]) -> None:
        self.train.append((int(info["iteration"]), round(float(info["train_loss"]), 4)))

    def on_val_loss_report(self, info: dict[str, Any]) -> None:
        self.valid.append((int(info["iteration"]), round(float(info["val_loss"]), 4)))

    def report(self, kind: str, iteration: int, loss: float) -> None:
        (self.train if kind == "train" else self.valid).append((iteration, round(loss, 4)))
        if self.progress is not None:
            elapsed = time.perf_counter() - self.started
            self.progress(f"iter {iteration:>4}  {kind} loss {loss:.4f}  ({elapsed:.0f}s)")


def train_adapter(
    data: Path,
    out: Path,
    *,
    model: str | None = "default",
    options: TrainOptions | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train a LoRA adapter for ``model`` (a spec without adapter) on the chat JSONL in ``data``
    and write it to ``out``; returns the ``loopbus`` part of its ``adapter_config.json``.
    ``progress`` gets a line per reported loss.

    The loss covers each record's last (assistant) message only. Llama-style models train with
    :class:`loopbus.agents.distill.train.SharedPrefixTrainer` (the prompt prefix all records share is
    computed once); others with mlx-lm's ``train_model``. Records longer than
    ``max_seq_length`` tokens are left out (truncating would cut off the decision).
    """
    import mlx.core as mx
    import numpy as np

    from loopbus.agents.distill import train as distill_train
    from loopbus.models.adapters import BASE_KEY, CONFIG_FILE, base_identity
    from loopbus.models.mlx_backend import load_fresh
    from loopbus.models.runtime import model_dir

    opts = options or TrainOptions()
    if opts.iters < 1 or opts.batch_size < 1 or opts.layers < 1 or opts.rank < 1:
        raise DistillError("--iters, --batch-size, --layers and --rank must be at least 1")
    data, out = Path(data), Path(out)
    if not data.is_dir():
        raise DistillError(f"dataset folder {data} does not exist (write one with distill data)")
    records = {name: _read_jsonl(data / f"{name}.jsonl") for name in ("train", "valid")}
    if not records["train"]:
        raise DistillError(f"{data / 'train.jsonl'} is missing or empty")
    path = model_dir(model)  # refuses openai: and +adapter: specs
    net, tokenizer, config = load_fresh(path)
    if opts.layers > len(net.layers):
        raise DistillError(
            f"--layers {opts.layers}: the model has only {len(net.layers)} transformer blocks"
        )
    identity = base_identity(net, config, name=model or "default")
    encoded = {
        name: [
            (r, e)
            for r in recs
            if len((e := distill_train.encode(tokenizer, r))[0]) <= opts.max_seq_length
        ]
        for name, recs in records.items()
    }
    train_set, valid_set = encoded["train"], encoded["valid"]
    if len(train_set) < opts.batch_size:
        raise DistillError(
            f"{data / 'train.jsonl'} has {len(train_set)} usable examples (at most "
            f"{opts.max_seq_length} tokens), fewer than --batch-size {opts.batch_size}"
        )
    if len(valid_set) < opts.batch_size:
        valid_set = []  # a validation batch needs batch_size examples
    lora = {"rank": opts.rank, "dropout": 0.0, "scale": opts.scale}
    np.random.seed(opts.seed)
    mx.random.seed(opts.seed)  # the LoRA matrices' initial values
    losses = _Losses(progress)
    started = time.perf_counter()
    if distill_train.supported(net):
        both = train_set + valid_set
        trainer = distill_train.SharedPrefixTrainer(
            net,
            [e for _, e in both],
            layers=opts.layers,
            lora=lora,
            # One prefix per system prompt (per agent), each computed once.
            groups=[json.dumps(r["messages"][0], sort_keys=True) for r, _ in both],
        )
        distill_train.train(
            trainer,
            [e for _, e in train_set],
            [e for _, e in valid_set],
            iters=opts.iters,
            batch_size=opts.batch_size,
            learning_rate=opts.learning_rate,
            seed=opts.seed,
            val_batches=opts.val_batches,
            steps_per_report=opts.steps_per_report,
            report=losses.report,
        )
        method = {
            "trainer": "shared-prefix",
            "shared_prefix_tokens": len(trainer.prefix),
            "group_prefix_tokens": [len(p.tokens) for p in trainer.prefixes[1:]],
        }
    else:
        _train_with_mlx_lm(
            net,
            tokenizer,
            [r for r, _ in train_set],
            [r for r, _ in valid_set],
            opts,
            lora,
            out,
            losses,
        )
        method = {"trainer": "mlx_lm.lora"}
    manifest_path = data / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    info = {
        **method,
        "options": vars(opts),
        "examples": {"train": len(train_set), "valid": len(valid_set)},
        "train_loss": losses.train,
        "valid_loss": losses.valid,
        "seconds": round(time.perf_counter() - started, 1),
        "dataset": manifest,
        **source_commit(),
    }
    adapter_config = {
        "model": model or "default",
        "data": data.name,
        "fine_tune_type": "lora",
        "num_layers": opts.layers,
        "lora_parameters": lora,
        BASE_KEY: identity,
        "loopbus_training": info,
    }
    if method["trainer"] == "shared-prefix":
        distill_train.save(net, out, adapter_config)
    else:
        merged = json.loads((out / CONFIG_FILE).read_text())
        (out / CONFIG_FILE).write_text(json.dumps({**merged, **adapter_config}, indent=2) + "\n")
    return {BASE_KEY: identity, "loopbus_training": info}


def _train_with_mlx_lm(
    net: Any,
    tokenizer: Any,
    train_records: list[dict[str, Any]],
    valid_records: list[dict[str, Any]],
    opts: TrainOptions,
    lora: dict[str, Any],
    out: Path,
    losses: _Losses,
) -> None:
    """mlx-lm's own LoRA training loop (for models the shared-prefix trainer does not cover)."""
    from mlx_lm.lora import CONFIG_DEFAULTS, train_model
    from mlx_lm.tuner.callbacks import TrainingCallback
    from mlx_lm.tuner.datasets import create_dataset

    args = types.SimpleNamespace(
        **{
            **CONFIG_DEFAULTS,
            "train": True,
            "fine_tune_type": "lora",
            "num_layers": opts.layers,
            "batch_size": opts.batch_size,
            "iters": opts.iters,
            "learning_rate": opts.learning_rate,
            "lora_parameters": lora,
            "mask_prompt": True,  # the loss covers the decision, not the prompt
            "adapter_path": str(out),
            "save_every": opts.iters + 1,  # no intermediate checkpoints
            "steps_per_eval": opts.iters,
            "steps_per_report": min(opts.steps_per_report, opts.iters),
            "val_batches": opts.val_batches,
            "max_seq_length": opts.max_seq_length,
            "seed": opts.seed,
        }
    )
    train_set = create_dataset(train_records, tokenizer, args)
    valid_set = create_dataset(valid_records, tokenizer, args) if valid_records else []
    # mlx-lm calls only the two report methods, which _Losses has (it is not its subclass, so
    # that mlx-lm is imported only here).
    callback = cast(TrainingCallback, losses)
    train_model(args, net, train_set, valid_set, training_callback=callback)
