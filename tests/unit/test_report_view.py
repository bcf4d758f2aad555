"""The report view layer: the one number formatter, the import direction (view -> renderers, renderers
never each other), and a segmentation result rendered again from its results.json."""

from __future__ import annotations

import ast
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from robustaudit.evaluate.result import SEG_COLUMNS, WORST_CASE, ResultMatrix
from robustaudit.reports import render_html, render_markdown, render_terminal
from robustaudit.reports.view import numbers as fmt

REPORTS = Path(__file__).resolve().parents[2] / "src" / "robustaudit" / "reports"
RENDERERS = ("terminal", "markdown", "html")


@pytest.mark.parametrize(("value", "text"), [(0.581, "58.1"), (1, "100.0"), (np.float32(0.25), "25.0"),
                                             (math.nan, "—"), (None, "—"), (True, "—"), ("x", "—"), (math.inf, "—")])
def test_percent(value, text):
    assert fmt.format_percent(value) == text


def test_percent_with_interval_leaves_an_undefined_interval_out():
    assert fmt.format_percent_ci(0.581, 0.53, 0.63) == "58.1 [53.0–63.0]"
    assert fmt.format_percent_ci(0.581, math.nan, 0.63) == "58.1"
    assert fmt.format_percent_ci(None, 0.1, 0.2) == "—"


@pytest.mark.parametrize(("eps", "text"), [(0.1, "0.1"), (0.2, "0.2"), (8 / 255, "8/255"), (0.0, "0"),
                                           (0.012345, "0.01235"), (math.nan, "—")])
def test_eps(eps, text):
    assert fmt.format_eps(eps) == text


def test_counts_sizes_times_and_passes():
    assert fmt.format_count(2444544) == "2.44 M" and fmt.format_count(512) == "512"
    assert fmt.format_bytes(15814656) == "15.1 MiB" and fmt.format_bytes(100) == "100 B"
    assert fmt.format_latency(0.00519) == "5.19 ms" and fmt.format_latency(None) == "—"
    assert fmt.format_passes(48.66, 47.66) == "48.7/47.7" and fmt.format_passes(148.6, 47.6) == "149/48"
    assert fmt.format_passes(1.0, math.nan) == "—"
    assert fmt.format_number(0.12345, ".3f") == "0.123" and fmt.format_number(None, ".3f") == "—"
    assert fmt.format_seconds(12.345) == "12.3"


def _imports(path: Path) -> set[str]:
    """Every ``robustaudit.reports...`` module ``path`` imports, function-level imports included."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("robustaudit.reports"):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("robustaudit.reports")}
    return out


def test_the_view_imports_no_renderer_and_renderers_not_each_other():
    view = sorted((REPORTS / "view").glob("*.py"))
    assert len(view) >= 10
    for path in view:
        assert all(m.startswith("robustaudit.reports.view") for m in _imports(path)), path
    for name in RENDERERS:
        others = {f"robustaudit.reports.{o}" for o in RENDERERS if o != name}
        assert not _imports(REPORTS / f"{name}.py") & others, name
    for path in sorted((REPORTS / "plots").glob("*.py")):  # figures read views, never a renderer
        assert all(m.startswith(("robustaudit.reports.view", "robustaudit.reports.plots")) for m in _imports(path))


def test_every_report_file_and_function_is_short():
    for path in sorted(REPORTS.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert len(text.splitlines()) <= 400, path
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno + 1 <= 60, f"{path.name}:{node.name}"


def _segmentation() -> ResultMatrix:
    rows = []
    for attack, miou, targeted in (("pgd", 0.40, math.nan), ("segpgd:target=1", 0.30, 0.25), (WORST_CASE, 0.25, math.nan)):
        rows.append({"model": "unet", "attack": attack, "eps": 0.02, "norm": "linf", "n": 12, "clean_miou": 0.781,
                     "miou": miou, "miou_ci_low": miou - 0.1, "miou_ci_high": miou + 0.1,
                     "clean_pixel_accuracy": 0.984, "pixel_accuracy": 0.9, "pa_ci_low": 0.85, "pa_ci_high": 0.95,
                     "targeted_success": targeted, "median_l2": 0.5, "median_linf": 0.02, "seconds": 0.5})
    records = pd.DataFrame(rows, columns=list(SEG_COLUMNS))
    return ResultMatrix(records, {"threat": {"norm": "linf", "eps": [0.02]}, "data": {"name": "scenes", "n": 12,
                                                                                        "num_classes": 2}},
                        task="segmentation", class_iou={("unet", "clean", 0.0): [0.9, 0.6],
                                                         ("unet", "pgd", 0.02): [0.7, None]})


def test_a_segmentation_report_renders_again_from_its_results_json(tmp_path):
    result = _segmentation()
    result.save(tmp_path)
    loaded = ResultMatrix.load(tmp_path)  # JSON turns the NaN targeted success into None
    md = render_markdown(loaded)
    assert md == render_markdown(result)
    assert "| unet | segpgd:target=1 | 0.02 | 25.0% | 0.500 | 0.0200 |" in md
    assert "| unet | worst-case (per image) | 78.1 / 98.4 | 25.0 [15.0–35.0] / 90.0 | 0.5 |" in md
    assert "| 1 | 60.0 | — |" in md  # class 1: clean IoU, then absent under pgd
    page = render_html(loaded, images=False)
    assert '<tr class="worst"><td>unet</td><td>worst-case (per image)</td>' in page
    # the same page as classification: first screen, styled, threat model, details, provenance
    for part in ('id="verdict"', 'id="clean-vs-adversarial"', 'id="checks-tally"', 'id="threat"', "<style>",
                 '<details id="matrix">', '<details id="setup">'):
        assert part in page, part
    # the setup and provenance blocks are the classification report's (they had only five fields here)
    loaded.provenance.update({"torch": "2.14.1", "seed": 3, "config": {"n": 12}})
    again = render_html(loaded, images=False)
    provenance = again.split('<details id="provenance">')[1].split("</details>")[0]
    assert "2.14.1" in provenance and "Configuration" in provenance and '&#34;n&#34;: 12' in provenance
    assert "## Provenance" in render_markdown(loaded) and "## Models" in render_markdown(loaded)
    assert "25.0 [15.0–35.0]" in page.split('id="verdict"')[1].split("</table>")[0]
    assert "no sanity check ran" in page and "reliable<" not in page  # nothing checks segmentation
    console = Console(file=io.StringIO(), width=200)
    render_terminal(loaded, console)
    assert "25.0 [15.0–35.0] / 90.0" in console.file.getvalue()
