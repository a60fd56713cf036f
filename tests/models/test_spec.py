"""Model spec grammar and the errors that say how to get a model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from models import load_runtime, parse_spec
from models.errors import InvalidModelSpec, ModelError, ModelNotFound
from models.runtime import ModelSpec, resolve_mlx_target


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, ModelSpec("default")),
        ("", ModelSpec("default")),
        ("default", ModelSpec("default")),
        ("./m", ModelSpec("mlx", "./m")),
        ("mlx-community/SmolLM2-135M-Instruct", ModelSpec("mlx", "mlx-community/SmolLM2-135M-Instruct")),
        ("mlx:org/name", ModelSpec("mlx", "org/name")),
        ("openai:http://127.0.0.1:8080/v1#qwen", ModelSpec("openai", "http://127.0.0.1:8080/v1", "qwen")),
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
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(ModelNotFound) as err:
        load_runtime("mlx-community/definitely-not-cached-model")
    assert "huggingface-cli download mlx-community/definitely-not-cached-model" in str(err.value)
    assert isinstance(err.value, ModelError)


def test_import_models_is_light() -> None:
    code = (
        "import sys, models, models.errors, models.runtime;"
        "heavy = [m for m in ('mlx', 'mlx_lm', 'transformers', 'llguidance') if m in sys.modules];"
        "print(heavy); raise SystemExit(1 if heavy else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
