"""The chain agents (review demo and plan/fan-out example) and their deterministic tools.

Small local models are weak, so every tool here does its work deterministically and the model
mostly chooses *which* tool to call (constrained decoding guarantees a parseable choice):

================  =========================  =====================================================
agent (function)  tools                      what the tool does
================  =========================  =====================================================
scanner           ScanFiles | Done           publish one ``file.found`` per workspace file
reviewer          CheckFile | Done           publish ``finding`` events for the task's file
checker           CheckFile                  the same, one decision (crash test, tiny model)
digester          DigestFile                 publish ``file.digest`` (lines, sha256) for the file
reporter          Done | WriteReport         re-render ``report.md`` from the bus
tally             WriteReport                the same, one decision (crash test, tiny model)
planner           PlanSubgoals               publish one ``subgoal`` per sub-goal (one-shot)
worker            Done | RunPython           solve a sub-goal; the summary is its answer
writer            Done | AssembleResult      write ``result.md`` once every sub-goal is answered
================  =========================  =====================================================

Each is an :class:`~loopbus.agents.agent.Agent` on loopbus's own ``baml_client``, its tools bound
with ``@agent.tool`` (by class name, so importing this module does not load BAML); chain
configs name them by ``kind`` (``kind = "reviewer"``), through :data:`AGENTS` (read by
:func:`loopbus.agents.builtin.get_agent`), like a user's ``kind = "mypkg.agents:reviewer"``.

Every publishing tool is idempotent per run: it first looks on the bus for what this run
already published and publishes everything in one transaction, so a resumed run never
duplicates its outputs. Tools use only their :class:`~loopbus.agents.tools.core.ToolContext`: ``ctx.bus``
(read-only), ``ctx.trigger()`` (the run's triggering event), ``ctx.publish_many`` (outputs,
recorded with the run) and ``ctx.output`` (the chain's output folder). The reporter and the
writer declare what they read (``reads``), so ``loopbus export`` / ``replay`` work for them too.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from loopbus.agents.agent import Agent
from loopbus.agents.run.policy import ACT_FIRST
from loopbus.agents.tools.core import ToolContext, ToolError
from loopbus.agents.tools.python import run_python

__all__ = [
    "AGENTS",
    "REPORT_READS",
    "RESULT_READS",
    "checker",
    "digester",
    "planner",
    "render_report",
    "reporter",
    "reviewer",
    "scanner",
    "tally",
    "worker",
    "writer",
]

# Folders a review never looks into.
_SKIP_DIRS = {".git", "__pycache__", ".venv", "node_modules", ".pytest_cache", ".ruff_cache"}
MAX_FILES = 200
_TODO_RE = re.compile(r"\b(TODO|FIXME|XXX)\b[:\s]*(.*)")
#: What :func:`render_report` / :func:`assemble_result` read from the bus (other runs' events).
REPORT_READS = ("file.found", "finding", "review.done", "file.digest")
RESULT_READS = ("subgoal", "subgoal.answered")


def _agent(name: str, function: str, description: str, max_tokens: int, **kw: Any) -> Agent:
    return Agent(name, "loopbus.baml_client", function, description, max_tokens, **kw)


# The demo chains' agents act before they may answer (ACT_FIRST: with `done` left out of their
# first turn, the only member left is their tool, so no `first_tool` is needed).
scanner = _agent(
    "scanner",
    "Scanner",
    "lists the workspace and publishes one file.found per file",
    48,
    policy=ACT_FIRST,
)
reviewer = _agent(
    "reviewer",
    "Reviewer",
    "checks the file of a file.found event and publishes findings",
    48,
    policy=ACT_FIRST,
)
checker = _agent("checker", "Checker", "one-decision reviewer (publishes findings; crash test)", 32)
digester = _agent("digester", "Digester", "one-decision: publishes file.digest (lines, sha256)", 32)
reporter = _agent(
    "reporter",
    "Reporter",
    "re-renders report.md from the findings on the bus",
    48,
    policy=ACT_FIRST,
)
tally = _agent("tally", "Tally", "one-decision reporter (re-renders report.md; crash test)", 32)
planner = _agent("planner", "Planner", "turns a goal into subgoal events", 256)
worker = _agent(
    "worker", "Worker", "solves one sub-goal (RunPython sandbox); the summary is its answer", 256
)
writer = _agent(
    "writer",
    "Writer",
    "writes result.md once every sub-goal of the plan is answered",
    64,
    policy=ACT_FIRST,
)
#: The example agents by name: what a chain config's short ``kind`` names.
AGENTS: Mapping[str, Agent] = MappingProxyType(
    {
        a.name: a
        for a in (scanner, reviewer, checker, digester, reporter, tally, planner, worker, writer)
    }
)
# Not idempotent: a snippet may publish, and the sandbox session is stateful.
worker.bind("RunPython", run_python, idempotent=False, description="run MicroPython code")


def _bus(ctx: ToolContext) -> Any:
    if ctx.bus is None:
        raise ToolError("this tool reads the bus; run it inside a chain (`loopbus up CONFIG`)")
    return ctx.bus


def _already(ctx: ToolContext, event_type: str) -> list[Any]:
    return _bus(ctx).events(run_id=ctx.run_id, types=[event_type])


def _publish_all(ctx: ToolContext, items: list[tuple[str, Any]]) -> None:
    """Publish ``items`` for this run in one transaction (all or nothing), caused by the trigger."""
    if not items:
        return
    if ctx.publish_many is None:
        raise ToolError("this run has no bus to publish on")
    ctx.publish_many(items)


def _output(ctx: ToolContext) -> Path:
    if ctx.output is None:
        raise ToolError("this run has no output folder; set `output` in the chain config")
    return ctx.output


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _project_files(root: Path) -> list[str]:
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and not name.endswith((".pyc", ".db")):
                found.append(str((Path(dirpath) / name).relative_to(root)))
    return found[:MAX_FILES]


# -- scanner -----------------------------------------------------------------------------------
@scanner.tool(cls="ScanFiles", description="publish file.found for every workspace file")
def scan_files(call: Any, ctx: ToolContext) -> str:
    """Publish ``file.found {path, scan, index, total}`` for every file of the workspace."""
    trigger = ctx.trigger()
    done = _already(ctx, "file.found")
    if done:
        return f"already published {len(done)} file.found events in this run"
    if ctx.workspace is None:
        raise ToolError("this agent has no workspace to scan; set `workspace` in the config")
    files = _project_files(ctx.workspace)
    total = len(files)
    items: list[tuple[str, Any]] = [
        ("file.found", {"path": p, "scan": trigger.id, "index": i, "total": total})
        for i, p in enumerate(files)
    ]
    _publish_all(ctx, items)
    shown = ", ".join(files[:8]) + (" ..." if total > 8 else "")
    return f"published file.found for {total} files: {shown}"


# -- reviewer ----------------------------------------------------------------------------------
def _trigger_path(trigger: Any) -> str:
    payload = trigger.payload if isinstance(trigger.payload, dict) else {}
    path = payload.get("path")
    if not isinstance(path, str) or not path:
        raise ToolError(f"event {trigger.id} ({trigger.event_type}) names no file `path`")
    return path


def _has_tests(root: Path, rel: str) -> bool:
    stem = Path(rel).stem
    names = {f"test_{stem}.py", f"{stem}_test.py"}
    return any(Path(p).name in names for p in _project_files(root))


def file_findings(root: Path, rel: str, text: str) -> list[dict[str, Any]]:
    """Deterministic review of one file: TODO/FIXME lines and modules without tests."""
    findings: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        match = _TODO_RE.search(line)
        if match:
            note = match.group(2).strip() or line.strip()
            findings.append(
                {
                    "path": rel,
                    "kind": match.group(1).lower(),
                    "line": number,
                    "message": f"{match.group(1)} left in {rel}:{number}: {note}"[:200],
                }
            )
    name = Path(rel).name
    is_test = name.startswith("test_") or name.endswith("_test.py") or "tests" in Path(rel).parts
    if rel.endswith(".py") and not is_test and name != "__init__.py" and not _has_tests(root, rel):
        findings.append(
            {
                "path": rel,
                "kind": "untested",
                "line": 0,
                "message": f"no tests for module {Path(rel).stem} ({rel})",
            }
        )
    return findings


@checker.tool(cls="CheckFile", description="publish findings for the task's file")
@reviewer.tool(cls="CheckFile", description="publish findings for the task's file")
def check_file(call: Any, ctx: ToolContext) -> str:
    """Publish ``finding`` events for the task's file (once per run)."""
    trigger = ctx.trigger()
    rel = _trigger_path(trigger)
    done = _already(ctx, "finding")
    if done or _already(ctx, "review.checked"):
        return f"already checked {rel}: {len(done)} findings published"
    text = ctx.read_text(rel)
    findings = file_findings(ctx.workspace or Path("."), rel, text)
    extra = {k: trigger.payload[k] for k in ("scan", "total") if k in trigger.payload}
    items: list[tuple[str, Any]] = [("finding", {**f, **extra}) for f in findings]
    # A marker so a second call in the same run knows the check happened even with 0 findings.
    items.append(("review.checked", {"path": rel, "findings": len(findings), **extra}))
    _publish_all(ctx, items)
    if not findings:
        return f"{rel}: no findings"
    return f"{rel}: {len(findings)} findings: " + "; ".join(f["message"] for f in findings[:5])


@digester.tool(cls="DigestFile", description="publish file.digest for the task's file")
def digest_file(call: Any, ctx: ToolContext) -> str:
    """Publish ``file.digest {path, lines, sha256}`` for the task's file (once per run)."""
    trigger = ctx.trigger()
    rel = _trigger_path(trigger)
    if _already(ctx, "file.digest"):
        return f"already digested {rel}"
    text = ctx.read_text(rel)
    digest = {
        "path": rel,
        "lines": len(text.splitlines()),
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()[:16],
    }
    _publish_all(ctx, [("file.digest", digest)])
    return f"{rel}: {digest['lines']} lines"


# -- reporter ----------------------------------------------------------------------------------
def render_report(bus: Any, scan: int | None = None) -> tuple[str, int, int, int]:
    """report.md for ``scan`` (default: the latest) from the bus; (text, reviewed, total, findings)."""
    found = bus.events(types=["file.found"])
    if scan is None and found:
        scan = found[-1].payload.get("scan")
    files: dict[str, dict[str, Any]] = {}
    total = 0
    for e in found:
        if e.payload.get("scan") == scan:
            files.setdefault(e.payload["path"], {"findings": {}, "reviewed": False, "lines": None})
            total = int(e.payload.get("total", total))
    for e in bus.events(types=["finding"]):
        if e.payload.get("scan") == scan and e.payload.get("path") in files:
            f = e.payload
            # dedupe by content: a re-run must not double a finding in the report
            files[f["path"]]["findings"][(f.get("kind"), f.get("line"), f.get("message"))] = f
    for e in bus.events(types=["review.done"]):
        if e.payload.get("scan") == scan and e.payload.get("path") in files:
            files[e.payload["path"]]["reviewed"] = True
    for e in bus.events(types=["file.digest"]):
        if e.payload.get("path") in files:
            files[e.payload["path"]]["lines"] = e.payload.get("lines")
    reviewed = sum(1 for f in files.values() if f["reviewed"])
    count = sum(len(f["findings"]) for f in files.values())
    status = "complete" if total and reviewed >= total else "in progress"
    lines = [
        "# Review report",
        "",
        f"Scan #{scan}: {reviewed}/{total} files reviewed ({status}), {count} findings.",
        "",
    ]
    for path in sorted(files):
        info = files[path]
        mark = "x" if info["reviewed"] else " "
        size = f" ({info['lines']} lines)" if info["lines"] is not None else ""
        lines.append(f"- [{mark}] `{path}`{size}")
        for key in sorted(info["findings"], key=lambda k: (k[1] or 0, str(k[0]))):
            lines.append(f"  - {info['findings'][key]['message']}")
    return "\n".join(lines) + "\n", reviewed, total, count


@tally.tool(cls="WriteReport", description="re-render report.md", reads=REPORT_READS)
@reporter.tool(cls="WriteReport", description="re-render report.md", reads=REPORT_READS)
def write_report(call: Any, ctx: ToolContext) -> str:
    """Write ``report.md`` into the chain's output folder from every finding on the bus."""
    trigger = ctx.trigger()
    scan = trigger.payload.get("scan") if isinstance(trigger.payload, dict) else None
    text, reviewed, total, count = render_report(_bus(ctx), scan)
    target = _output(ctx) / "report.md"
    _atomic_write(target, text)
    return f"wrote {target.name}: {reviewed}/{total} files reviewed, {count} findings. The report is up to date."


# -- planner / writer --------------------------------------------------------------------------
@planner.tool(cls="PlanSubgoals", description="publish subgoal events")
def plan_subgoals(call: Any, ctx: ToolContext) -> str:
    """Publish ``subgoal {plan, index, total, text, goal}`` per sub-goal (once per run)."""
    trigger = ctx.trigger()
    if _already(ctx, "subgoal"):
        return "this plan was already published"
    raw = [call.first, call.second, call.third or ""]
    goals = list(dict.fromkeys(g.strip() for g in raw if g and g.strip()))
    if not goals:
        raise ToolError("give at least one non-empty sub-goal")
    goal = trigger.payload.get("goal", "") if isinstance(trigger.payload, dict) else ""
    items: list[tuple[str, Any]] = [
        (
            "subgoal",
            {"plan": trigger.id, "index": i, "total": len(goals), "text": g[:300], "goal": goal},
        )
        for i, g in enumerate(goals)
    ]
    items.append(("plan", {"plan": trigger.id, "goal": goal, "subgoals": goals}))
    _publish_all(ctx, items)
    return f"published {len(goals)} sub-goals"


@writer.tool(
    cls="AssembleResult",
    description="write result.md once every sub-goal is answered",
    reads=RESULT_READS,
)
def assemble_result(call: Any, ctx: ToolContext) -> str:
    """Write result.md for the trigger's plan once every sub-goal has an answer."""
    bus = _bus(ctx)
    trigger = ctx.trigger()
    plan = trigger.payload.get("plan") if isinstance(trigger.payload, dict) else None
    subgoals = {
        e.payload["index"]: e.payload
        for e in bus.events(types=["subgoal"])
        if e.payload.get("plan") == plan
    }
    answers = {
        e.payload.get("index"): e.payload
        for e in bus.events(types=["subgoal.answered"])
        if e.payload.get("plan") == plan
    }
    if not subgoals:
        raise ToolError(f"no sub-goals found for plan {plan}")
    missing = sorted(set(subgoals) - set(answers))
    if missing:
        return f"waiting: {len(answers)}/{len(subgoals)} sub-goals answered (missing {missing})"
    goal = next(iter(subgoals.values())).get("goal", "")
    lines = [f"# Result of plan #{plan}", "", f"Goal: {goal}", ""]
    for index in sorted(subgoals):
        answer = answers[index]
        text = answer.get("summary") or f"(no answer: {answer.get('outcome')})"
        lines += [f"## {index + 1}. {subgoals[index]['text']}", "", str(text), ""]
    target = _output(ctx) / "result.md"
    _atomic_write(target, "\n".join(lines))
    return f"wrote {target.name} with {len(subgoals)} answers"
