"""Model spec grammar and the errors that say how to get a model."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loopbus.models import load_runtime, parse_spec
from loopbus.models.errors import InvalidModelSpec, ModelError, ModelNotFound
from loopbus.models.runtime import ModelSpec, resolve_mlx_target


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, ModelSpec("default")),
        ("", ModelSpec("default")),
        ("default", ModelSpec("default")),
        ("./m", ModelSpec("mlx", "./m")),
        (
            "mlx-community/SmolLM2-135M-Instruct",
            ModelSpec("mlx", "mlx-community/SmolLM2-135M-Instruct"),
        ),
        ("mlx:org/name", ModelSpec("mlx", "org/name")),
        (
            "openai:http://127.0.0.1:8080/v1#qwen",
            ModelSpec("openai", "http://127.0.0.1:8080/v1", "qwen"),
        ),
        ("openai:https://h.example/v1/", ModelSpec("openai", "https://h.example/v1", "default")),
    ],
)
def test_parse_spec(spec: str | None, expected: ModelSpec) -> None:
    assert parse_spec(spec) == expected


@pytest.mark.parametrize("spec", ["openai:localhost:8080", "openai:", "mlx:"])
def test_invalid_specs(spec: str) -> None:
    with pytest.raises(InvalidModelSpec):
        parse_spec(spec)


def test_missing_directory_says_how_to_get_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound) as err:
        load_runtime(str(tmp_path / "nope"))
    assert "loopbus models import" in str(err.value)
    assert "mlx-community/SmolLM2-135M-Instruct" in str(err.value)


def test_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="config.json"):
        load_runtime(str(tmp_path))


def test_gguf_file_points_to_import(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(ModelNotFound, match="loopbus models import"):
        resolve_mlx_target(str(gguf))


def test_unknown_hf_id_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelNotFound) as err:
        load_runtime("mlx-community/definitely-not-cached-model")
    assert "huggingface-cli download mlx-community/definitely-not-cached-model" in str(err.value)
    assert isinstance(err.value, ModelError)
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # set before huggingface_hub could download


def test_hf_id_in_the_local_cache_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model_path: Path
) -> None:
    # The standard hub cache layout: refs/main names the snapshot holding the files.
    repo = tmp_path / "hub" / "models--acme--tiny"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_model_path, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_mlx_target("acme/tiny") == snapshot
    rt = load_runtime("mlx:acme/tiny")
    assert rt.spec == "mlx:acme/tiny"
    assert rt.generate([{"role": "user", "content": "hi"}], max_tokens=3).completion_tokens == 3


def test_import_models_is_light() -> None:
    code = (
        "import sys, loopbus.models, loopbus.models.errors, loopbus.models.runtime;"
        "heavy = [m for m in ('mlx', 'mlx_lm', 'transformers', 'llguidance') if m in sys.modules];"
        "print(heavy); raise SystemExit(1 if heavy else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
