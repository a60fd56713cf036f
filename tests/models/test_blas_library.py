"""Library users get the fast BLAS too: plain ``python`` (no LD_PRELOAD, no re-exec) that imports
loopbus and loads a model runs MLX on OpenBLAS, as the CLI does; mlx imported first warns."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from loopbus.models.blas import openblas_path

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or openblas_path() is None,
    reason="needs Linux and a usable OpenBLAS",
)


def _plain_python(code: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "LOOPBUS_BLAS_REEXEC")}
    env.pop("PYTHONPATH", None)  # the installed package, not the checkout's folders
    env["PYTHONWARNINGS"] = "default"
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tempfile.gettempdir(),  # not the repository root, whose folders shadow nothing then
    )


def test_library_import_and_load_runtime_get_openblas(tiny_model_path: Path) -> None:
    proc = _plain_python(
        "import os, loopbus.agents.run.loop\n"
        "from loopbus.models import load_runtime\n"
        "assert 'LD_PRELOAD' not in os.environ\n"
        f"runtime = load_runtime({str(tiny_model_path)!r})\n"
        "import mlx.core as mx\n"
        "a = mx.ones((64, 64)); mx.eval(a @ a)\n"
        "maps = open('/proc/self/maps').read()\n"
        "print('openblas' if 'libopenblas' in maps else 'reference BLAS only')\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "openblas", proc.stdout + proc.stderr


def test_mlx_imported_first_warns_loudly(tiny_model_path: Path) -> None:
    proc = _plain_python(
        "import mlx.core\n"
        "from loopbus.models import load_runtime\n"
        f"load_runtime({str(tiny_model_path)!r})\n"
        "print('libopenblas' in open('/proc/self/maps').read())\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
    assert "mlx was imported before loopbus could load OpenBLAS" in proc.stderr
