"""`loopbus distill ...`: oracle runs, chat JSONL from recorded runs, LoRA adapter training."""

from __future__ import annotations

from pathlib import Path

import click

from loopbus.agents.cli.common import bus_path, exit_codes_epilog, handle_errors
from loopbus.agents.distill.tasksuite import SUITES  # stdlib only: cheap at CLI start


@click.group()
def distill() -> None:
    """Distill agent runs into a LoRA adapter for a model spec (SPEC+adapter:DIR).

    \b
    Examples:
      loopbus --bus oracle.db distill oracle --seed 7 --n 200 --root distill-ws
      loopbus --bus oracle.db distill oracle --agent watcher --seed 7 --n 40 --root distill-ws
      loopbus distill data distill-data --from oracle.db --from loopbus.db
      loopbus distill train distill-data --out my-adapter --iters 60
      loopbus run assistant "What is in README.md?" --model default+adapter:my-adapter
    """


@distill.command("oracle", epilog=exit_codes_epilog())
@click.option("--seed", type=int, required=True, help="Task-suite seed (never the eval seed).")
@click.option("--n", "count", type=click.IntRange(min=1), default=100, show_default=True)
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("distill-workspaces"),
    show_default=True,
    help="Where the tasks' workspaces are written.",
)
@click.option("--agent", default="assistant", show_default=True, help="Agent that runs them.")
@click.option(
    "--suite",
    type=click.Choice(SUITES),
    default=None,
    help="Whose task suite to run (default: the one named like --agent).",
)
@click.option(
    "--model",
    "model_spec",
    default="default",
    show_default=True,
    help="Model whose tokenizer counts the prompts (the budget the real model would face).",
)
@click.pass_context
@handle_errors
def oracle_cmd(
    ctx: click.Context,
    seed: int,
    count: int,
    root: Path,
    agent: str,
    suite: str | None,
    model_spec: str,
) -> None:
    """Run the agent loop on generated tasks with the gold decisions as its model.

    Each built-in agent that has a suite gets its own tasks: `assistant` answers file
    questions, `watcher` publishes a value it finds as an event, `coder` computes one with
    MicroPython. Every run lands on the bus (--bus) with a `distill.verdict` event saying
    whether its answer checked out; `distill data` then uses the correct ones. No model
    generates anything.

    \b
    Example:
      loopbus --bus oracle.db distill oracle --seed 7 --n 200
      loopbus --bus oracle.db distill oracle --agent coder --seed 7 --n 40
    """
    from loopbus.agents.distill.pipeline import oracle_runs
    from loopbus.bus import SyncBus
    from loopbus.models import load_runtime

    counter = load_runtime(model_spec)
    with SyncBus(bus_path(ctx)) as bus:
        report = oracle_runs(bus, counter, root=root, seed=seed, n=count, agent=agent, suite=suite)
    click.echo(f"{report.runs} oracle runs, {report.correct} done and correct")
    for run_id in report.failed:
        click.echo(f"  not usable: {run_id}")


@distill.command("data", epilog=exit_codes_epilog())
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--from",
    "sources",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="A bus file to read runs from (repeatable; default: the --bus file).",
)
@click.option("--agent", default=None, help="Only runs of this agent.")
@click.option(
    "--valid-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split.")
@click.pass_context
@handle_errors
def data_cmd(
    ctx: click.Context,
    out: Path,
    sources: tuple[Path, ...],
    agent: str | None,
    valid_fraction: float,
    seed: int,
) -> None:
    """Write OUT/train.jsonl and OUT/valid.jsonl: one mlx-lm chat record per decision.

    Only runs that ended `done` (and, when graded, correct) are used. Each record is the chat
    the model sees at that turn, rendered with the current prompt, plus the decision it emitted.

    \b
    Example:
      loopbus distill data distill-data --from oracle.db --from loopbus.db
    """
    from loopbus.agents.distill.pipeline import examples_from_bus, write_dataset

    buses = list(sources) or [Path(bus_path(ctx))]
    examples = [e for bus in buses for e in examples_from_bus(bus, agent=agent)]
    manifest = write_dataset(
        examples, out, valid_fraction=valid_fraction, seed=seed, sources=[str(b) for b in buses]
    )
    counts, runs = manifest["examples"], manifest["runs"]
    click.echo(
        f"{out}: {counts['train']} train / {counts['valid']} valid examples "
        f"from {runs['train'] + runs['valid']} runs"
    )


@distill.command("train", epilog=exit_codes_epilog())
@click.argument("data", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--model", "model_spec", default="default", show_default=True, help="Base model.")
@click.option("--iters", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=2, show_default=True)
@click.option(
    "--layers",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="LoRA on the last N transformer blocks.",
)
@click.option("--rank", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=1e-4)
@click.option("--max-seq-length", type=click.IntRange(min=16), default=2048, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@handle_errors
def train_cmd(
    data: Path,
    out: Path,
    model_spec: str,
    iters: int,
    batch_size: int,
    layers: int,
    rank: int,
    learning_rate: float,
    max_seq_length: int,
    seed: int,
) -> None:
    """Train a LoRA adapter on DATA (from `distill data`) into --out, for --model.

    The adapter records its base model, so loading it on another one is refused; use it with
    `--model SPEC+adapter:OUT`.

    \b
    Example:
      loopbus distill train distill-data --out my-adapter --iters 60 --batch-size 2
    """
    from loopbus.agents.distill.pipeline import TrainOptions, train_adapter

    options = TrainOptions(
        iters=iters,
        batch_size=batch_size,
        layers=layers,
        rank=rank,
        learning_rate=learning_rate,
        max_seq_length=max_seq_length,
        seed=seed,
    )
    info = train_adapter(data, out, model=model_spec, options=options, progress=click.echo)
    training = info["loopbus_training"]
    last = training["train_loss"][-1][1] if training["train_loss"] else None
    click.echo(f"{out}: trained in {training['seconds']}s, last train loss {last}")
    click.echo(f"use it with --model '{model_spec}+adapter:{out}'")
