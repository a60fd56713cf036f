"""Errors raised by the model runtime.

Lightweight on purpose (no mlx import): the CLI maps :class:`ModelError` to ``Error: <msg>``.
Every message says what is wrong *and* how to fix it.
"""

from __future__ import annotations

#: How to get a model, appended to "not found" messages.
HOW_TO_GET_A_MODEL = (
    "To get a model: on a Mac, `huggingface-cli download mlx-community/SmolLM2-135M-Instruct` "
    "then `loopbus run ... --model mlx-community/SmolLM2-135M-Instruct`; on any machine, "
    "`loopbus models import FILE.gguf` converts a llama/qwen2/gemma3 GGUF into a model directory "
    "(and omitting --model uses the embedded SmolLM2)."
)


class ModelError(Exception):
    """Base class of every error the model runtime raises."""


class ModelNotFound(ModelError):
    """The model spec names a directory, Hugging Face id or file that is not available locally."""


class UnsupportedGGUF(ModelError):
    """A GGUF file is unreadable or uses an architecture/tensor type the importer does not handle."""


class SchemaRejected(ModelError):
    """The constrained-decoding grammar compiler rejected a JSON schema."""


class BackendUnreachable(ModelError):
    """An OpenAI-compatible server could not be reached or answered with an error."""


class InvalidModelSpec(ModelError):
    """A model spec string does not follow the documented grammar."""


class AdapterNotFound(ModelNotFound):
    """A ``+adapter:DIR`` spec names no LoRA adapter directory (or one without its files)."""


class AdapterMismatch(ModelError):
    """A LoRA adapter was trained on another base model than the one the spec loads."""
