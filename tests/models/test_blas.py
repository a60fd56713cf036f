"""OpenBLAS preloading for the processes loopbus starts (Linux), checked in real child processes."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from loopbus.models import blas

linux_x86 = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and platform.machine() == "x86_64"),
    reason="cmeel-openblas is a dependency on Linux x86-64 only",
)

CHILD = """
import json, pathlib
import mlx.core as mx, numpy as np
a = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
got = np.array(mx.array(a) @ mx.array(a))
maps = pathlib.Path("/proc/self/maps").read_text()
print(json.dumps({"openblas": "libopenblas" in maps,
                  "max_err": float(np.abs(got - a @ a).max())}))
"""


def _child(env: dict[str, str]) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "cannot be preloaded" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LOOPBUS_CACHE", str(tmp_path))
    monkeypatch.delenv(blas.OPENBLAS_ENV, raising=False)
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    return tmp_path


@linux_x86
def test_blas_env_preloads_a_working_openblas(cache: Path) -> None:
    lib = blas.openblas_path()
    assert lib is not None and Path(lib).is_file()
    env = blas.blas_env({"PATH": "/usr/bin:/bin", "LD_PRELOAD": "", "HOME": str(cache)})
    assert env["LD_PRELOAD"].split(":")[0] == lib
    assert env["OPENBLAS_NUM_THREADS"] == "1"
    result = _child({**env, "LOOPBUS_CACHE": str(cache)})
    assert result["openblas"] is True
    assert result["max_err"] < 1e-3  # MLX's matmuls are right with the swapped BLAS
    # The probe verdict is cached, keyed by the library path.
    verdicts = json.loads((cache / "blas.json").read_text())
    assert any(key.startswith(lib) and ok for key, ok in verdicts.items())


@linux_x86
def test_without_preload_the_reference_blas_is_used(cache: Path) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "LD_LIBRARY_PATH")}
    assert _child(env)["openblas"] is False


def test_disabled_or_missing_library(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = {"PATH": "/usr/bin", "LD_PRELOAD": "/x/other.so"}
    monkeypatch.setenv(blas.OPENBLAS_ENV, "off")
    assert blas.openblas_path() is None
    assert blas.blas_env(base) == base
    monkeypatch.setenv(blas.OPENBLAS_ENV, str(cache / "no-such-libopenblas.so.0"))
    assert blas.openblas_path() is None


def test_explicit_thread_count_is_respected(cache: Path) -> None:
    if blas.openblas_path() is None:
        pytest.skip("no OpenBLAS on this platform")
    assert blas.blas_env({"LOOPBUS_BLAS_THREADS": "4"})["OPENBLAS_NUM_THREADS"] == "4"
    assert blas.blas_env({"OPENBLAS_NUM_THREADS": "3"})["OPENBLAS_NUM_THREADS"] == "3"


def test_dtype_policy() -> None:
    if blas.is_apple_silicon():
        assert blas.default_weight_dtype() == "bfloat16" and blas.compute_dtype() is None
    else:
        assert blas.default_weight_dtype() == "float32" and blas.compute_dtype() == "float32"


@pytest.mark.parametrize(
    "body",
    [
        "__builtin_trap();",  # ud2: SIGILL, like an AVX-512 build on an AVX2 CPU
        "for (int i = 0; i < m * n; i++) c[i] = 0.0f;",  # loads and returns, but multiplies wrong
    ],
    ids=["sigill", "wrong-product"],
)
def test_a_library_whose_sgemm_fails_is_not_preloaded(
    cache: Path, monkeypatch: pytest.MonkeyPatch, body: str
) -> None:
    import shutil

    if not sys.platform.startswith("linux") or shutil.which("gcc") is None:
        pytest.skip("needs Linux and gcc to build a stand-in BLAS")
    source = cache / "fakeblas.c"
    source.write_text(
        "void cblas_sgemm(int order, int ta, int tb, int m, int n, int k, float alpha,\n"
        "                 const float *a, int lda, const float *b, int ldb, float beta,\n"
        f"                 float *c, int ldc) {{ {body} }}\n"
    )
    lib = cache / "libopenblas.so.0"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(source)], check=True)
    monkeypatch.setenv(blas.OPENBLAS_ENV, str(lib))
    base = {"PATH": "/usr/bin", "LD_PRELOAD": ""}
    assert blas.openblas_path() is None  # refused: processes run on the reference BLAS
    assert blas.blas_env(base) == base
    verdicts = json.loads((cache / "blas.json").read_text())
    assert [ok for key, ok in verdicts.items() if key.startswith(str(lib))] == [False]
