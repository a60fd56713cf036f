"""`loopbus report`: a self-contained HTML page, checked as text and in real headless Chromium."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from loopbus.agents.cli import main
from loopbus.agents.observe.report import (
    AGENT_COLOURS,
    BUDGET_COLOUR,
    FILL_COLOUR,
    MODEL_COLOUR,
    OUTCOME_COLOURS,
    build_report,
)

from .conftest import ObservedBus, chromium_run
from .pngread import colour_pixels, read_png


def _external_references(page: str) -> list[str]:
    urls = re.findall(r"""(?:https?:)?//[^\s"'<>)]+""", page)
    return [u for u in urls if u != "http://www.w3.org/2000/svg"]


def test_pages_are_self_contained_and_escape_the_bus(observed: ObservedBus) -> None:
    run = observed.run_of("done")
    for page in (build_report(observed.path, run), build_report(observed.path)):
        assert page.startswith("<!DOCTYPE html>")
        assert "<script" not in page.lower()  # the task's "<script>" is text, escaped
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert _external_references(page) == []
        assert not re.search(r"""\b(?:src|href)\s*=""", page)
        assert 'class="budget"' in page and "budget 40%" in page
    chain = build_report(observed.path)
    # One bar per run, on lanes per agent; one fill line per run of two turns or more.
    assert chain.count('class="run"') == len(observed.outcomes)
    assert chain.count('class="fill"') == sum(len(p) > 1 for p in observed.prompts.values())
    single = build_report(observed.path, run)
    assert single.count('class="model"') == len(observed.prompts[run])
    assert "Pebble is at version 2.3 &lt;b&gt;&amp;amp;&lt;/b&gt;" in single


def test_report_command(observed: ObservedBus, tmp_path: Path) -> None:
    runner = CliRunner()
    bus = ["--bus", str(observed.path)]
    run = observed.run_of("max_turns")
    out = tmp_path / "run.html"
    result = runner.invoke(main, [*bus, "report", run, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    assert run in out.read_text(encoding="utf-8")
    chain = tmp_path / "chain.html"
    result = runner.invoke(
        main, [*bus, "report", "--chain", "--agent", "watcher", "-o", str(chain)]
    )
    assert result.exit_code == 0, result.output
    assert chain.read_text(encoding="utf-8").count('class="run"') == 1
    for args, message in [
        ([], "give either a RUN id or --chain"),
        ([run, "--chain"], "give either a RUN id or --chain"),
        ([run, "--agent", "x"], "--agent and --limit go with --chain"),
        (["nope"], "no run 'nope' on this bus"),
    ]:
        result = runner.invoke(main, [*bus, "report", *args, "-o", str(tmp_path / "x.html")])
        assert result.exit_code != 0 and message in result.stderr, (args, result.stderr)
    assert not (tmp_path / "x.html").exists()


@pytest.mark.parametrize("kind", ["run", "chain"])
def test_report_renders_in_chromium(observed: ObservedBus, tmp_path: Path, kind: str) -> None:
    page = tmp_path / f"{kind}.html"
    run = observed.run_of("done") if kind == "run" else None
    page.write_text(build_report(observed.path, run), encoding="utf-8")
    shot = tmp_path / f"{kind}.png"
    chromium_run(page.as_uri(), tmp_path, f"--screenshot={shot}")
    image = read_png(shot)
    assert image.shape == (900, 1200, 3)
    white = colour_pixels(image, "#ffffff", tolerance=8)
    assert white < 0.97 * 900 * 1200, "the page is (nearly) blank"
    # The plot: the budget line (dashed red), a fill line (blue, or the first agent's colour).
    assert colour_pixels(image, BUDGET_COLOUR) > 500
    assert colour_pixels(image, FILL_COLOUR if kind == "run" else AGENT_COLOURS[0]) > 300
    assert colour_pixels(image, OUTCOME_COLOURS["done"]) > 200  # done: badge (and bars)
    if kind == "chain":
        assert colour_pixels(image, OUTCOME_COLOURS["max_turns"]) > 200  # its bar and badge
    else:
        assert colour_pixels(image, MODEL_COLOUR) > 100  # the turns' model time
