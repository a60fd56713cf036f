"""Every `sh` and `console` command block of README.md runs as written.

The blocks run in order, in a scratch folder holding copies of the files the README points at
(`agents/examples`, `tests/fixtures`, `tests/runs`), with the virtual environment's `bin` first
on PATH (as after `source .venv/bin/activate`) and `LOOPBUS_BUS` in that folder. Each block is one
bash session, so an `export` holds for the rest of its block. A command must exit 0, except a
`console` command whose shown output is an `Error: ...` line (exit 2); a `console` command's
output must match the README's, timestamps and run ids aside. Commands that run until Ctrl-C or
for minutes are skipped by the explicit list below, each with its reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
COPIED = ("agents/examples", "tests/fixtures", "tests/runs")

# command text (a substring of the README line) -> why the test does not run it
SKIP: dict[str, str] = {
    "make demo": "creates .venv and runs the review chain (minutes); tests/chains/test_demo.py "
    "runs the demo",
    "make test": "runs the whole test suite, this test included",
    "tail --follow": "waits for new events until Ctrl-C",
    "up agents/examples/review.toml  ": "`up` without --until-idle supervises until Ctrl-C",
    "agent reviewer --config": "one long-lived agent process; it stops at Ctrl-C",
    "up agents/examples/plan_fanout.toml --until-idle": "four SmolLM2 agent processes, about a "
    "minute on 2 cores; tests/chains runs chains of real processes",
    "cat demo-out/result.md": "written by the plan chain skipped above",
    "distill train": "LoRA training, many minutes on 2 CPU cores; tests/agents/test_distill.py "
    "trains a tiny adapter",
    "--model default+adapter:my-adapter": "needs the adapter that the skipped training writes",
}
TIMEOUT_S = 300  # one block; a model-loading command takes several seconds

_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
_RUN_ID = re.compile(r"\b([a-z][a-z0-9_]*)-[0-9a-f]{12}\b")
_MARK = "@@readme-exit-status"


@dataclass
class Command:
    text: str
    line: int  # in README.md, for messages
    expected: list[str] | None = None  # console blocks: the output shown under the command


@dataclass
class Block:
    lang: str
    line: int
    commands: list[Command] = field(default_factory=list)


def readme_blocks(text: str) -> list[Block]:
    """The `sh` and `console` fenced blocks, split into commands (and shown output)."""
    blocks: list[Block] = []
    current: Block | None = None
    in_other = False
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("```"):
            lang = line[3:].strip()
            if current is not None:
                blocks.append(current)
                current = None
            elif in_other:
                in_other = False
            elif lang in ("sh", "console"):
                current = Block(lang, number)
            else:
                in_other = True
            continue
        if current is None:
            continue
        if current.lang == "sh":
            if line.strip() and not line.lstrip().startswith("#"):
                current.commands.append(Command(line.strip(), number))
        elif line.startswith("$ "):
            current.commands.append(Command(line[2:].strip(), number, expected=[]))
        elif current.commands and current.commands[-1].expected is not None:
            current.commands[-1].expected.append(line)
    assert current is None, f"README.md: the block at line {current.line} is never closed"
    return blocks


def skip_reason(command: str) -> str | None:
    return next((why for key, why in SKIP.items() if key in command), None)


def normalise(lines: list[str]) -> list[str]:
    """Output lines with timestamps and run ids replaced, trailing blanks dropped."""
    out = [_RUN_ID.sub(r"\1-<id>", _TIMESTAMP.sub("<ts>", line)).rstrip() for line in lines]
    while out and not out[-1]:
        out.pop()
    return out


def run_block(block: Block, cwd: Path, env: dict[str, str]) -> list[tuple[Command, int, str]]:
    """Run a block's commands in one bash session; (command, exit status, output) each."""
    todo = [c for c in block.commands if skip_reason(c.text) is None]
    # The status is saved before `echo` (whose own status would replace it); the bare echo
    # puts the marker on a line of its own after output without a final newline.
    script = "".join(f"{c.text}\n_status=$?; echo; echo {_MARK} $_status\n" for c in todo)
    proc = subprocess.run(
        ["bash", "--noprofile", "--norc", "-c", "exec 2>&1\n" + script],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    parts = re.split(rf"\n{_MARK} (\d+)\n", proc.stdout)
    assert len(parts) == 2 * len(todo) + 1, (block.line, proc.stdout[-3000:])
    return [(c, int(parts[2 * i + 1]), parts[2 * i]) for i, c in enumerate(todo)]


def test_the_skip_list_is_small_and_every_entry_is_used() -> None:
    commands = [c.text for b in readme_blocks(README.read_text("utf-8")) for c in b.commands]
    assert len(SKIP) <= 10
    for key in SKIP:
        assert any(key in c for c in commands), f"SKIP entry {key!r} matches no README command"


def test_the_parser_splits_console_output_from_commands() -> None:
    text = "x\n```console\n$ echo 1\n1\n$ false\n```\n```toml\n$ no\n```\n```sh\na # c\n# c\n```\n"
    blocks = readme_blocks(text)
    assert [(b.lang, [(c.text, c.expected) for c in b.commands]) for b in blocks] == [
        ("console", [("echo 1", ["1"]), ("false", [])]),
        ("sh", [("a # c", None)]),
    ]
    assert normalise(["a 2026-11-21T13:59:55.812Z assistant-3f2a9c1d0b4e  ", ""]) == [
        "a <ts> assistant-<id>"
    ]


@pytest.mark.slow
def test_readme_commands_run_as_written(tmp_path: Path, smollm2_path: Path) -> None:
    for rel in COPIED:
        shutil.copytree(REPO / rel, tmp_path / rel)
    venv_bin = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPBUS_")}
    for key in ("LOOPBUS_CACHE", "LOOPBUS_OPENBLAS"):  # the imported model and the BLAS choice
        if key in os.environ:
            env[key] = os.environ[key]
    env.update(
        PATH=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        LOOPBUS_BUS=str(tmp_path / "loopbus.db"),
        TMPDIR=str(tmp_path),  # `mktemp -d` in the tour stays in the scratch folder
        PYTHONUNBUFFERED="1",
        NO_COLOR="1",
    )
    blocks = readme_blocks(README.read_text("utf-8"))
    ran = 0
    failures: list[str] = []
    for block in blocks:
        for command, status, output in run_block(block, tmp_path, env):
            ran += 1
            where = f"README.md:{command.line}: {command.text}"
            shown = command.expected or []
            expected_status = 2 if any(line.startswith("Error: ") for line in shown) else 0
            if status != expected_status:
                failures.append(f"{where}\n  exit {status}, not {expected_status}:\n{output}")
            elif command.expected is not None and normalise(output.splitlines()) != normalise(
                shown
            ):
                failures.append(
                    f"{where}\n  printed:\n{output}\n  README shows:\n" + "\n".join(shown)
                )
    assert ran >= 20, ran  # the README's examples did not all vanish
    assert not failures, "\n\n".join(failures)
