"""Model-runtime benchmarks, each against a baseline measured in the same run.

1. loopbus generation tokens/s vs raw ``mlx_lm`` ``stream_generate`` on the same model and
   prompt (target: ratio >= 0.95);
2. a 10-turn append-only conversation (an agent's event log): prefill tokens and per-turn
   latency with and without the prefix cache (target: >= 5x fewer prefill tokens, flat latency);
3. constrained (JSON schema, llguidance) vs unconstrained decode tokens/s (target: <= 10%
   overhead), plus the mask cost per token measured alone.

Model: the embedded SmolLM2-135M-Instruct when it can be imported, else the tiny test model
(printed first). Runs like loopbus runs models here: in a child process with OpenBLAS preloaded
when one is usable (printed); ``python -m bench blas`` measures the OpenBLAS effect itself. Numbers are noisy on a shared 2-core machine: A/B
comparisons interleave rounds and keep the best round of each side.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROUNDS = 4
DECODE_TOKENS = 40
TURNS = 10
SYSTEM = (
    "You are a careful software agent working in a repository. Every turn you receive the new "
    "events of the run (tool results, file contents, errors) and answer with exactly one JSON "
    "tool call: RunPython to execute code, ReadFile to read a file, or Answer to finish. Keep "
    "answers short and precise; never invent file contents; prefer reading before guessing. "
    "The repository is a Python project with a README, a pyproject.toml, a src/ package and "
    "tests/. The user wants to know how many test functions exist and whether they pass."
)
EVENTS = [
    "tool_result: ReadFile README.md -> 'A tiny project. Run the tests with pytest.'",
    "tool_result: RunPython ls -> src/ tests/ README.md pyproject.toml",
    "tool_result: ReadFile tests/test_a.py -> def test_one(): assert 1 + 1 == 2",
    "tool_result: ReadFile tests/test_b.py -> def test_two(): assert 'a'.upper() == 'A'",
    "tool_result: RunPython grep -c 'def test_' -> tests/test_a.py:1 tests/test_b.py:1",
    "tool_result: RunPython pytest -q -> 2 passed in 0.01s",
    "error: ReadFile tests/test_c.py -> file not found",
    "tool_result: RunPython find tests -name '*.py' | wc -l -> 2",
    "tool_result: ReadFile pyproject.toml -> [project] name = 'tiny' version = '0.1'",
    "tool_result: RunPython python -V -> Python 3.11.7",
]
UNION = {
    "anyOf": [
        {
            "type": "object",
            "properties": {"type": {"const": "Answer"}, "text": {"type": "string"}},
            "required": ["type", "text"],
        },
        {
            "type": "object",
            "properties": {"type": {"const": "RunPython"}, "code": {"type": "string"}},
            "required": ["type", "code"],
        },
        {
            "type": "object",
            "properties": {"type": {"const": "ReadFile"}, "path": {"type": "string"}},
            "required": ["type", "path"],
        },
    ]
}


def _model() -> tuple[Path, str]:
    try:
        from loopbus.models.embedded import ensure_default_model

        return Path(ensure_default_model()), "embedded SmolLM2-135M-Instruct (float32)"
    except Exception as exc:  # the fallback keeps the benchmark runnable anywhere
        from loopbus.models.testing import build_tiny_model

        path = build_tiny_model(Path(tempfile.mkdtemp()) / "tiny")
        return path, f"tiny random llama (SmolLM2 unavailable: {exc})"


def _timed(items: Any) -> tuple[int, float, float]:
    """Consume an iterator: (items, seconds to the first, seconds from the first to the end)."""
    t0 = time.perf_counter()
    t_first = t0
    n = 0
    for _ in items:
        n += 1
        if n == 1:
            t_first = time.perf_counter()
    return n, t_first - t0, time.perf_counter() - t_first


def bench_raw_vs_loopbus(rt: Any) -> None:
    """(1) Same model, prompt and greedy tokens, same stopwatch: raw mlx_lm vs rt.generate."""
    from mlx_lm.generate import stream_generate

    messages = [{"role": "user", "content": "Write a long story about a cat who learns to code."}]
    prompt = rt.prompt_ids(messages)
    raw_tps: list[float] = []
    ours_tps: list[float] = []
    raw_cpu: list[float] = []
    ours_cpu: list[float] = []
    for _ in range(ROUNDS):
        # Same stopwatch for both: decode tok/s = (tokens - 1) / time after the first token.
        c0 = time.process_time()
        n, _, dt = _timed(stream_generate(rt.model, rt.tokenizer, prompt, max_tokens=DECODE_TOKENS))
        raw_cpu.append(time.process_time() - c0)
        raw_tps.append((n - 1) / dt)
        c0 = time.process_time()
        gen = rt.generate(messages, max_tokens=DECODE_TOKENS)
        ours_cpu.append(time.process_time() - c0)
        ours_tps.append(gen.decode_tps)
        assert gen.completion_tokens == n == DECODE_TOKENS
    raw, ours = max(raw_tps), max(ours_tps)
    print(
        f"[1] decode tok/s over {DECODE_TOKENS} tokens, best of {ROUNDS}: raw mlx_lm "
        f"{raw:.2f}, loopbus {ours:.2f} -> ratio {ours / raw:.3f} (target >= 0.95)"
    )
    print(
        f"    all rounds: raw {[round(x, 2) for x in raw_tps]}, "
        f"loopbus {[round(x, 2) for x in ours_tps]}"
    )
    print(
        f"    CPU seconds per call (prefill + {DECODE_TOKENS} tokens), least of {ROUNDS}: raw "
        f"{min(raw_cpu):.2f}, loopbus {min(ours_cpu):.2f} -> speed ratio "
        f"{min(raw_cpu) / min(ours_cpu):.3f} (less sensitive to other load than wall time)"
    )


def _conversation(rt: Any, use_cache: bool) -> tuple[list[int], list[float], list[int]]:
    cache = rt.new_cache() if use_cache else None
    messages: list[dict[str, str]] = [{"role": "system", "content": SYSTEM}]
    prefill: list[int] = []
    latency: list[float] = []
    prompts: list[int] = []
    replies: list[str] = []
    for turn in range(TURNS):
        messages.append({"role": "user", "content": EVENTS[turn]})
        t0 = time.perf_counter()
        gen = rt.generate(messages, max_tokens=12, cache=cache if use_cache else rt.new_cache())
        latency.append(time.perf_counter() - t0)
        prefill.append(gen.prompt_tokens - gen.cached_tokens)
        prompts.append(gen.prompt_tokens)
        replies.append(gen.text)
        messages.append({"role": "assistant", "content": gen.text})
    return prefill, latency, prompts


def bench_prefix_cache(rt: Any) -> None:
    """(2) 10 append-only turns with one cache handle vs a fresh cache every turn."""
    pre_c, lat_c, prompts = _conversation(rt, use_cache=True)
    pre_u, lat_u, _ = _conversation(rt, use_cache=False)
    print(f"[2] {TURNS}-turn append-only log (prompt grows {prompts[0]} -> {prompts[-1]} tokens):")
    print(
        f"    prefill tokens total: cached {sum(pre_c)}, uncached {sum(pre_u)} -> "
        f"{sum(pre_u) / max(1, sum(pre_c)):.1f}x fewer (target >= 5x)"
    )
    print(f"    per-turn prefill (cached): {pre_c}")
    print(f"    per-turn latency s, cached:   {[round(x, 2) for x in lat_c]}")
    print(f"    per-turn latency s, uncached: {[round(x, 2) for x in lat_u]}")
    half = TURNS // 2
    print(
        f"    cached latency mean turns 2-{half}: {statistics.mean(lat_c[1:half]):.2f}s, "
        f"turns {half + 1}-{TURNS}: {statistics.mean(lat_c[half:]):.2f}s (flat = similar); "
        f"uncached: {statistics.mean(lat_u[1:half]):.2f}s -> "
        f"{statistics.mean(lat_u[half:]):.2f}s"
    )


def bench_constrained(rt: Any) -> None:
    """(3) Decode tok/s with a JSON schema vs without, and the mask cost per token alone."""
    import mlx.core as mx

    story = [{"role": "user", "content": "Write a long story about a cat who learns to code."}]
    long_json = {
        "type": "object",
        "properties": {"story": {"type": "string", "minLength": 2000}},
        "required": ["story"],
    }
    free: list[float] = []
    constrained: list[float] = []
    free_cpu: list[float] = []
    cons_cpu: list[float] = []
    for _ in range(ROUNDS):
        c0 = time.process_time()
        free.append(rt.generate(story, max_tokens=DECODE_TOKENS).decode_tps)
        free_cpu.append(time.process_time() - c0)
        c0 = time.process_time()
        gen = rt.generate(story, schema=long_json, max_tokens=DECODE_TOKENS)
        cons_cpu.append(time.process_time() - c0)
        constrained.append(gen.decode_tps)
        assert gen.completion_tokens == DECODE_TOKENS, gen
    f, c = max(free), max(constrained)
    print(
        f"[3] decode tok/s over {DECODE_TOKENS} tokens, best of {ROUNDS}: unconstrained "
        f"{f:.2f}, constrained {c:.2f} -> overhead {100 * (1 - c / f):.1f}% (target <= 10%)"
    )
    print(
        f"    all rounds: free {[round(x, 2) for x in free]}, "
        f"constrained {[round(x, 2) for x in constrained]}"
    )
    print(
        f"    CPU seconds per call, least of {ROUNDS}: unconstrained {min(free_cpu):.2f}, "
        f"constrained {min(cons_cpu):.2f} -> overhead "
        f"{100 * (min(cons_cpu) / min(free_cpu) - 1):.1f}%"
    )

    # The mask alone: replay a constrained generation's tokens through a fresh processor.
    gen = rt.generate(
        [{"role": "user", "content": "Count the lines of README.md."}], schema=UNION, max_tokens=64
    )
    proc = rt.constrainer.processor(UNION, rt.vocab_size)
    logits = mx.zeros((1, rt.vocab_size))
    history = mx.array(rt.prompt_ids(story))
    t0 = time.perf_counter()
    steps = 0
    for tok in [None, *gen.token_ids[:-1]]:
        if tok is not None:
            history = mx.concatenate([history, mx.array([tok])])
        mx.eval(proc(history, logits))
        steps += 1
    per_token_ms = 1000 * (time.perf_counter() - t0) / steps
    print(
        f"    mask cost alone (union schema, {steps} tokens of {gen.text[:60]!r}): "
        f"{per_token_ms:.3f} ms/token = {100 * per_token_ms / 1000 * f:.1f}% of an "
        f"unconstrained token at {f:.1f} tok/s"
    )
    t0 = time.perf_counter()
    rt.constrainer.compile({"type": "object", "properties": {"x": {"type": "integer"}}})
    print(
        f"    compile a new schema: {1000 * (time.perf_counter() - t0):.1f} ms (tokenizer "
        "adapter built once per model and reused)"
    )


def run() -> None:
    """The benchmarks, in this process."""
    from loopbus.models.blas import openblas_loaded
    from loopbus.models.mlx_backend import MLXRuntime

    path, label = _model()
    t0 = time.perf_counter()
    rt = MLXRuntime.load(path, spec=str(path))
    print(
        f"model: {label}; loaded in {time.perf_counter() - t0:.1f}s; "
        f"OpenBLAS loaded: {openblas_loaded()}",
        flush=True,
    )
    rt.generate([{"role": "user", "content": "warm up"}], max_tokens=4)
    rt.generate([{"role": "user", "content": "warm up"}], schema=UNION, max_tokens=4)
    bench_raw_vs_loopbus(rt)
    bench_prefix_cache(rt)
    bench_constrained(rt)


def main() -> None:
    """Run the benchmarks the way loopbus runs models on this host: in a child process with
    OpenBLAS preloaded when one is usable (``loopbus.models.blas.blas_env``), else in this process."""
    from loopbus.models.blas import blas_env, openblas_loaded

    env = blas_env()
    if openblas_loaded() or "LD_PRELOAD" not in env:
        run()
        return
    code = "from bench.bench_models import run; run()"
    subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )


if __name__ == "__main__":
    main()
