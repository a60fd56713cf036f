"""The ``watcher``'s task suite: find a value in a generated workspace and publish it as an event.

The workspaces are the assistant suite's (:mod:`loopbus.agents.distill.tasksuite`'s builders:
the same files, distractors and folders), the question asks to publish the value the assistant
would have answered as a typed event, e.g. "Read secret.txt and publish the launch code as a
`finding` event." The gold trajectory is the assistant's tool steps (``list_dir`` where the
question needs exploring, ``read_file`` once or twice), then ``publish`` (the event type the
question names, one payload field holding the value), then ``done`` with a one-line summary:
every step is one the watcher's decoding policy (``WATCH``: existing paths only, no call
twice, ``done`` only after a ``read_file``) allows. A run is correct when it ended ``done`` and
published an event of that type with the value in its payload
(:meth:`~loopbus.agents.distill.tasksuite.Task.check_published`, read back from the bus).

Kinds (``watch-`` + the assistant kind whose workspace it uses): ``watch-named``,
``watch-hidden``, ``watch-folder``, ``watch-pointer``, ``watch-implied``. The assistant's
``count`` kind has no watcher twin: its answer comes from a listing alone, and the policy lets
the watcher finish only after reading a file. Task ids are ``s{seed}-{index:03d}-{kind}``; the
random streams are the watcher's own (``watcher:{seed}:{index}``), so the assistant and the
watcher suites of one seed are different tasks.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from loopbus.agents.distill.tasksuite import _MAKERS, Task, _Builder, _done, fresh_workspace

#: The watcher's task kinds (each over the workspace of the assistant kind after ``watch-``).
WATCH_KINDS = ("watch-named", "watch-hidden", "watch-folder", "watch-pointer", "watch-implied")
_EVENT_TYPES = ("finding", "fact.found", "value.found", "report")

# Question templates per kind: {where} is the file or folder the assistant's question names,
# {subject} what to publish, {event} the event type.
_QUESTIONS: dict[str, tuple[str, ...]] = {
    "watch-named": (
        "Read {where} and publish the {subject} as a `{event}` event.",
        "Publish the {subject} from {where} as a `{event}` event.",
    ),
    "watch-hidden": (
        "Find {where} and publish the {subject} it holds as a `{event}` event.",
        "Somewhere in this folder is {where}. Publish its {subject} as a `{event}` event.",
    ),
    "watch-folder": (
        "One of the files in the {where} folder has the {subject}. "
        "Publish it as a `{event}` event.",
        "Look in the {where} folder for the {subject} and publish it as a `{event}` event.",
    ),
    "watch-pointer": (
        "Read index.txt to find the file with the {subject}, "
        "then publish the {subject} as a `{event}` event.",
        "index.txt says which file has the {subject}. Publish the {subject} as a `{event}` event.",
    ),
    "watch-implied": (
        "Publish the {subject} as a `{event}` event.",
        "Find the {subject} and publish it as a `{event}` event.",
    ),
}


def _where(kind: str, steps: list[dict[str, Any]]) -> str:
    """The file or folder the question names, from the assistant's gold tool steps."""
    if kind == "watch-named":
        return str(steps[0]["path"])
    if kind == "watch-hidden":
        return str(steps[-1]["path"]).rsplit("/", 1)[-1]
    if kind == "watch-folder":
        return str(steps[0]["path"])
    return "index.txt"


def _field(subject: str) -> str:
    """The payload field that holds the value: ``launch_code``, ``version``."""
    return subject.split(" of ")[0].replace(" ", "_")


def generate_watch_suite(root: Path, *, seed: int, n: int) -> list[Task]:
    """``n`` watcher tasks with workspaces under ``root`` (``root/<id>/``), all from ``seed``.

    Kinds cycle through :data:`WATCH_KINDS` in a seed-shuffled order, so any ``n >= 5`` covers
    each. Calling it again with the same arguments rewrites identical workspaces.
    """
    order = list(WATCH_KINDS)
    random.Random(f"watcher:{seed}").shuffle(order)
    tasks: list[Task] = []
    for index in range(n):
        kind = order[index % len(order)]
        task_id = f"s{seed}-{index:03d}-{kind}"
        workspace = fresh_workspace(Path(root) / task_id)
        rng = random.Random(f"watcher:{seed}:{index}")
        builder = _Builder(workspace, rng)
        _, expected, oracle = _MAKERS[kind.removeprefix("watch-")](builder)
        steps, value = oracle[:-1], expected[0]
        event = rng.choice(_EVENT_TYPES)
        template = rng.choice(_QUESTIONS[kind])
        question = template.format(where=_where(kind, steps), subject=builder.subject, event=event)
        publish = {
            "action": "publish",
            "event_type": event,
            "payload": {_field(builder.subject): value},
        }
        summary = f"Published the {builder.subject} ({value}) as a {event} event."
        tasks.append(
            Task(
                task_id,
                workspace,
                question,
                [value],
                [*steps, publish, _done(summary)],
                kind,
                sorted(builder.files),
                agent="watcher",
                event_type=event,
            )
        )
    return tasks
