"""Static checks of the one `loopbus` import namespace (pyproject's package-dir over the folders).

agents/, bus/, models/ and baml_client/ install as loopbus.agents, loopbus.bus, loopbus.models and
loopbus.baml_client. These tests read files only (no imports of the project), so they are fast:

* every folder with an ``__init__.py`` is in pyproject's ``packages`` list (a missing one is left
  out of the wheel; an editable install hides that) and nothing else is;
* nothing imports the old top-level names (``from models import x``), not even inside a code
  string run by a subprocess: with the repository root on ``sys.path`` (a repo-root cwd, pytest's
  rootdir) that would silently import the folder instead of the installed package;
* no module of agents/, bus/, models/ is over 600 lines;
* no import cycles among module-level imports.
"""

from __future__ import annotations

import ast
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: folder -> the package it installs as
FOLDERS = {
    "agents": "loopbus.agents",
    "bus": "loopbus.bus",
    "models": "loopbus.models",
    "baml_client": "loopbus.baml_client",
}
OLD = tuple(FOLDERS)
MAX_LINES = 600
#: Folders scanned for Python sources (tests and benchmarks included).
SOURCE_DIRS = ("agents", "bus", "models", "baml_client", "tests", "bench")


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _package_folders() -> set[str]:
    """Dotted loopbus.* names of every folder holding an ``__init__.py`` under the four roots."""
    found = set()
    for folder, package in FOLDERS.items():
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            if "__pycache__" in rel.parts:
                continue
            found.add(".".join([package, *rel.parts]))
    return found


def _python_files() -> Iterator[Path]:
    for top in SOURCE_DIRS:
        for path in sorted((REPO / top).rglob("*.py")):
            if "__pycache__" not in path.parts:
                yield path
    yield from sorted(REPO.glob("*.py"))


def _module_name(path: Path) -> str | None:
    """The loopbus.* module a file under one of the four folders installs as."""
    rel = path.relative_to(REPO)
    if rel.parts[0] not in FOLDERS:
        return None
    parts = [FOLDERS[rel.parts[0]], *rel.parts[1:]]
    parts[-1] = parts[-1].removesuffix(".py")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


# ---------------------------------------------------------------------------------------------
# (a) the packages list


def test_packages_list_is_every_folder_with_an_init() -> None:
    setuptools = _pyproject()["tool"]["setuptools"]
    listed = setuptools["packages"]
    assert len(listed) == len(set(listed)), "duplicates in [tool.setuptools] packages"
    assert set(listed) == _package_folders(), (
        "pyproject.toml [tool.setuptools] packages differs from the folders with __init__.py: "
        f"missing {sorted(_package_folders() - set(listed))}, "
        f"extra {sorted(set(listed) - _package_folders())}"
    )
    assert setuptools["package-dir"] == {package: folder for folder, package in FOLDERS.items()}


def test_package_data_names_real_packages() -> None:
    data = _pyproject()["tool"]["setuptools"]["package-data"]
    packages = _package_folders()
    for package, patterns in data.items():
        assert package == "*" or package in packages, package
        if package != "*":
            top = {p: f for f, p in FOLDERS.items()}[".".join(package.split(".")[:2])]
            folder = REPO.joinpath(top, *package.split(".")[2:])
            for pattern in patterns:
                assert any(folder.glob(pattern)), f"{package}: {pattern!r} matches no file"


# ---------------------------------------------------------------------------------------------
# (b) no imports of the old top-level names

_NAMES = "|".join(OLD)
_IMPORT_IN_TEXT = re.compile(
    # an import statement at the start of a line, after `;` or an opening quote, or `-m NAME`
    rf"""(?:^|[;"'(])[ \t]*(?:from\s+(?:{_NAMES})(?:\.[\w.]+)?\s+import\b"""
    rf"""|import\s+(?:{_NAMES})(?=[\s.,;"')]|$))"""
    rf"""|-m\s+(?:{_NAMES})(?=[\s."')]|$)""",
    re.M,
)
#: a whole string naming a module of the old folders: "agents.cli", "agents.builtin:assistant"
_REFERENCE = rf"((?:{_NAMES})(?:\.\w+)+)(?::\w+)?"
_QUOTED_REFERENCE = re.compile(rf"""["']{_REFERENCE}["']""")


def _is_old_module(dotted: str) -> bool:
    """Whether ``dotted`` (``agents.run.loop``) names a module or package of the old folders."""
    path = REPO.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _old_references(text: str, *, whole_string: bool = False) -> list[str]:
    """Old-name import statements and ``-m`` runs in ``text``, and quoted module references
    (``"agents.cli"``, ``"agents.builtin:assistant"``); with ``whole_string`` the text itself is
    one string value (a Python constant), checked as a reference as a whole."""
    hits = [m.group(0).strip(" \t;\"'(") for m in _IMPORT_IN_TEXT.finditer(text)]
    if whole_string:
        match = re.fullmatch(_REFERENCE, text.strip())
        hits += [text.strip()] if match and _is_old_module(match.group(1)) else []
    else:
        hits += [m.group(0) for m in _QUOTED_REFERENCE.finditer(text) if _is_old_module(m.group(1))]
    return hits


def _old_imports_in_source(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [
                f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in OLD
            ]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in OLD:
                found.append(f"{where}: from {node.module} import ...")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            # code strings for subprocesses, import_module("..."), "module:attr" references
            hits = _old_references(node.value, whole_string=True)
            found += [f"{where}: {hit!r} in a string" for hit in hits]
    return found


def _readme_code_blocks() -> Iterator[tuple[int, str, str]]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    for match in re.finditer(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M):
        yield text.count("\n", 0, match.start()) + 1, match.group(1), match.group(2)


def test_the_text_scanner_finds_old_imports() -> None:
    """The checks below can fail: each of these is an old-name import or reference."""
    bad = [
        "from models import load_runtime",
        "x = 1; import bus",
        "    import agents.cli",
        'python -c "import models.blas"',
        "python -m agents.cli run x",
        "kind = 'agents.builtin:assistant'",
        "from baml_client.types import Done",
    ]
    for text in bad:
        assert _old_references(text), text
    assert _old_references("agents.cli", whole_string=True)
    assert _old_references(" models.blas:main", whole_string=True)
    good = [
        "from loopbus.models import load_runtime",
        "from loopbus import bus",
        "from my_agents import baml_client",
        "python -m loopbus.agents.cli",
        "tmp_path / 'bus.db'",
        "bus.events(types=['x'])",
        "see agents/run/loop.py",
        "the bus import is lazy",
        "loopbus.agents.builtin:assistant",
        "'agents.nothing'",
    ]
    for text in good:
        assert not _old_references(text), text
    assert not _old_references("bus.db", whole_string=True)
    assert not _old_references("bus.events", whole_string=False)


def test_no_source_imports_the_old_top_level_names() -> None:
    this = Path(__file__).resolve()  # its own examples of what is refused
    found = [h for path in _python_files() if path != this for h in _old_imports_in_source(path)]
    assert not found, "use loopbus.agents / loopbus.bus / ...:\n" + "\n".join(found)


def test_no_readme_block_makefile_or_config_uses_the_old_names() -> None:
    found = []
    for line, lang, body in _readme_code_blocks():
        if lang == "python":
            compile(body, f"README.md:{line}", "exec")  # a python block must at least parse
        found += [f"README.md:{line} ({lang}): {hit!r}" for hit in _old_references(body)]
    others = [REPO / "Makefile", REPO / "pyproject.toml", *sorted(REPO.glob("agents/**/*.toml"))]
    for path in others:
        text = path.read_text(encoding="utf-8")
        found += [f"{path.relative_to(REPO)}: {hit!r}" for hit in _old_references(text)]
    assert not found, "\n".join(found)


# ---------------------------------------------------------------------------------------------
# (c) module size


def test_no_module_over_600_lines() -> None:
    big = {}
    for top in ("agents", "bus", "models"):
        for path in (REPO / top).rglob("*.py"):
            lines = len(path.read_text(encoding="utf-8").splitlines())
            if lines > MAX_LINES:
                big[str(path.relative_to(REPO))] = lines
    assert not big, f"modules over {MAX_LINES} lines (split them by concept): {big}"


# ---------------------------------------------------------------------------------------------
# (d) import cycles


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports executed when the module is imported: not in functions, not under TYPE_CHECKING."""
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                todo += node.body
            todo += node.orelse
        elif isinstance(node, ast.Try | ast.TryStar):
            todo += node.body + node.orelse + node.finalbody
            for handler in node.handlers:
                todo += handler.body
        elif isinstance(node, ast.With | ast.For | ast.While | ast.ClassDef):
            todo += node.body
            todo += getattr(node, "orelse", [])


def import_graph() -> dict[str, set[str]]:
    """loopbus module -> the loopbus modules it imports at module level."""
    modules: dict[str, Path] = {}
    packages: set[str] = set()
    for top in FOLDERS:
        for path in (REPO / top).rglob("*.py"):
            name = _module_name(path)
            if name is not None and "__pycache__" not in path.parts:
                modules[name] = path
                if path.name == "__init__.py":
                    packages.add(name)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges: set[str] = set()
        package = name if name in packages else name.rpartition(".")[0]
        for node in _module_level_imports(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    module = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    module = node.module or ""
                # `from pkg import submodule` imports the submodule; `from m import name` imports m
                targets = [
                    f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module
                    for a in node.names
                ]
            edges.update(t for t in targets if t in modules and t != name)
        graph[name] = edges
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(cycles)


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert import_cycles(graph) == [["a", "b", "c"]]
    tree = ast.parse(
        "import x\nif TYPE_CHECKING:\n    import y\ndef f():\n    import z\n"
        "try:\n    import w\nexcept ImportError:\n    w = None\n"
    )
    assert sorted(a.names[0].name for a in _module_level_imports(tree)) == ["w", "x"]


def test_no_import_cycles_between_loopbus_modules() -> None:
    graph = import_graph()
    assert "loopbus.agents.run.loop" in graph and graph["loopbus.agents.run.loop"]
    cycles = import_cycles(graph)
    assert not cycles, (
        "module-level import cycles (import inside the function that needs it):\n"
        + ("\n".join(" <-> ".join(c) for c in cycles))
    )


def test_bus_and_models_never_import_agents() -> None:
    """The layers: agents/ builds on bus/ and models/, never the other way round (lazy imports
    inside functions included), so the bus and the model runtime stay usable on their own."""
    offenders = []
    for folder in ("bus", "models"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = []
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                if any(n == "loopbus.agents" or n.startswith("loopbus.agents.") for n in names):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, offenders
