"""Crash-safe, resumable audits: SIGKILL then ``--resume`` gives the uninterrupted run's numbers,
Ctrl-C / SIGTERM keep finished batches and print the resume command, and ``--resume`` refuses (exit 2,
one line naming the part) when the configuration, the data or the weights changed."""

from __future__ import annotations

import json
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from robustaudit.cli import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, main

SLOW = ["audit", "--model", "digits-cnn-pgdat", "--attack", "pgd:steps=50", "--attack", "deepfool:steps=3",
        "--eps", "0.1,0.2", "--n", "96", "--batch-size", "16", "--device", "cpu"]
SMALL = ["audit", "--model", "digits-cnn", "--attack", "fgsm", "--attack", "pgd:steps=3", "--eps", "0.1,0.2",
         "--n", "48", "--batch-size", "16", "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _numbers(out: Path) -> tuple:
    """Everything numeric of a run: records without ``seconds``, robust ids, minimal norms, examples."""
    doc = json.loads((out / "results.json").read_text())
    records = [{k: v for k, v in r.items() if k != "seconds"} for r in doc["records"]]
    examples = None
    if (out / "examples.npz").is_file():
        with np.load(out / "examples.npz") as z:
            examples = (str(z["meta"]), z["clean"].tobytes(), z["adversarial"].tobytes())
    return records, doc["robust_ids"], doc["minimal_norms"], examples


def _db(out: Path) -> sqlite3.Connection:
    """Read-only view of a run's store (safe while the run writes: WAL)."""
    return sqlite3.connect(f"file:{out / 'results.sqlite'}?mode=ro", uri=True, timeout=5)


def _count(out: Path, sql: str) -> int:
    try:
        with _db(out) as db:
            return db.execute(sql).fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def _last_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    return lines[-1] if lines else ""


# ------------------------------------------------------------------ SIGKILL and --resume


def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path, capsys):
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "robustaudit", *SLOW, "--out", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while _count(killed, "SELECT COUNT(*) FROM adv_batches") < 3:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no attack batch committed within 60 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)  # no handler, no cleanup: a crash
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "results.json").exists()
    with _db(killed) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'finished'").fetchone()[0] == "false"
        done = db.execute("SELECT COUNT(*) FROM adv_batches").fetchone()[0] + \
            db.execute("SELECT COUNT(*) FROM clean_batches").fetchone()[0]
    assert done >= 3 + 6

    assert main([*SLOW, "--out", str(killed), "--resume"]) == EXIT_OK
    assert "stored batches reused" in capsys.readouterr().err
    assert main([*SLOW, "--out", str(reference)]) == EXIT_OK

    resumed = json.loads((killed / "results.json").read_text())["provenance"]["resume"]
    total = _count(reference, "SELECT COUNT(*) FROM adv_batches") + _count(reference, "SELECT COUNT(*) FROM clean_batches")
    assert resumed["reused_batches"] >= done  # what was committed before the kill (a batch may land after the count)
    assert resumed["reused_batches"] + resumed["computed_batches"] == total
    assert 0 < resumed["computed_batches"] < total
    ours, theirs = _numbers(killed), _numbers(reference)
    assert ours[0] == theirs[0] and ours[1] == theirs[1] and ours[2] == theirs[2]
    assert theirs[3] is not None and ours[3] == theirs[3]  # examples too, picked from reused batches
    assert any(r["attack"] == "deepfool:steps=3" for r in ours[0]) and ours[2][0]["norms"]


def test_same_seed_same_cpu_bit_identical(tmp_path):
    for d in ("a", "b"):
        assert main([*SMALL, "--attack", "deepfool:steps=3", "--out", str(tmp_path / d)]) == EXIT_OK
    a, b = _numbers(tmp_path / "a"), _numbers(tmp_path / "b")
    assert a == b and a[3] is not None
    # bit-identical, not merely close: the minimal norms are compared as floats, exactly
    assert all(isinstance(v, float) for v in a[2][0]["norms"].values() if v is not None)


# ------------------------------------------------------------------ Ctrl-C / SIGTERM


def _interrupt_after(monkeypatch, batches: int, how: str) -> None:
    """Interrupt the audit right after its ``batches``-th attacked batch is committed: by raising
    KeyboardInterrupt (Ctrl-C), or by a real SIGTERM to this process (a CI cancellation)."""
    from robustaudit.evaluate.store import Store

    seen = {"n": 0}
    write = Store.write_adv

    def write_then_interrupt(self, *args, **kw):
        write(self, *args, **kw)
        seen["n"] += 1
        if seen["n"] == batches:
            if how == "sigint":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Store, "write_adv", write_then_interrupt)


@pytest.mark.parametrize("how", ["sigint", "sigterm"])
def test_interrupt_keeps_batches_and_prints_resume_command(tmp_path, capsys, monkeypatch, how):
    out = tmp_path / "run dir"  # a space: the printed command must quote it
    argv = [*SMALL, "--out", str(out)]
    before = signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as m:
        _interrupt_after(m, 4, how)
        assert main(argv) == EXIT_INTERRUPTED
    assert signal.getsignal(signal.SIGTERM) is before  # main() restores the handler it installed
    line = _last_line(capsys)
    assert line.startswith("interrupted: 7 finished batches are stored in")  # 3 clean + 4 attacked
    command = line.split("continue with: ", 1)[1]
    assert command == shlex.join(["robustaudit", *argv, "--resume"])
    assert _count(out, "SELECT COUNT(*) FROM adv_batches") == 4 and _count(out, "SELECT COUNT(*) FROM clean") == 48
    assert not (out / "results.json").exists()

    assert main(shlex.split(command)[1:]) == EXIT_OK  # the printed command, as printed
    assert "resumed" in capsys.readouterr().err
    reference = tmp_path / "reference"
    assert main([*SMALL, "--out", str(reference)]) == EXIT_OK
    assert _numbers(out) == _numbers(reference)
    counts = json.loads((out / "results.json").read_text())["provenance"]["resume"]
    assert counts["reused_batches"] == 7 and counts["computed_batches"] > 0


# ------------------------------------------------------------------ the policy for an --out


@pytest.fixture
def unfinished(tmp_path, monkeypatch) -> Path:
    out = tmp_path / "run"
    with monkeypatch.context() as m:
        _interrupt_after(m, 2, "sigint")
        assert main([*SMALL, "--out", str(out)]) == EXIT_INTERRUPTED
    return out


def test_unfinished_run_is_never_discarded_silently(unfinished, capsys):
    capsys.readouterr()
    assert main([*SMALL, "--out", str(unfinished)]) == EXIT_USAGE
    assert _last_line(capsys) == (f"error: {unfinished} holds an unfinished run (5 batches done); pass --resume "
                                  "to continue it or --overwrite to discard it")
    assert _count(unfinished, "SELECT COUNT(*) FROM adv_batches") == 2  # untouched
    assert main([*SMALL, "--out", str(unfinished), "--resume", "--overwrite"]) == EXIT_USAGE
    assert "--resume and --overwrite exclude each other" in _last_line(capsys)
    assert main([*SMALL, "--out", str(unfinished), "--overwrite"]) == EXIT_OK
    assert "resume" not in json.loads((unfinished / "results.json").read_text())["provenance"]
    # a finished run is overwritten as before, and resuming it reuses every batch
    assert main([*SMALL, "--eps", "0.3", "--out", str(unfinished)]) == EXIT_OK
    assert main([*SMALL, "--eps", "0.3", "--out", str(unfinished), "--resume"]) == EXIT_OK
    counts = json.loads((unfinished / "results.json").read_text())["provenance"]["resume"]
    assert counts["computed_batches"] == 0 and counts["reused_batches"] > 0


def test_a_new_run_leaves_none_of_the_old_runs_outputs(tmp_path, monkeypatch):
    """A finished run's results and reports go when a new run starts in its --out: an interrupted new run must
    not leave the old run's report.md beside its own unfinished store, as if they belonged together."""
    out = tmp_path / "run"
    assert main([*SMALL, "--out", str(out)]) == EXIT_OK
    written = ("results.json", "examples.npz", "report.md", "report.html")
    assert all((out / name).exists() for name in written)
    with monkeypatch.context() as m:
        _interrupt_after(m, 2, "sigterm")
        assert main([*SMALL, "--seed", "5", "--out", str(out)]) == EXIT_INTERRUPTED
    assert [name for name in written if (out / name).exists()] == []


def test_resume_without_a_stored_run(tmp_path, capsys):
    assert main([*SMALL, "--out", str(tmp_path / "none"), "--resume"]) == EXIT_USAGE
    assert _last_line(capsys).startswith(f"error: --resume: {tmp_path / 'none'} holds no stored run")


def test_resume_and_overwrite_from_toml(tmp_path, unfinished, capsys):
    cfg = tmp_path / "audit.toml"
    cfg.write_text("resume = true\n")
    capsys.readouterr()
    assert main([*SMALL, "--out", str(unfinished), "--config", str(cfg)]) == EXIT_OK
    assert json.loads((unfinished / "results.json").read_text())["provenance"]["resume"]["reused_batches"] == 5
    cfg.write_text("resume = true\noverwrite = true\n")
    assert main([*SMALL, "--out", str(unfinished), "--config", str(cfg)]) == EXIT_USAGE
    assert "exclude each other" in _last_line(capsys)


def _weights(tmp_path: Path, name: str, source: str) -> str:
    from robustaudit.models.catalog import create_model

    path = tmp_path / f"{name}.pt"
    torch.save(create_model(source).state_dict(), path)
    return str(path)


@pytest.mark.parametrize("change,expect", [
    (["--eps", "0.1,0.3"], "the eps grid differs (stored [0.1, 0.2], now [0.1, 0.3])"),
    (["--n", "32"], "n (the number of samples) differs (stored 48, now 32)"),
    (["--seed", "1"], "the seed differs (stored 0, now 1)"),
    (["--attack", "pgd:steps=4"], "the attacks differ (stored ['fgsm'], now ['fgsm', 'pgd:steps=4'])"),
    (["--weights", "other"], "the weights of model 'digits-cnn' differ (sha256 stored "),
    (["--data", "rewritten"], "data changed since the stored run (samples 16..31 differ)"),
])
def test_resume_refuses_what_changed(tmp_path, capsys, change, expect):
    from robustaudit.data.digits import digits_split

    x, y = digits_split("test").load(range(48))
    data = tmp_path / "data.pt"
    torch.save({"x": x, "y": y}, data)

    def argv(weights: str) -> list[str]:
        return ["audit", "--model", "digits-cnn", "--weights", weights, "--attack", "fgsm", "--eps", "0.1,0.2",
                "--n", "48", "--batch-size", "16", "--device", "cpu", "--data", f"tensors:{data}",
                "--out", str(tmp_path / "run")]

    assert main(argv(_weights(tmp_path, "mine", "digits-cnn"))) == EXIT_OK
    stored = _numbers(tmp_path / "run")
    again = argv(_weights(tmp_path, "mine", "digits-cnn"))  # the same tensors saved again: the same file
    if change[0] == "--weights":
        again, change = argv(_weights(tmp_path, "other", "digits-cnn-pgdat")), []
    elif change[0] == "--data":
        x[20] = 1 - x[20]  # same file name and size, one sample of the second batch rewritten
        torch.save({"x": x, "y": y}, data)
        change = []
    capsys.readouterr()
    assert main([*again, *change, "--resume"]) == EXIT_USAGE
    line = _last_line(capsys)
    assert line.startswith(f"error: cannot resume {tmp_path / 'run'}: ") and expect in line, line
    assert _numbers(tmp_path / "run") == stored  # a refused resume changes nothing


# ------------------------------------------------------------------ Python API


def test_api_resume_checks_state_dict_of_a_python_model(tmp_path, digits_test):
    import robustaudit
    from robustaudit.core.errors import UserError
    from robustaudit.models.catalog import create_model

    net = create_model("digits-cnn")  # a plain nn.Module: hashed by its state_dict
    x, y = digits_test
    kw = {"attacks": ["fgsm"], "eps": [0.1], "n": 32, "batch_size": 16, "device": "cpu", "out": tmp_path / "run"}
    first = robustaudit.audit(net, (x, y), **kw)
    again = robustaudit.audit(net, (x, y), resume=True, **kw)
    assert again.provenance["resume"] == {"reused_batches": 4, "computed_batches": 0, "reused_stages": 2,
                                          "computed_stages": 0}  # the checks and the cost
    assert again.records.drop(columns="seconds").equals(first.records.drop(columns="seconds"))
    with torch.no_grad():
        next(net.parameters()).view(-1)[0] += 1e-3
    with pytest.raises(UserError, match=r"the weights of model '\w+' differ .*\(state_dict\)"):
        robustaudit.audit(net, (x, y), resume=True, **kw)
    with pytest.raises(UserError, match="needs the output directory"):
        robustaudit.audit(net, (x, y), attacks=["fgsm"], eps=[0.1], n=8, resume=True)
    with pytest.raises(UserError, match="exclude each other"):
        robustaudit.audit(net, (x, y), resume=True, overwrite=True, **kw)
