"""The generated task suite: reproducible, and every oracle trajectory really answers its task."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

from loopbus.agents.distill.tasksuite import KINDS, generate_suite
from loopbus.agents.tools.core import ToolContext, ToolError, list_dir, read_file


def _run_oracle(task) -> list[str]:
    """Execute the oracle's tool calls with the real tools; the results, in order."""
    ctx = ToolContext(run_id="t", agent="assistant", workspace=task.workspace)
    results = []
    for step in task.oracle[:-1]:
        call = SimpleNamespace(path=step["path"])
        handler = {"list_dir": list_dir, "read_file": read_file}[step["action"]]
        results.append(handler(call, ctx))
    return results


def test_oracles_answer_their_tasks(tmp_path: Path) -> None:
    tasks = generate_suite(tmp_path, seed=7, n=24)
    assert len({t.id for t in tasks}) == 24
    assert Counter(t.kind for t in tasks) == {kind: 4 for kind in KINDS}
    for task in tasks:
        results = _run_oracle(task)
        final = task.oracle[-1]
        assert final["action"] == "done" and task.check(final["summary"]), task
        # The answer is observed before done (never guessable from the question alone).
        if task.kind == "count":  # the listing's names, and the count line it ends with
            *names, count_line = results[-1].splitlines()
            assert str(len(names)) in task.expected, task
            assert count_line == f"({len(names)} files)", task
        else:
            assert any(any(e in r for e in task.expected) for r in results), task
        assert not task.check(task.question), task
        assert not task.check("I could not find it."), task
    needs_listing = sum(any(s["action"] == "list_dir" for s in t.oracle) for t in tasks)
    two_reads = sum(sum(s["action"] == "read_file" for s in t.oracle) >= 2 for t in tasks)
    assert needs_listing == 12 and two_reads == 4


def test_suite_is_reproducible_and_seeds_differ(tmp_path: Path) -> None:
    first = generate_suite(tmp_path / "a", seed=3, n=6)
    again = generate_suite(tmp_path / "a", seed=3, n=6)  # rewrites the same folders
    other = generate_suite(tmp_path / "b", seed=4, n=6)
    assert [(t.question, t.expected, t.oracle, t.files) for t in first] == [
        (t.question, t.expected, t.oracle, t.files) for t in again
    ]
    assert [t.expected for t in first] != [t.expected for t in other]
    for task in again:
        on_disk = sorted(
            p.relative_to(task.workspace).as_posix()
            for p in task.workspace.rglob("*")
            if p.is_file()
        )
        assert on_disk == task.files


def test_hidden_file_is_not_at_the_root(tmp_path: Path) -> None:
    task = next(t for t in generate_suite(tmp_path, seed=5, n=6) if t.kind == "hidden")
    name = task.question.split()[1]
    ctx = ToolContext(run_id="t", agent="assistant", workspace=task.workspace)
    try:
        read_file(SimpleNamespace(path=name), ctx)
    except ToolError:
        pass
    else:
        raise AssertionError(f"{name} should only exist in a sub-folder")
