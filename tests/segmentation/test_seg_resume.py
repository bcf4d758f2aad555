"""Resumable segmentation audits: every batch is stored as it finishes, an interrupted run resumed with
``resume=True`` gives the uninterrupted run's numbers exactly (records, per-class IoU, the unbounded row,
panels, fits), and the store policy (changed data, unfinished ``out``) is classification's."""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from robustaudit.attacks.registry import from_spec
from robustaudit.cli import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, main
from robustaudit.core.errors import UserError
from robustaudit.data.segmentation import SegmentationTensorData
from robustaudit.evaluate.result import SegExample
from robustaudit.evaluate.runner import AttackEntry, ModelEntry
from robustaudit.evaluate.seg_execute import execute_segmentation
from robustaudit.evaluate.spec import ModelSpec, resolve_spec
from robustaudit.evaluate.store import STORE_FILE, SegBatch, Store
from robustaudit.evaluate.subject import Subject
from seg_helpers import K, tiny_segmenter

pytestmark = pytest.mark.usefixtures("one_thread")
ATTACKS = ("pgd:steps=2", "segpgd:steps=2", "dag:max_iter=2", "seg-uap:iterations=2,fit_n=8,batch_size=4")


def _data(net: nn.Module, seed: int = 2, n: int = 10) -> SegmentationTensorData:
    x = torch.rand(n, 1, 12, 12, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y = net(x).argmax(1)
    y[:, :2] = 255
    return SegmentationTensorData(x, y, name="small", num_classes=K)


class _Stop:
    """A progress bar that raises KeyboardInterrupt (Ctrl-C) at the ``after``-th finished batch (the batch
    is stored by then: the bar advances after the write)."""

    def __init__(self, after: int) -> None:
        self.left = after

    def start(self, description: str, total: int) -> None:
        pass

    def advance(self, amount: int) -> None:
        self.left -= 1
        if self.left == 0:
            raise KeyboardInterrupt


def _audit(out: Path, data, *, resume=False, overwrite=False, progress=None):
    net = tiny_segmenter()
    train = _data(net, seed=7, n=8)
    attacks = [AttackEntry(s, from_spec(s, task="segmentation")) for s in ATTACKS]
    spec = resolve_spec(data, models=(ModelSpec("python:net"),), attacks=ATTACKS, eps=[0.03, 0.1], norm="linf",
                        batch_size=4, device="cpu", seed=0, out=str(out), resume=resume, overwrite=overwrite,
                        cost=False, train_data=train)
    return execute_segmentation(spec, Subject([ModelEntry("net", net)], data, attacks), progress)


def _numbers(out: Path) -> tuple:
    doc = json.loads((out / "results.json").read_text())
    records = [{k: v for k, v in r.items() if k not in ("seconds", "fit_seconds")} for r in doc["records"]]
    seg = doc["segmentation"]
    unbounded = [{k: v for k, v in r.items() if k != "seconds"} for r in seg["unbounded"]]
    fits = [{k: v for k, v in f.items() if k != "seconds"} for f in doc["provenance"].get("fits", [])]
    xi = torch.load(out / "artifacts" / "net-seg-uap_iterations_2_fit_n_8_batch_size_4-eps0.1.pt")
    return json.dumps(records), json.dumps(seg["class_iou"]), json.dumps(unbounded), fits, xi.numpy().tobytes()


def test_store_round_trip(tmp_path):
    cms = torch.randint(0, 50, (3, K, K))
    pred = torch.randint(0, K, (3, 12, 12))
    ex = SegExample("net", "pgd", math.inf, np.random.rand(1, 12, 12).astype(np.float32),
                    np.random.rand(1, 12, 12).astype(np.float32), np.full((12, 12), 255),
                    pred[0].numpy(), pred[1].numpy())
    batch = SegBatch(cms=cms, data_sha256="abc", clean_pred=pred, l2=[0.1, 0.25, 1 / 3], linf=[0.03, 0.02, 0.01],
                     hits=7, total=9, seconds=1.5, forward_passes=12, backward_passes=6, examples=[(0.4, ex)])
    with Store(tmp_path / STORE_FILE) as store:
        store.write_seg_batch("net", "pgd", math.inf, [3, 4, 7], batch)
        assert store.count_batches() == 1
        assert store.seg_batch("net", "pgd", math.inf, [3, 4]) is None
        back = store.seg_batch("net", "pgd", math.inf, [3, 4, 7])
    assert torch.equal(back.cms, cms) and back.cms.dtype == torch.int64
    assert torch.equal(back.clean_pred, pred)
    assert back.l2 == [0.1, 0.25, 1 / 3] and back.linf == [0.03, 0.02, 0.01]
    assert (back.hits, back.total, back.seconds, back.forward_passes, back.backward_passes) == (7, 9, 1.5, 12, 6)
    drop, got = back.examples[0]
    assert drop == 0.4 and got.eps == math.inf
    assert np.array_equal(got.clean, ex.clean) and np.array_equal(got.label, ex.label)
    assert np.array_equal(got.adv_pred, ex.adv_pred) and got.adv_pred.dtype == np.int64


def test_interrupted_run_resumes_to_the_uninterrupted_numbers(tmp_path):
    net = tiny_segmenter()
    data = _data(net)
    whole = _audit(tmp_path / "whole", data)
    # 10 images in batches of 4: 3 batches per pass; clean + 2 attacks x 2 eps + dag + uap x 2 = 8 passes
    with pytest.raises(KeyboardInterrupt):
        _audit(tmp_path / "cut", data, progress=_Stop(after=11))
    with Store(tmp_path / "cut" / STORE_FILE) as store:
        assert store.count_batches() == 11
        assert not store.get_meta("finished")
    with pytest.raises(UserError, match="holds an unfinished run \\(11 batches done\\); pass --resume"):
        _audit(tmp_path / "cut", data)
    resumed = _audit(tmp_path / "cut", data, resume=True)
    assert resumed.provenance["resume"] == {"reused_batches": 11, "computed_batches": 24 - 11}
    assert _numbers(tmp_path / "cut") == _numbers(tmp_path / "whole")
    # the universal attack's cells carry its one-off fit, the stored fit's seconds on resume (issue 17)
    for result in (whole, resumed):
        fits = {(f["attack"], float(f["eps"])): f["seconds"] for f in result.provenance["fits"]}
        uap = result.records[result.records["attack"].str.startswith("seg-uap")]
        assert len(uap) == 2 and all(fits[(a, e)] > 0 for a, e in fits)
        assert [fits[(a, e)] for a, e in zip(uap["attack"], uap["eps"])] == list(uap["fit_seconds"])
        r = result.records
        assert (r.loc[~r["attack"].str.startswith("seg-uap") & (r["attack"] != "worst-case"), "fit_seconds"] == 0).all()
    assert len(resumed.seg_examples) == len(whole.seg_examples) == 8  # 2 panels per attack
    for a, b in zip(resumed.seg_examples, whole.seg_examples):
        assert (a.attack, a.eps) == (b.attack, b.eps) and np.array_equal(a.adversarial, b.adversarial)
    # resuming a finished run reuses every batch and fits nothing
    again = _audit(tmp_path / "cut", data, resume=True)
    assert again.provenance["resume"] == {"reused_batches": 24, "computed_batches": 0}
    assert _numbers(tmp_path / "cut") == _numbers(tmp_path / "whole")


def test_changed_data_is_refused_on_resume_and_overwrite_starts_over(tmp_path):
    net = tiny_segmenter()
    with pytest.raises(KeyboardInterrupt):
        _audit(tmp_path, _data(net), progress=_Stop(after=4))
    with pytest.raises(UserError, match="data changed since the stored run \\(samples 0..3 differ\\)"):
        _audit(tmp_path, _data(net, seed=3), resume=True)
    assert _audit(tmp_path, _data(net), overwrite=True).provenance.get("resume") is None


def test_cli_resume_of_a_classification_store_names_the_task(tmp_path, capsys):
    out = tmp_path / "out"
    with Store(out / STORE_FILE) as store:  # a classification run's fingerprint has no task key
        store.put_meta("fingerprint", {"store": 3, "n": 8})
    code = main(["audit", "--data", "digit-scenes", "--model", "unet-tiny", "--attack", "pgd:steps=1", "--n", "2",
                 "--eps", "0.01", "--out", str(out), "--resume"])
    assert code == EXIT_USAGE
    assert "cannot resume" in (err := capsys.readouterr().err)
    assert "the task differs (stored 'classification', now 'segmentation')" in err


def test_cli_sigterm_prints_the_resume_command_and_resume_equals_a_whole_run(tmp_path, capsys, monkeypatch):
    argv = ["audit", "--data", "digit-scenes", "--model", "unet-tiny", "--attack", "pgd:steps=2", "--eps",
            "0.01,0.02", "--n", "8", "--batch-size", "4", "--device", "cpu", "--out", str(tmp_path / "cut")]
    write, seen = Store.write_seg_batch, {"n": 0}

    def write_then_sigterm(self, *args, **kw):  # a CI cancellation right after the 4th batch is committed
        write(self, *args, **kw)
        seen["n"] += 1
        if seen["n"] == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    with monkeypatch.context() as m:
        m.setattr(Store, "write_seg_batch", write_then_sigterm)
        assert main(argv) == EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = [w for w in err.splitlines() if w.strip()][-1]
    assert line.startswith("interrupted: 4 finished batches are stored in")  # 2 clean + 2 attacked
    command = line.split("continue with: ", 1)[1]
    assert command == shlex.join(["robustaudit", *argv, "--resume"])
    assert main(shlex.split(command)[1:]) == EXIT_OK
    assert "resumed" in capsys.readouterr().err
    assert main([*argv[:-1], str(tmp_path / "whole")]) == EXIT_OK
    doc = json.loads((tmp_path / "cut" / "results.json").read_text())
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())
    assert doc["provenance"]["resume"] == {"reused_batches": 4, "computed_batches": 2}
    strip = (lambda d: [{k: v for k, v in r.items() if k not in ("seconds", "fit_seconds")} for r in d["records"]])
    assert strip(doc) == strip(whole) and len(strip(doc)) == 4  # pgd and worst-case at 2 eps
    assert doc["segmentation"]["class_iou"] == whole["segmentation"]["class_iou"]
