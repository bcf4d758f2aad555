"""Progress without a terminal (issue 17.2): plain lines on stderr, rate-limited, silenced by --quiet."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from robustaudit.cli import main
from robustaudit.evaluate.progress import PlainProgress, duration

LINE = re.compile(r"^\[ *\d+\.\d s\] (.+?): (\d+/\d+, )?(done in \d+[smh]|ETA [\dmsh]+|starting.*)$")


def _audit(tmp: Path, *extra: str) -> list[str]:
    return ["audit", "--out", str(tmp / "out"), "--n", "16", "--eps", "0.1,0.2", "--checks", "off",
            "--model", "digits-cnn", "--attack", "fgsm,pgd:steps=3", *extra]


def test_plain_lines_per_stage_on_stderr_without_a_terminal(tmp_path: Path, capsys) -> None:
    assert main(_audit(tmp_path)) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("[")]
    stages = [LINE.match(line).group(1) for line in lines]  # every progress line has the plain format
    # the model-cost stage has its own line (it used to be counted in the stage before it)
    assert stages == ["digits-cnn: clean", "digits-cnn: fgsm", "digits-cnn: pgd:steps=3", "model cost"], err
    assert all("done in" in line for line in lines)
    assert re.search(r"16/16, done in \d+s$", lines[0]) and "32/32" in lines[1]  # 16 samples x 2 eps (at most)


def test_quiet_silences_progress(tmp_path: Path, capsys) -> None:
    assert main(_audit(tmp_path, "--quiet")) == 0
    assert not [line for line in capsys.readouterr().err.splitlines() if line.startswith("[")]


def test_plain_progress_is_rate_limited_and_gives_an_eta() -> None:
    now = [0.0]
    lines: list[str] = []
    bar = PlainProgress(lines.append, every=5.0, clock=lambda: now[0])
    bar.start("m: pgd", 100)
    for _ in range(99):  # one sample a second for 99 s: a line every 5 s at most
        now[0] += 1.0
        bar.advance(1)
    assert len(lines) == 19  # at 5, 10, ..., 95 s
    assert lines[0] == "[    5.0 s] m: pgd: 5/100, ETA 1m35s"
    now[0] += 1.0
    bar.advance(1)  # the stage's end is always reported
    assert lines[-1] == "[  100.0 s] m: pgd: 100/100, done in 1m40s"
    bar.start("fit patch (eps=0.1)", 500)
    assert lines[-1].startswith("[  100.0 s] fit patch (eps=0.1): starting (500 units)")
    bar.advance(0)
    with bar:
        pass
    assert lines[-1] == "[  100.0 s] fit patch (eps=0.1): 0/500, done in 0s"


def test_a_fit_gives_its_estimate_after_its_first_unit_and_nests_in_its_cell() -> None:
    """A patch cell fits before it attacks: the fit announces its cost, gives an ETA right after its first
    step (not 5 s later), and the cell is neither reported done before the fit nor lost after it."""
    now = [0.0]
    lines: list[str] = []
    bar = PlainProgress(lines.append, every=5.0, clock=lambda: now[0])
    bar.start("m: patch", 96)
    now[0] += 1.0
    bar.start("fit patch (eps=0.1; 100 steps × 32 images: about 3,200 forward+backward passes)", 100)
    assert len(lines) == 1 and "about 3,200 forward+backward passes): starting (100 units)" in lines[0]
    now[0] += 2.0
    bar.advance(1)  # the first step took 2 s: the estimate is 198 s, said at once
    assert lines[-1].endswith("passes): 1/100, ETA 3m18s")
    for _ in range(99):
        now[0] += 2.0
        bar.advance(1)
    assert lines[-1].endswith("passes): 100/100, done in 3m20s")
    now[0] += 1.0
    bar.advance(96)  # the cell goes on after its fit and ends as itself
    assert lines[-1] == "[  202.0 s] m: patch: 96/96, done in 3m22s"
    assert not [line for line in lines if "m: patch: 0/96" in line]


def test_duration() -> None:
    assert [duration(s) for s in (0.4, 59, 80, 3599, 7500)] == ["0s", "59s", "1m20s", "59m59s", "2h05m"]


@pytest.mark.filterwarnings("default::UserWarning")  # the suite's ini ignores this warning elsewhere
def test_too_few_clean_correct_samples_are_warned_in_the_summary_and_results_json(tmp_path: Path, capsys) -> None:
    import json

    argv = ["audit", "--out", str(tmp_path / "out"), "--n", "12", "--eps", "0.1", "--checks", "off",
            "--model", "digits-cnn", "--attack", "fgsm", "--quiet"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    (line,) = doc["provenance"]["warnings"]
    assert line.startswith("model 'digits-cnn': only ") and "clean-correct samples (of 12)" in line
    assert f"warning: {line}" in err


def test_a_meaningless_figure_is_said_in_the_summary_the_verdict_and_the_api(tmp_path: Path) -> None:
    """Issue 17.5: 12 samples are too few for any figure: a Python warning for the API's users, "not
    meaningful" in the verdict of report.md and report.html and in the terminal's table and closing line,
    never "every figure passed" nor "reliable"."""
    import robustaudit
    from rich.console import Console

    from robustaudit.reports import write_reports
    from robustaudit.reports.terminal import render_terminal

    with pytest.warns(UserWarning, match=r"model 'digits-cnn': only \d+ clean-correct samples \(of 12\)"):
        result = robustaudit.audit(model="digits-cnn", n=12, eps=0.1, attacks=["fgsm"], cost=False)
    write_reports(result, tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    verdict = next(line for line in md.splitlines() if line.startswith("| digits-cnn |"))
    assert "not meaningful: only" in verdict and "reliable" not in verdict
    html = (tmp_path / "out" / "report.html").read_text()
    assert "not meaningful: only" in html
    console = Console(record=True, width=200)
    render_terminal(result, console)
    text = console.export_text()
    assert "(not meaningful)" in text and "every figure passed" not in text
    assert "but the figures of digits-cnn are not meaningful" in text


def test_near_chance_accuracy_is_warned() -> None:
    import pandas as pd

    from robustaudit.evaluate.header import meaningless_reasons, meaningless_warnings

    rows = pd.DataFrame({"model": ["a", "a", "b", "c"], "n": [200, 200, 200, 20], "n_clean_correct": [25, 25, 190, 19]})
    lines = meaningless_warnings(rows, 10)
    # 'a' is near chance and has too few clean-correct samples: both are said, not only the first
    assert len(lines) == 3 and "'a': clean accuracy 0.125 is near chance (0.100 for 10 classes)" in lines[0]
    assert "'a': only 25 clean-correct samples (of 200)" in lines[1]
    assert "'c': only 19 clean-correct samples (of 20)" in lines[2]
    assert meaningless_reasons(rows, 10) == {"a": ["clean accuracy 0.125 near chance", "only 25 clean-correct samples"],
                                             "c": ["only 19 clean-correct samples"]}


def test_the_terminal_bar_nests_a_fit_in_its_cell_too() -> None:
    from io import StringIO

    from rich.console import Console

    from robustaudit.evaluate.progress import RichProgress

    bar = RichProgress(Console(file=StringIO(), force_terminal=True))
    with bar:
        bar.start("m: patch", 96)
        bar.start("fit patch", 10)
        assert [t.description for t in bar._progress.tasks] == ["m: patch", "fit patch"]
        bar.advance(10)  # the fit ends: its bar goes, the cell's is the one that advances
        bar.advance(96)
        (cell,) = bar._progress.tasks
        assert (cell.description, cell.completed, cell.total) == ("m: patch", 96, 96)
        bar.start("m: fgsm", 5)  # a new cell replaces the finished one
        assert [t.description for t in bar._progress.tasks] == ["m: fgsm"]
