"""A generated suite of narrow file questions, for evaluation (bench) and distillation.

Each :class:`Task` is a small workspace written under ``root``, one question about it, the
answers that count as correct, and a scripted *oracle* trajectory: the gold decisions, as the
JSON the model must emit, that answer it (``list_dir`` where the question needs exploring,
``read_file`` once or twice, then ``done``).

Everything is derived from ``seed`` (names, values, distractors, the mix of task kinds), so a
suite is reproducible and never tuned by hand; evaluation and training must use disjoint seeds
(the benchmark uses :data:`EVAL_SEED`).

Task kinds, mixed so that about half need listing a folder and some need two reads:

* ``named``: the question names a file at the root (read, answer);
* ``implied``: the question names the project, the README holds the answer (read, answer);
* ``hidden``: the question names a file that sits in a sub-folder (list, read, answer);
* ``folder``: the answer is in the one relevant file of a named folder (list, read, answer);
* ``count``: how many files a folder holds (list, answer);
* ``pointer``: a file names the file that holds the answer (read, read, answer).

The other built-in agents have suites of their own over the same kind of tasks
(:func:`generate_for` picks one by agent name): :mod:`loopbus.agents.distill.watch_suite` (the
``watcher`` publishes what it finds as an event; kinds ``watch-*``, over these workspaces) and
:mod:`loopbus.agents.distill.code_suite` (the ``coder`` computes a value with MicroPython; kinds
``code-*``). :func:`judge` grades a run of any of them from the bus.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

#: Seed of the held-out evaluation suite (bench/bench_agents.py); train on other seeds.
EVAL_SEED = 1000
#: The agents that have a task suite (:func:`generate_for`).
SUITES = ("assistant", "watcher", "coder")

KINDS = ("named", "hidden", "folder", "count", "pointer", "implied")

_WORDS = (
    "amber basalt cobalt dune ember falcon garnet harbor indigo juniper kestrel lumen meadow "
    "nimbus onyx pepper quartz raven saffron tundra umber velvet willow xenon yarrow zephyr "
    "acorn birch cedar delta fjord grove heron iris jasper koala lotus maple nectar orchid"
).split()
_PROJECTS = (
    "Pebble Quill Tern Marble Sprocket Lantern Bramble Cinder Otter Thistle Comet Wren".split()
)
# (what the question asks for, file stem that holds it, how the file states it)
_KEYS = (
    ("launch code", "secret", "launch code: {value}"),
    ("password hint", "hint", "password hint: {value}"),
    ("server port", "server", "port = {value}"),
    ("owner", "owner", "owner: {value}"),
    ("release name", "release", "release name: {value}"),
    ("database name", "database", "database = {value}"),
    ("favorite color", "color", "favorite color: {value}"),
    ("access token", "token", "token: {value}"),
)
_FOLDERS = ("docs", "config", "data", "notes", "etc", "misc")
_FILLER = (
    "This file is part of the project.",
    "Do not edit by hand.",
    "See the other files for details.",
    "Last checked by the build.",
    "Nothing else of note here.",
)
_NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve").split()


@dataclass
class Task:
    """One question over a generated workspace, with its accepted answers and gold trajectory.

    ``expected``: the answer is correct when the Done summary contains one of these,
    case-insensitively (as a whole word when ``whole_word``: "17" is not in "170"). ``oracle``:
    the gold decisions in order, each the JSON object the model must emit (``{"action":
    "list_dir", "path": "."}``, ..., ``{"action": "done", ...}``). ``agent``: the agent the task
    is for. ``event_type``: set for ``watcher`` tasks, which are graded on what the run
    published (an event of this type with an expected value in its payload), not its summary.
    """

    id: str
    workspace: Path
    question: str
    expected: list[str]
    oracle: list[dict[str, Any]]
    kind: str = ""
    files: list[str] = field(default_factory=list)
    agent: str = "assistant"
    event_type: str = ""
    whole_word: bool = False

    def check(self, summary: str) -> bool:
        """Whether a Done summary answers the question (contains an expected string)."""
        return any(_holds(summary, answer, self.whole_word) for answer in self.expected)

    def check_published(self, published: list[tuple[str, Any]]) -> bool:
        """Whether one of the ``(event_type, payload)`` a run published is an event of
        :attr:`event_type` with an expected value, as a whole word, in one of its fields."""
        return any(
            event_type == self.event_type
            and isinstance(payload, dict)
            and any(
                _holds(str(value), answer, True)
                for value in cast("dict[str, Any]", payload).values()
                for answer in self.expected
            )
            for event_type, payload in published
        )


def _holds(text: str, answer: str, whole_word: bool) -> bool:
    """``answer`` in ``text``, case-insensitively; as a whole word: "17" is not in "170"."""
    text, answer = text.casefold(), answer.casefold()
    if not whole_word:
        return answer in text
    return re.search(rf"(?<!\w){re.escape(answer)}(?!\w)", text) is not None


def judge(task: Task, outcome: Any, bus: Any) -> bool:
    """Whether a run (its :class:`~loopbus.agents.run.state.Outcome`, its events on ``bus``)
    answered ``task``: it ended ``done`` and, for a watcher task, published the expected event
    (read back from the bus), else its summary holds the answer."""
    if outcome.kind != "done":
        return False
    if task.event_type:
        from loopbus.agents.run.events import is_run_event

        events = bus.events(run_id=outcome.run_id)
        return task.check_published(
            [(e.event_type, e.payload) for e in events if not is_run_event(e.event_type)]
        )
    return task.check(outcome.summary or "")


def generate_for(agent: str, root: Path, *, seed: int, n: int) -> list[Task]:
    """``n`` tasks of ``agent``'s suite (one of :data:`SUITES`), from ``seed``, under ``root``.

    Raises ValueError for an agent without a suite.
    """
    if agent == "assistant":
        return generate_suite(root, seed=seed, n=n)
    if agent == "watcher":
        from loopbus.agents.distill.watch_suite import generate_watch_suite

        return generate_watch_suite(root, seed=seed, n=n)
    if agent == "coder":
        from loopbus.agents.distill.code_suite import generate_code_suite

        return generate_code_suite(root, seed=seed, n=n)
    raise ValueError(f"no task suite for agent {agent!r}; suites: {', '.join(SUITES)}")


def _value(rng: random.Random, key: str) -> str:
    if key == "server port":
        return str(rng.randint(2000, 9999))
    return f"{rng.choice(_WORDS)}-{rng.randint(100, 999)}"


def _body(rng: random.Random, line: str) -> str:
    # The fact sits among filler lines, at a random position.
    lines: list[str] = rng.sample(_FILLER, 2)
    lines.insert(rng.randint(0, 2), line)
    return "\n".join(lines) + "\n"


class _Builder:
    """Writes one task's workspace and remembers its files (relative posix paths)."""

    def __init__(self, root: Path, rng: random.Random) -> None:
        self.root = root
        self.rng = rng
        self.files: list[str] = []
        # What the question asks for ("launch code", "version of Pebble"), set by the makers
        # of one-value tasks (the watcher suite words its own question with it).
        self.subject = ""

    def write(self, relative: str, text: str) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        self.files.append(relative)

    def distractors(self, key_stem: str, folders: list[str], count: int = 2) -> None:
        """Files with other facts, so neither the listing nor a guess gives the answer away."""
        rng = self.rng
        for _ in range(count):
            other_name, other_stem, other_line = rng.choice([k for k in _KEYS if k[1] != key_stem])
            folder = rng.choice(folders)
            relative = f"{folder}/{other_stem}.txt" if folder != "." else f"{other_stem}.txt"
            if relative in self.files:
                continue
            self.write(relative, _body(rng, other_line.format(value=_value(rng, other_name))))


def _done(summary: str) -> dict[str, Any]:
    return {"action": "done", "summary": summary}


def _named(b: _Builder) -> tuple[str, list[str], list[dict[str, Any]]]:
    rng = b.rng
    key, stem, line = rng.choice(_KEYS)
    value = _value(rng, key)
    name = f"{stem}.txt"
    b.write(name, _body(rng, line.format(value=value)))
    b.write("README.md", f"# {rng.choice(_PROJECTS)}\nA small project.\n")
    b.distractors(stem, [".", rng.choice(_FOLDERS)])
    b.subject = key
    question = f"Read {name} and tell me the {key}."
    oracle = [{"action": "read_file", "path": name}, _done(f"The {key} is {value}.")]
    return question, [value], oracle


def _implied(b: _Builder) -> tuple[str, list[str], list[dict[str, Any]]]:
    rng = b.rng
    project = rng.choice(_PROJECTS)
    version = f"{rng.randint(1, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}"
    b.write(
        "README.md",
        f"# {project}\n{project} is a small {rng.choice(_WORDS)} tool.\n"
        f"Version: {version}\nLicense: MIT\n",
    )
    folder = rng.choice(_FOLDERS)
    b.write(f"{folder}/changelog.txt", f"Older releases: {rng.randint(0, 0)}.{rng.randint(1, 9)}\n")
    b.distractors("", [".", folder])
    b.subject = f"version of {project}"
    question = f"What is the version of {project}?"
    oracle = [
        {"action": "read_file", "path": "README.md"},
        _done(f"The version of {project} is {version}."),
    ]
    return question, [version], oracle


def _hidden(b: _Builder) -> tuple[str, list[str], list[dict[str, Any]]]:
    rng = b.rng
    key, stem, line = rng.choice(_KEYS)
    value = _value(rng, key)
    folder = rng.choice(_FOLDERS)
    name = f"{stem}.txt"
    b.write(f"{folder}/{name}", _body(rng, line.format(value=value)))
    b.write("README.md", f"# {rng.choice(_PROJECTS)}\nFiles are kept in {folder}/.\n")
    b.distractors(stem, [folder, rng.choice(_FOLDERS)])
    b.subject = key
    question = f"Find {name} and tell me the {key}."
    oracle = [
        {"action": "list_dir", "path": "."},
        {"action": "list_dir", "path": folder},
        {"action": "read_file", "path": f"{folder}/{name}"},
        _done(f"The {key} is {value}."),
    ]
    return question, [value], oracle


def _folder(b: _Builder) -> tuple[str, list[str], list[dict[str, Any]]]:
    rng = b.rng
    key, stem, line = rng.choice(_KEYS)
    value = _value(rng, key)
    folder = rng.choice(_FOLDERS)
    b.write(f"{folder}/{stem}.txt", _body(rng, line.format(value=value)))
    b.write("README.md", f"# {rng.choice(_PROJECTS)}\nA small project.\n")
    b.distractors(stem, [folder, "."])
    b.subject = key
    question = f"One of the files in the {folder} folder has the {key}. What is the {key}?"
    oracle = [
        {"action": "list_dir", "path": folder},
        {"action": "read_file", "path": f"{folder}/{stem}.txt"},
        _done(f"The {key} is {value}."),
    ]
    return question, [value], oracle


def _count(b: _Builder) -> tuple[str, list[str], list[dict[str, Any]]]:
    rng = b.rng
    folder = rng.choice(_FOLDERS)
    count = rng.randint(2, 6)
    stems = rng.sample(_WORDS, count)
    for stem in stems:
        b.write(f"{folder}/{stem}.txt", _body(rng, f"name: {stem}"))
    b.write("README.md", f"# {rng.choice(_PROJECTS)}\nA small project.\n")
    other = rng.choice([f for f in _FOLDERS if f != folder])
    b.write(f"{other}/{rng.choice(_WORDS)}.txt", "unrelated\n")
    question = f"How many files are in the {folder} folder?"
    oracle = [
        {"action": "list_dir", "path": folder},
        _done(f"The {folder} folder has {count} files."),
    ]
    return question, [str(count), _NUMBER_WORDS[count]], oracle


def _pointer(b: _Builder) -> tuple[str, list[str], list[dict[str, Any]]]:
    rng = b.rng
    key, stem, line = rng.choice(_KEYS)
    value = _value(rng, key)
    folder = rng.choice(_FOLDERS)
    target = f"{folder}/{rng.choice(_WORDS)}.txt"
    b.write(target, _body(rng, line.format(value=value)))
    b.write("index.txt", f"The {key} is kept in {target}.\n")
    b.write("README.md", f"# {rng.choice(_PROJECTS)}\nA small project.\n")
    b.distractors(stem, [folder, "."])
    b.subject = key
    question = f"Read index.txt to find the file with the {key}. What is the {key}?"
    oracle = [
        {"action": "read_file", "path": "index.txt"},
        {"action": "read_file", "path": target},
        _done(f"The {key} is {value}."),
    ]
    return question, [value], oracle


_MAKERS: dict[str, Callable[[_Builder], tuple[str, list[str], list[dict[str, Any]]]]] = {
    "named": _named,
    "implied": _implied,
    "hidden": _hidden,
    "folder": _folder,
    "count": _count,
    "pointer": _pointer,
}


def generate_suite(root: Path, *, seed: int, n: int) -> list[Task]:
    """``n`` tasks with workspaces written under ``root`` (``root/<id>/``), all from ``seed``.

    Kinds cycle through :data:`KINDS` in a seed-shuffled order, so any ``n >= 6`` covers each.
    Calling it again with the same arguments rewrites identical workspaces.
    """
    rng = random.Random(seed)
    order = list(KINDS)
    rng.shuffle(order)
    tasks: list[Task] = []
    for index in range(n):
        kind = order[index % len(order)]
        task_id = f"s{seed}-{index:03d}-{kind}"
        workspace = fresh_workspace(Path(root) / task_id)
        builder = _Builder(workspace, random.Random(f"{seed}:{index}"))
        question, expected, oracle = _MAKERS[kind](builder)
        tasks.append(
            Task(task_id, workspace, question, expected, oracle, kind, sorted(builder.files))
        )
    return tasks


def fresh_workspace(folder: Path) -> Path:
    """``folder``, created empty (what an earlier generation wrote there is removed)."""
    if folder.exists():
        _clear(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _clear(folder: Path) -> None:
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()


def oracle_json(task: Task) -> list[str]:
    """The oracle decisions as the exact JSON text a model would emit (compact separators)."""
    return [json.dumps(step, separators=(",", ":")) for step in task.oracle]
