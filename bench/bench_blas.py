"""The OpenBLAS effect on Linux CPU: float32 matmul GFLOP/s and SmolLM2 decode tok/s.

Every figure is measured in a child process, because the BLAS is chosen when a process starts:
the baseline child runs with MLX's bundled reference BLAS (``LOOPBUS_OPENBLAS=0``, no
``LD_PRELOAD``), the other with :func:`models.blas.blas_env` (OpenBLAS preloaded). A third
SmolLM2 run casts the weights to bfloat16 to show why loopbus computes in float32 on CPU.

    python -m bench blas
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

PROMPT = "Write a short paragraph about the history of Paris."
DECODE_TOKENS = 64


def _matmul(size: int = 1024, repeats: int = 5) -> dict[str, float]:
    import mlx.core as mx

    out: dict[str, float] = {}
    for name, dtype in (("float32", mx.float32), ("bfloat16", mx.bfloat16)):
        a = mx.random.normal((size, size)).astype(dtype)
        b = mx.random.normal((size, size)).astype(dtype)
        mx.eval(a @ b)  # warm-up
        n = repeats if dtype == mx.float32 else 1
        start = time.perf_counter()
        for _ in range(n):
            mx.eval(a @ b)
        out[name] = 2 * size**3 * n / (time.perf_counter() - start) / 1e9
    return out


def _generate(model_dir: str, dtype: str) -> dict[str, float]:
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten
    from mlx_lm import load, stream_generate

    model, tokenizer = load(model_dir)
    target = getattr(mx, dtype)
    model.update(tree_unflatten([(k, v.astype(target)) for k, v in tree_flatten(model.parameters())]))
    mx.eval(model.parameters())
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=False
    )
    for _ in stream_generate(model, tokenizer, prompt, max_tokens=4):  # warm-up
        pass
    last = None
    for last in stream_generate(model, tokenizer, prompt, max_tokens=DECODE_TOKENS):
        pass
    assert last is not None
    return {
        "prompt_tps": last.prompt_tps,
        "decode_tps": last.generation_tps,
        "tokens": last.generation_tokens,
    }


def _run_child(args: list[str], env: dict[str, str]) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.bench_blas", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    from models.blas import OPENBLAS_ENV, blas_env, openblas_path
    from models.embedded import ensure_default_model

    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "LD_LIBRARY_PATH")}
    base[OPENBLAS_ENV] = "0"
    lib = openblas_path()
    print(f"OpenBLAS: {lib or 'none found (install cmeel-openblas or libopenblas0-pthread)'}")
    fast = blas_env({k: v for k, v in base.items() if k != OPENBLAS_ENV})
    if lib is None:
        return

    ref_mm = _run_child(["matmul"], base)
    blas_mm = _run_child(["matmul"], fast)
    print("1024^3 matmul           reference BLAS     OpenBLAS      ratio")
    for dtype in ("float32", "bfloat16"):
        ratio = blas_mm[dtype] / ref_mm[dtype]
        print(f"  {dtype:<9} GFLOP/s   {ref_mm[dtype]:>10.1f}   {blas_mm[dtype]:>10.1f}   {ratio:>7.1f}x")

    model_dir = str(ensure_default_model())
    runs = {
        "float32, reference BLAS": _run_child(["generate", model_dir, "float32"], base),
        "float32, OpenBLAS": _run_child(["generate", model_dir, "float32"], fast),
        "bfloat16, OpenBLAS": _run_child(["generate", model_dir, "bfloat16"], fast),
    }
    print(f"SmolLM2-135M greedy, {DECODE_TOKENS} tokens   prefill tok/s   decode tok/s")
    for label, r in runs.items():
        print(f"  {label:<28} {r['prompt_tps']:>10.1f}   {r['decode_tps']:>10.1f}")
    ref, best = runs["float32, reference BLAS"], runs["float32, OpenBLAS"]
    print(
        f"OpenBLAS / reference (float32): matmul {blas_mm['float32'] / ref_mm['float32']:.1f}x, "
        f"prefill {best['prompt_tps'] / ref['prompt_tps']:.1f}x, "
        f"decode {best['decode_tps'] / ref['decode_tps']:.1f}x"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["matmul"]:
        print(json.dumps(_matmul()))
    elif sys.argv[1:2] == ["generate"]:
        print(json.dumps(_generate(sys.argv[2], sys.argv[3])))
    else:
        main()
