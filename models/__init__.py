"""loopbus local LLM runtime: one :class:`Runtime` interface over MLX (in process) and
OpenAI-compatible servers, with a prefix (KV) cache across turns and JSON-schema constrained
decoding. ``import loopbus.models`` is light: mlx is imported only when a model is loaded.

    from loopbus.models import load_runtime
    rt = load_runtime()                      # embedded SmolLM2 (see loopbus.models.runtime for specs)
    gen = rt.generate([{"role": "user", "content": "hi"}], max_tokens=32)
"""

from loopbus.models.runtime import Generation, ModelSpec, Runtime, load_runtime, parse_spec

__all__ = ["Generation", "ModelSpec", "Runtime", "load_runtime", "parse_spec"]
