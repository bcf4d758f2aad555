"""Reports: Markdown, HTML, terminal and plots render the numbers of a hand-built ResultMatrix."""

from __future__ import annotations

import io
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread
from rich.console import Console

from robustaudit.evaluate.result import COLUMNS, WORST_CASE, Example, ResultMatrix
from robustaudit.reports import (
    REPORT_HTML,
    REPORT_MD,
    render_html,
    render_markdown,
    render_terminal,
    summary_eps,
    write_reports,
)
from robustaudit.reports.plots import accuracy_curves_png, examples_png
from robustaudit.reports.view import Cell, format_cell, format_eps

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EPS = (0.1, 0.2, 0.3)
MODELS = ("small-cnn", "small-cnn-at")
ATTACKS = ("fgsm", "pgd")
N = 200

# n_robust per (model, attack) across EPS; worst case <= every attack, all monotone in eps.
ROBUST = {
    ("small-cnn", "fgsm"): (120, 60, 20),
    ("small-cnn", "pgd"): (100, 30, 4),
    ("small-cnn", WORST_CASE): (96, 25, 0),
    ("small-cnn-at", "fgsm"): (176, 150, 110),
    ("small-cnn-at", "pgd"): (170, 131, 80),
    ("small-cnn-at", WORST_CASE): (168, 127, 77),
}
CLEAN = {"small-cnn": 196, "small-cnn-at": 184}


def _records(models=MODELS, robust=ROBUST) -> pd.DataFrame:
    rows = []
    for model in models:
        for attack in (*ATTACKS, WORST_CASE):
            for eps, k in zip(EPS, robust[(model, attack)], strict=True):
                acc = k / N
                # An interval around acc of fixed width, so expected strings are easy to write.
                rows.append(
                    dict(
                        model=model,
                        attack=attack,
                        eps=eps,
                        norm="linf",
                        n=N,
                        n_clean_correct=CLEAN[model],
                        n_robust=k,
                        clean_accuracy=CLEAN[model] / N,
                        robust_accuracy=acc,
                        ci_low=max(0.0, acc - 0.05),
                        ci_high=min(1.0, acc + 0.04),
                        seconds=0.0 if attack == WORST_CASE else 1.25,
                    )
                )
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _provenance(models=MODELS) -> dict:
    return {
        "robustaudit": "0.1.0",
        "torch": "2.4.0",
        "python": "3.11.7",
        "platform": "Linux-x86_64",
        "device": "cpu",
        "seed": 1234,
        "started_at": "2024-05-01T10:00:00Z",
        "finished_at": "2024-05-01T10:00:12Z",
        "seconds": 12.34,
        "config": {"models": list(models), "attacks": ["fgsm", "pgd"], "eps": list(EPS), "n": N},
        "data": {"name": "digits", "n": N, "num_classes": 10, "sample_shape": [1, 8, 8]},
        "threat": {"norm": "linf", "bounds": [0.0, 1.0], "eps": list(EPS)},
        "models": [
            {
                "name": models[0],
                "source": "catalog",
                "weights_sha256": "ab" * 32,
                "trained_for": None,
                "defense": None,
                "params": 12345,
            },
            {
                "name": models[1],
                "source": "catalog",
                "weights_sha256": "cd" * 32,
                "trained_for": "linf eps=0.2",
                "defense": "pgd-at",
                "params": 12345,
            },
        ],
        "attacks": [
            {"name": "fgsm", "spec": "fgsm", "settings": {}},
            {"name": "pgd", "spec": "pgd:steps=40", "settings": {"steps": 40, "rel_stepsize": 0.1}},
        ],
    }


def _examples() -> list[Example]:
    rng = np.random.default_rng(0)
    out = []
    for i, model in enumerate(MODELS):
        clean = rng.random((1, 8, 8))
        delta = rng.uniform(-0.2, 0.2, size=(1, 8, 8))
        out.append(
            Example(model, "pgd", 0.2, clean, np.clip(clean + delta, 0, 1), i, i, (i + 3) % 10)
        )
    return out


@pytest.fixture
def result() -> ResultMatrix:
    checks = [
        {
            "id": "logits",
            "model": "small-cnn",
            "status": "pass",
            "message": "outputs are logits",
            "doc": "docs/checks.md#logits",
        },
        {
            "id": "large-eps",
            "model": "small-cnn-at",
            "status": "fail",
            "message": "accuracy at eps=0.3 stays at 38.5%",
        },
    ]
    return ResultMatrix(_records(), _provenance(), _examples(), checks)


def _expected_cell(model: str, attack: str, eps_index: int) -> str:
    acc = ROBUST[(model, attack)][eps_index] / N
    return f"{100 * acc:.1f} [{100 * max(0, acc - 0.05):.1f}–{100 * min(1, acc + 0.04):.1f}]"


# -------------------------------------------------------------------------------------- format
def test_cell_format_is_percent_with_one_decimal_and_interval():
    assert format_cell(Cell(0.581, 0.53, 0.63)) == "58.1 [53.0–63.0]"
    assert format_cell(Cell(0.5, math.nan, math.nan)) == "50.0"
    assert format_cell(Cell(math.nan)) == "—"
    assert format_cell(None) == "—"


def test_eps_format_keeps_decimals_and_uses_k_over_255_when_unwieldy():
    assert [format_eps(e) for e in (0.1, 0.2, 0.3, 0.5)] == ["0.1", "0.2", "0.3", "0.5"]
    assert format_eps(8 / 255) == "8/255"


# -------------------------------------------------------------------------------- summary eps
def test_summary_eps_is_the_trained_for_eps(result):
    assert summary_eps(result) == 0.2


def test_summary_eps_falls_back_to_the_grid_median_when_models_disagree(result):
    result.provenance["models"][0]["trained_for"] = "linf eps=0.1"
    result.provenance["models"][1]["trained_for"] = "linf eps=0.3"
    result.records = result.records[result.records["eps"] != 0.2]  # grid 0.1, 0.3: upper middle
    assert summary_eps(result) == 0.3


def test_summary_eps_ignores_a_trained_for_eps_outside_the_grid_or_another_norm(result):
    result.provenance["models"][1]["trained_for"] = "linf eps=0.25"
    assert summary_eps(result) == 0.2  # median of 0.1, 0.2, 0.3
    result.provenance["models"][1]["trained_for"] = "l2 eps=0.3"
    assert summary_eps(result) == 0.2
    result.provenance.pop("models")
    assert summary_eps(result) == 0.2


# ------------------------------------------------------------------------------------ markdown
def test_markdown_has_every_model_attack_eps_and_number(result):
    md = render_markdown(result)
    for model in MODELS:
        assert model in md
    for attack in (*ATTACKS, WORST_CASE):
        assert attack in md
    for eps in EPS:
        assert f"ε={eps:g}" in md
    for (model, attack), _ in ROBUST.items():
        for i in range(len(EPS)):
            assert _expected_cell(model, attack, i) in md
    assert "58.1" not in md  # no stray numbers from the fixture helpers
    assert "95% Wilson interval" in md


def test_markdown_matrix_rows_are_ordered_with_worst_case_last_and_bold(result):
    matrix = render_markdown(result).split("## Robust accuracy")[1].split("\n## ")[0]
    lines = [ln for ln in matrix.splitlines() if ln.startswith("| small-cnn |")]
    assert [ln.split(" | ")[1] for ln in lines] == ["fgsm", "pgd", f"**{WORST_CASE}**"]
    assert f"**{_expected_cell('small-cnn', WORST_CASE, 0)}**" in lines[2]
    # clean 196/200 and the summed seconds of three eps
    assert "| 98.0 |" in lines[0] and "| 3.8 |" in lines[0]


def test_markdown_sections_threat_data_models_attacks_summary_checks_provenance(result):
    md = render_markdown(result)
    headings = re.findall(r"^#+ (.+)$", md, flags=re.M)
    assert headings[0] == "Robustness audit"
    assert [h.split(" (")[0] for h in headings[1:]] == [
        "Verdict",
        "Threat model",
        "Data",
        "Models",
        "Attacks",
        "Robust accuracy",
        "Clean vs adversarial accuracy",
        "Differences within noise",
        "Sanity checks",
        "What the checks test",  # the docs of the checks that ran, as anchors of this file
        "large-eps",  # ("logits" is no check id of docs/checks.md: its doc stays as given)
        "upper-bounds",  # a model's headline is an upper bound: what that means, linked from the summary
        "Provenance",
    ]
    assert "- **ε grid:** 0.1, 0.2, 0.3" in md
    assert "- **pixel bounds:** [0, 1]" in md
    assert "- **sample shape:** 1×8×8" in md
    assert "`abababababab`" in md and "ab" * 32 not in md  # sha256 shortened
    assert "pgd-at (linf eps=0.2)" in md
    assert "`steps=40, rel_stepsize=0.1`" in md
    # clean vs adversarial at eps=0.2: worst case 127/200 for the adversarially trained model
    assert "## Clean vs adversarial accuracy (ε=0.2)" in md
    summary = md.split("## Clean vs adversarial")[1].split("##")[0]
    assert "| small-cnn-at | pgd-at (linf eps=0.2) | 92.0 [" in summary
    assert _expected_cell("small-cnn-at", WORST_CASE, 1) in summary
    assert _expected_cell("small-cnn", WORST_CASE, 1) in summary
    assert "| ✗ fail | `large-eps` | small-cnn-at |" in md
    assert "1 pass, 0 warn, 1 fail" in md
    assert "| seed | 1234 |" in md and "| wall time | 12.3 s |" in md
    assert '```json\n{\n  "models": [' in md


def test_markdown_escapes_table_breaking_names(result):
    result.records["model"] = result.records["model"].replace("small-cnn", "a|b<i>")
    md = render_markdown(result)
    assert r"a\|b\<i\>" in md
    assert "a|b" not in md
    result.records["model"] = "[x](javascript:alert(1))"
    assert "[x]\\(javascript" in render_markdown(result)


# ---------------------------------------------------------------------------------------- html
def test_html_is_self_contained_and_has_numbers_and_images(result):
    page = render_html(result)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)
    assert "<link" not in page and "<script" not in page and "@import" not in page
    assert all(
        src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]*)"', page)
    )
    assert page.count("data:image/png;base64,") == 2  # curves and examples
    assert _expected_cell("small-cnn-at", "pgd", 2) in page
    assert "<summary>Examples</summary>" in page and "<h2>Accuracy curves</h2>" in page
    assert "Sanity checks: 1 pass, 0 warn, 1 fail" in page
    # no relative link that breaks outside the source tree: a documented check links to its inlined section
    assert 'href="docs/' not in page and "docs/checks.md#logits" in page
    result.checks[0]["id"] = "logits-output"
    page = render_html(result, images=False)
    assert '<a href="#doc-logits-output">' in page and '<section class="doc" id="doc-logits-output">' in page
    assert "hsl(" in page  # cells coloured by robust accuracy


def test_html_escapes_a_hostile_model_name(result):
    evil = "<script>alert(1)</script>"
    result.records["model"] = result.records["model"].replace("small-cnn", evil)
    result.provenance["models"][0]["name"] = evil
    page = render_html(result, images=False)
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_html_does_not_link_javascript_urls(result):
    result.checks[0]["doc"] = "javascript:alert(1)"
    page = render_html(result, images=False)
    assert 'href="javascript' not in page


def test_html_without_examples_omits_the_section(result):
    result.examples = []
    assert examples_png(result) is None
    page = render_html(result)
    assert "<summary>Examples</summary>" not in page
    assert page.count("data:image/png;base64,") == 1


# ---------------------------------------------------------------------------------------- plots
def _decode(png: bytes) -> np.ndarray:
    assert png.startswith(PNG_SIGNATURE)
    return imread(io.BytesIO(png), format="png")


def test_accuracy_curves_png_decodes_to_one_panel_per_model(result):
    image = _decode(accuracy_curves_png(result))
    height, width = image.shape[:2]
    assert (height, width) == (320, 800)  # 2 panels of 4 x 3.2 inches at 100 dpi
    assert image.std() > 0.01  # not blank


def test_examples_png_decodes_to_a_grid_of_three_columns(result):
    image = _decode(examples_png(result))
    assert image.shape[:2] == (400, 600)  # 2 rows x 3 columns, 2 x 6 inches at 100 dpi
    assert _decode(examples_png(result, max_rows=1)).shape[0] == 200


def test_examples_png_renders_rgb(result):
    rgb = np.full((3, 8, 8), 0.5)
    result.examples = [Example("m", "pgd", 8 / 255, rgb, np.clip(rgb + 8 / 255, 0, 1), 1, 1, 2)]
    assert _decode(examples_png(result)).shape[:2] == (200, 600)


# ------------------------------------------------------------------------------------- terminal
def test_terminal_table_has_numbers_and_summary(result):
    console = Console(record=True, width=160)
    render_terminal(result, console)
    text = console.export_text()
    for model, attack in ROBUST:
        for i in range(len(EPS)):
            assert _expected_cell(model, attack, i) in text
    for eps in EPS:
        assert f"ε={eps:g}" in text
    assert "Clean vs adversarial accuracy % (worst-case at ε=0.2)" in text
    assert "pgd-at (linf eps=0.2)" in text
    assert "Sanity checks" in text and "accuracy at eps=0.3 stays at 38.5%" in text
    # worst case is the last row of each model
    attack_order = re.findall(r"│\s*(?:small-cnn(?:-at)?)?\s*│ (fgsm|pgd|worst-case)\s", text)
    assert attack_order == ["fgsm", "pgd", WORST_CASE] * 2


def test_terminal_does_not_read_names_as_markup(result):
    result.records["model"] = result.records["model"].replace("small-cnn", "net[bold]")
    console = Console(record=True, width=160)
    render_terminal(result, console)
    assert "net[bold]" in console.export_text()


# ---------------------------------------------------------------------------------- edge cases
def test_nan_interval_and_empty_n_do_not_crash(result):
    records = result.records.copy()
    mask = (records["model"] == "small-cnn") & (records["eps"] == 0.3)
    records.loc[mask, ["n", "n_robust"]] = 0
    records.loc[mask, ["robust_accuracy", "ci_low", "ci_high"]] = math.nan
    records.loc[records["attack"] == WORST_CASE, "seconds"] = math.nan
    result.records = records
    md = render_markdown(result)
    assert "| **—** |" in md  # worst-case seconds unknown
    render_html(result)
    accuracy_curves_png(result)
    console = Console(record=True, width=160)
    render_terminal(result, console)
    assert "—" in console.export_text()


def test_minimal_result_without_provenance_renders(result):
    bare = ResultMatrix(result.records.copy())
    md = render_markdown(bare)
    assert "small-cnn" in md and "## Provenance" not in md
    assert summary_eps(bare) == 0.2
    assert "<h2>Examples</h2>" not in render_html(bare)


def test_empty_result_renders():
    empty = ResultMatrix(pd.DataFrame(columns=list(COLUMNS)))
    assert math.isnan(summary_eps(empty))
    assert "No results." in render_markdown(empty)
    assert "No results." in render_html(empty)
    assert accuracy_curves_png(empty).startswith(PNG_SIGNATURE)
    console = Console(record=True, width=80)
    render_terminal(empty, console)
    assert "no results" in console.export_text()


def test_write_reports_writes_both_files_atomically(result, tmp_path):
    out = tmp_path / "run"
    paths = write_reports(result, out)
    assert paths == {"markdown": out / REPORT_MD, "html": out / REPORT_HTML}
    assert paths["markdown"].read_text(encoding="utf-8") == render_markdown(result)
    assert paths["html"].read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in out.iterdir()) == [REPORT_HTML, REPORT_MD]  # no temp files left


def test_reports_render_the_same_after_a_results_json_round_trip(result, tmp_path):
    # NaN becomes null in results.json; the reloaded records must render to the same text.
    result.records.loc[0, ["ci_low", "ci_high"]] = math.nan
    result.save(tmp_path)
    loaded = ResultMatrix.load(tmp_path)
    assert render_markdown(loaded) == render_markdown(result)
    assert render_html(loaded, images=False) == render_html(result, images=False)
    assert "<summary>Examples</summary>" in render_html(loaded)


def test_non_finite_floats_in_evidence_and_provenance_are_saved_as_null(result, tmp_path):
    # session 8: a NaN median error in a check's evidence crashed the save after the whole audit had run
    result.checks[0]["evidence"] = {"median_error": math.nan, "agree": 3, "spread": [1.5, math.inf, -math.inf],
                                    "nested": {"ratio": np.float32("nan"), "size": np.int64(7)}}
    result.provenance["data"]["scale"] = (0.5, math.nan)
    path = result.save(tmp_path)
    doc = json.loads(path.read_text())  # strict JSON: Python's reader would take NaN, so look at the text too
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
    assert doc["checks"][0]["evidence"] == {"median_error": None, "agree": 3, "spread": [1.5, None, None],
                                            "nested": {"ratio": None, "size": 7}}
    assert doc["provenance"]["data"]["scale"] == [0.5, None]
    assert ResultMatrix.load(tmp_path).checks[0]["evidence"]["median_error"] is None
    # what is in memory is left as it was: only the document is made JSON-safe
    assert math.isnan(result.checks[0]["evidence"]["median_error"])


def test_single_attack_without_worst_case_rows_is_its_own_worst_case(result):
    r = result.records
    result.records = r[r["attack"] == "pgd"].reset_index(drop=True)
    summary = render_markdown(result).split("## Clean vs adversarial")[1].split("\n## ")[0]
    assert _expected_cell("small-cnn-at", "pgd", 1) in summary


def _two_models(robust_a: list[int], robust_b: list[int], n: int = 100):
    import pandas as pd

    from robustaudit.evaluate.result import COLUMNS, WORST_CASE, ResultMatrix
    from robustaudit.evaluate.aggregate import record as _record

    rows = [_record(m, WORST_CASE, 0.1, "linf", n, n, len(r), 1.0) for m, r in (("a", robust_a), ("b", robust_b))]
    return ResultMatrix(pd.DataFrame(rows, columns=list(COLUMNS)),
                        robust_ids={("a", WORST_CASE, 0.1): robust_a, ("b", WORST_CASE, 0.1): robust_b})


def test_rows_within_noise_are_named_and_significant_differences_are_not():
    from robustaudit.reports.markdown import render_markdown
    from robustaudit.reports.view import ties

    # 5 discordant samples, all one way: two-sided exact p = 2 / 2**5 = 0.0625 -> cannot be told apart
    close = _two_models(list(range(50)), list(range(45)))
    (tie,) = ties(close)
    assert (tie.first, tie.second, tie.n) == ("a", "b", 100) and tie.p_value == 0.0625
    assert "| 0.1 | 1 of 1: a ≈ b | — |" in render_markdown(close)  # the per-ε table names few pairs
    # 6 discordant samples, all one way: p = 2 / 64 = 0.03125 -> a real difference
    far = _two_models(list(range(50)), list(range(44)))
    assert ties(far) == []
    assert "differs significantly" in render_markdown(far)
    # equal totals can still be different samples: 10 each way is no evidence of a difference
    swapped = _two_models(list(range(50)), list(range(10, 60)))
    assert ties(swapped)[0].p_value == 1.0
