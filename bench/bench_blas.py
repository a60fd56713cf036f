"""The OpenBLAS effect on Linux CPU: float32 matmul GFLOP/s and SmolLM2 decode tok/s.

Every figure is measured in a child process, because the BLAS is chosen when a process starts:
the baseline child runs with MLX's bundled reference BLAS (``LOOPBUS_OPENBLAS=0``, no
``LD_PRELOAD``), the other with :func:`loopbus.models.blas.blas_env` (OpenBLAS preloaded). A third
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
DECODE_TOKENS = 48


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
    model.update(
        tree_unflatten([(k, v.astype(target)) for k, v in tree_flatten(model.parameters())])
    )
    mx.eval(model.parameters())
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=False
    )
    for _ in stream_generate(model, tokenizer, prompt, max_tokens=4):  # warm-up
        pass
    responses = list(stream_generate(model, tokenizer, prompt, max_tokens=DECODE_TOKENS))
    last = responses[-1]
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
    from loopbus.models.blas import OPENBLAS_ENV, blas_env, openblas_path
    from loopbus.models.embedded import ensure_default_model

    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "LD_LIBRARY_PATH")}
    base.pop("OPENBLAS_NUM_THREADS", None)
    lib = openblas_path()
    print(f"OpenBLAS: {lib or 'none found (install cmeel-openblas or libopenblas0-pthread)'}")
    print(f"cores: {os.cpu_count()}, load average at start: {os.getloadavg()[0]:.2f}")
    if lib is None:
        return
    cores = str(os.cpu_count() or 1)
    envs = {
        "reference BLAS": {**base, OPENBLAS_ENV: "0"},
        "OpenBLAS 1 thread": blas_env(base),  # what loopbus gives its processes
        f"OpenBLAS {cores} threads": blas_env({**base, "OPENBLAS_NUM_THREADS": cores}),
    }
    matmul = {label: _run_child(["matmul"], env) for label, env in envs.items()}
    print("1024^3 matmul GFLOP/s            float32   bfloat16")
    for label, r in matmul.items():
        print(f"  {label:<28} {r['float32']:>9.1f} {r['bfloat16']:>10.1f}")

    model_dir = str(ensure_default_model())
    runs = {
        f"float32, {label}": _run_child(["generate", model_dir, "float32"], env)
        for label, env in envs.items()
    }
    runs["bfloat16, OpenBLAS 1 thread"] = _run_child(
        ["generate", model_dir, "bfloat16"], envs["OpenBLAS 1 thread"]
    )
    print(f"SmolLM2-135M greedy, {DECODE_TOKENS} tokens      prefill tok/s   decode tok/s")
    for label, r in runs.items():
        print(f"  {label:<36} {r['prompt_tps']:>10.1f}   {r['decode_tps']:>10.1f}")
    ref, best = runs["float32, reference BLAS"], runs["float32, OpenBLAS 1 thread"]
    mm_ratio = matmul["OpenBLAS 1 thread"]["float32"] / matmul["reference BLAS"]["float32"]
    print(
        f"OpenBLAS (1 thread) / reference, float32: matmul {mm_ratio:.1f}x, "
        f"prefill {best['prompt_tps'] / ref['prompt_tps']:.1f}x, "
        f"decode {best['decode_tps'] / ref['decode_tps']:.1f}x "
        f"(load average now {os.getloadavg()[0]:.2f})"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["matmul"]:
        print(json.dumps(_matmul()))
    elif sys.argv[1:2] == ["generate"]:
        print(json.dumps(_generate(sys.argv[2], sys.argv[3])))
    else:
        main()
