"""Every seconds figure counted once (issue 17, "accounting errors in the report"): a worst case is the sum of
its columns, not more; a detector row's adaptive columns share the one adaptive run instead of each adding
it and the plain attack again; a fitted attack's cell carries its one-off fit seconds (also on resume); the
stages' seconds add up to the wall time; detector rows show their passes, never "none attacked"; and the
matrix explains detector rows and fits beside it, only where there are such rows.

Tiny audits (n 8-24, pgd:steps=2, digits), one torch thread.
"""

from __future__ import annotations

import json
import math
import shutil
import types
from pathlib import Path

import pandas as pd
import pytest

import robustaudit
from robustaudit.evaluate.aggregate import WORST_CASE, CellOutcome, CleanOutcome, Outcomes, aggregate
from robustaudit.evaluate.result import ResultMatrix
from robustaudit.evaluate.store import STORE_FILE, Store
from robustaudit.reports.html import render_html
from robustaudit.reports.markdown import render_markdown
from robustaudit.reports.view.cost import DETECTOR_COST_NOTE, FIT_COST_NOTE, attack_cost_table, cost_section
from robustaudit.reports.view.matrix import DETECTOR_ROWS_NOTE, FIT_NOTE, matrix_rows, matrix_view

DETECTOR_OPTIONS = dict(attacks=["fgsm", "pgd:steps=2"], eps=[0.1, 0.2], n=24, batch_size=24, checks="off",
                        cost=False, defense="squeeze", device="cpu")
ROW = "digits-cnn+squeeze"
#: per-cell seconds are rounded to the millisecond before they are summed
ROUNDING = 0.01


@pytest.fixture(scope="module", autouse=True)
def _one_thread_and_cache(tmp_path_factory):
    """One torch thread already for the module's fixtures (two spin-wait tens of times slower on a loaded
    2-core machine); detector fits cached in a directory of the module's own."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    mp = pytest.MonkeyPatch()
    mp.setenv("ROBUSTAUDIT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def detected(tmp_path_factory) -> tuple[ResultMatrix, dict]:
    """A tiny audit of digits-cnn with the squeeze detector: the result and its results.json."""
    out = tmp_path_factory.mktemp("detected")
    result = robustaudit.audit("digits-cnn", "digits", out=out, **DETECTOR_OPTIONS)
    return result, json.loads((out / "results.json").read_text())


def _cells(records: pd.DataFrame, model: str) -> pd.DataFrame:
    return records[(records["model"] == model) & (records["attack"] != WORST_CASE)]


# ------------------------------------------------------------------------------------------- aggregate
def test_worst_case_sums_its_columns_seconds_fit_seconds_and_passes_once():
    cells = [CellOutcome("m", "pgd", 0.1, "linf", [0, 1, 2], [0, 1], seconds=2.0, forward=30, backward=20),
             CellOutcome("m", "patch", 0.1, "linf", [0, 1, 2], [1], seconds=0.5, forward=0, backward=0,
                         fit_seconds=900.0)]
    rows, _ = aggregate(Outcomes([CleanOutcome("m", [0, 1, 2, 3], [0, 1, 2])], cells))
    worst = next(r for r in rows if r["attack"] == WORST_CASE)
    assert (worst["seconds"], worst["fit_seconds"]) == (2.5, 900.0)
    assert (worst["forward_passes"], worst["backward_passes"]) == (30, 20)
    assert [r["fit_seconds"] for r in rows] == [0.0, 900.0, 900.0]
    # the matrix row of the worst case is its eps rows' sum: the columns' time, once
    result = ResultMatrix(pd.DataFrame(rows))
    by_attack = {r.attack: r for r in matrix_rows(result)}
    assert by_attack[WORST_CASE].seconds == 2.5 and by_attack[WORST_CASE].fit_seconds == 900.0
    assert by_attack["patch"].seconds_text == "0.5 + 900.0 fit" and by_attack["pgd"].seconds_text == "2.0"


def test_shards_add_their_fit_seconds():
    part = [CellOutcome("m", "patch", 0.1, "patch", [0], [0], seconds=1.0, fit_seconds=3.0)]
    merged = Outcomes.concat([Outcomes([CleanOutcome("m", [0], [0])], part),
                              Outcomes([CleanOutcome("m", [1], [1])],
                                       [CellOutcome("m", "patch", 0.1, "patch", [1], [1], seconds=1.0,
                                                    fit_seconds=4.0)])])
    assert (merged.cells[0].seconds, merged.cells[0].fit_seconds) == (2.0, 7.0)


# ------------------------------------------------------------------------------------------- detectors
def test_detector_worst_case_is_the_sum_of_its_columns_and_within_the_stage(detected):
    result, doc = detected
    r = result.records
    for model in result.models:
        for eps in result.eps_values:
            at = r[(r["model"] == model) & (r["eps"] == eps)]
            worst = at[at["attack"] == WORST_CASE].iloc[0]
            columns = at[at["attack"] != WORST_CASE]
            assert worst["seconds"] == pytest.approx(columns["seconds"].sum(), abs=1e-9)
            assert worst["forward_passes"] == columns["forward_passes"].sum()
    prov = doc["provenance"]
    # the detector cells' seconds are attack time inside the detection stage, each counted once
    assert _cells(r, ROW)["seconds"].sum() <= prov["detection"]["seconds"] + ROUNDING
    assert _cells(r, "digits-cnn")["seconds"].sum() <= prov["stage_seconds"]["matrix"] + ROUNDING
    assert prov["stage_seconds"]["detect"] == pytest.approx(prov["detection"]["seconds"], abs=1e-3)
    assert sum(prov["stage_seconds"].values()) <= prov["seconds"] + ROUNDING
    # the adaptive columns share the one adaptive run per eps evenly
    for eps in result.eps_values:
        adaptive = r[(r["model"] == ROW) & (r["eps"] == eps) & r["attack"].str.endswith("(adaptive)")]
        assert adaptive["seconds"].nunique() == 1 and len(adaptive) == 2


def test_detector_seconds_are_measured_once_per_run_with_a_counting_clock(monkeypatch):
    """With a clock that advances 1 s per reading, every timed run measures exactly 1 s: the plain
    columns hold 1 s each and the two adaptive columns half of the one adaptive run; the worst case is
    the three runs, 3 s (it read 6 s when each adaptive column added the plain attack and the whole run)."""
    import robustaudit.evaluate.detection as detection

    ticks = iter(range(10**6))
    monkeypatch.setattr(detection, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    result = robustaudit.audit("digits-cnn", "digits", **{**DETECTOR_OPTIONS, "n": 12, "eps": [0.2]})
    r = result.records
    seconds = dict(zip(r.loc[r["model"] == ROW, "attack"], r.loc[r["model"] == ROW, "seconds"]))
    assert seconds == {"fgsm": 1.0, "fgsm (adaptive)": 0.5, "pgd:steps=2": 1.0, "pgd:steps=2 (adaptive)": 0.5,
                       WORST_CASE: 3.0}


def test_detector_cells_count_passes_on_the_survivors_only(detected):
    result, _ = detected
    r = _cells(result.records, ROW)
    assert r["forward_passes"].notna().all() and (r["forward_passes"] > 0).all()
    assert (r["backward_passes"] > 0).all()
    for attack in ("fgsm", "pgd:steps=2"):
        col = r[r["attack"] == attack].sort_values("eps")
        # the larger eps attacks only what the smaller one left defended (survivors only), and the
        # curve is monotone, as the note beside the matrix says
        assert col["n_attacked"].iloc[0] == 24 and col["n_attacked"].iloc[1] == col["n_robust"].iloc[0]
        assert list(col["robust_accuracy"]) == sorted(col["robust_accuracy"], reverse=True)
    # the adaptive run's passes per eps are split over its two columns: their sum is the run's
    adaptive = r[r["attack"].str.endswith("(adaptive)")]
    assert adaptive.groupby("eps")["forward_passes"].apply(lambda s: s.max() - s.min() <= 1).all()


def test_cost_table_shows_detector_rows_cost_never_none_attacked(detected):
    result, _ = detected
    table = attack_cost_table(result)
    rows = [row for row in table.rows if row[0] == ROW]
    assert len(rows) == 5 and not any("none attacked" in c for row in rows for c in row)
    assert all("·" in c for row in rows for c in row[2:4])
    section = next(s for s in cost_section(result).subsections if s.title == "Attacks")
    assert DETECTOR_COST_NOTE in section.paragraph and FIT_COST_NOTE not in section.paragraph


def test_a_cell_with_uncounted_passes_shows_its_seconds_and_none_attacked_only_when_none_was():
    from robustaudit.evaluate.aggregate import record

    rows = [record("m+d", "pgd", 0.1, "linf", 10, 9, 5, 1.25, n_attacked=9),
            record("m+d", "pgd", 0.2, "linf", 10, 9, 5, 0.0, n_attacked=0, forward=0, backward=0)]
    rows[1]["forward_passes"] = 0  # so that the table is drawn (pass counts present)
    table = attack_cost_table(ResultMatrix(pd.DataFrame(rows)))
    assert table.rows[0][2:4] == ("1.2 s · 9", "none attacked")


def test_detector_note_beside_the_matrix_only_where_detector_rows_are(detected, tmp_path):
    result, _ = detected
    assert matrix_view(result).notes == (DETECTOR_ROWS_NOTE,)
    assert DETECTOR_ROWS_NOTE in render_markdown(result)
    html = render_html(result, images=False)
    assert '<p class="note matrix-note">MODEL+DETECTOR rows:' in html
    from rich.console import Console

    from robustaudit.reports.terminal import render_terminal

    console = Console(width=400, record=True, file=open(tmp_path / "t.txt", "w"))
    render_terminal(result, console)
    assert "MODEL+DETECTOR rows:" in console.export_text()
    bare = ResultMatrix(result.records[result.records["model"] == "digits-cnn"].reset_index(drop=True),
                        {k: v for k, v in result.provenance.items() if k != "detection"})
    assert matrix_view(bare).notes == ()
    assert "MODEL+DETECTOR" not in render_markdown(bare)


# ------------------------------------------------------------------------------------------- fits
def _fit_audit(out: Path, **extra) -> ResultMatrix:
    return robustaudit.audit("digits-cnn", "digits", attacks=["atn:epochs=1,samples=32,width=8", "fgsm"], eps=[0.1],
                             n=8, batch_size=8, checks="off", cost=False, device="cpu", out=out, **extra)


def test_a_fitted_attack_cell_carries_its_fit_seconds_also_when_resumed(tmp_path):
    result = _fit_audit(tmp_path / "run")
    (fit,) = result.provenance["fits"]
    r = result.records.set_index("attack")
    assert fit["seconds"] > 0 and r.loc[fit["attack"], "fit_seconds"] == fit["seconds"]
    assert r.loc["fgsm", "fit_seconds"] == 0.0 and r.loc[WORST_CASE, "fit_seconds"] == fit["seconds"]
    # fit and attack time are inside the matrix stage, each once
    stage = result.provenance["stage_seconds"]["matrix"]
    assert r.loc[fit["attack"], "seconds"] + fit["seconds"] + r.loc["fgsm", "seconds"] <= stage + ROUNDING
    doc = json.loads((tmp_path / "run" / "results.json").read_text())
    assert {x["attack"]: x["fit_seconds"] for x in doc["records"]}[fit["attack"]] == fit["seconds"]
    # a resumed run fits nothing again and reports the stored fit's seconds
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "run", copy)
    with Store(copy / STORE_FILE) as store:
        store.put_meta("finished", False)
    again = _fit_audit(copy, resume=True)
    assert again.records.set_index("attack").loc[fit["attack"], "fit_seconds"] == fit["seconds"]


def test_the_reports_state_the_one_off_fit(tmp_path):
    result = _fit_audit(tmp_path)
    (fit,) = result.provenance["fits"]
    assert matrix_view(result).notes == (FIT_NOTE,)
    row = next(r for r in matrix_rows(result) if r.attack == fit["attack"])
    assert row.seconds_text.endswith(f" + {fit['seconds']:.1f} fit")
    table = attack_cost_table(result)
    assert table.headers[-1] == "fit (one-off)"
    cell = next(t for t in table.rows if t[1] == fit["attack"])[-1]
    assert cell == f"{fit['seconds']:.1f} s · {fit['forward_passes']}/{fit['backward_passes']} passes"
    assert next(t for t in table.rows if t[1] == "fgsm")[-1] == "—"
    md = render_markdown(result)
    assert FIT_NOTE in md and FIT_COST_NOTE in md and "one-off" in render_html(result, images=False)
    assert not math.isnan(row.seconds)
