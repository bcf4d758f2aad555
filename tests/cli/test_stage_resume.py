"""A resumed audit recomputes nothing that was stored (issue 15, stages): no fit of a universal attack, no
sanity-check evaluation, no detector fit or evaluation, no cost measurement, no learned, patch or physical
section; and its results.json equals the uninterrupted run's.

Each test runs an audit to the end, copies its ``--out`` with the store's ``finished`` flag cleared (as a run
killed after its last stage was stored leaves it), then resumes the copy with every costly function counted.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

import robustaudit
from robustaudit.evaluate.store import STORE_FILE, Store

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "golden"))
import scenarios  # noqa: E402  (tests/golden is not a package)

#: ``module:attribute`` of every function a resumed run must not call when everything is stored.
COSTLY = [
    "robustaudit.checks:run_checks",
    "robustaudit.attacks.patch:AdversarialPatch.fit",
    "robustaudit.attacks.learned_fit:LearnedAttack.fit",
    "robustaudit.evaluate.detection:fit_detector",
    "robustaudit.evaluate.detection:evaluate_detection",
    "robustaudit.evaluate.execute:model_costs",
    "robustaudit.evaluate.execute:MemoryProbe",
    "robustaudit.evaluate.learned:learned_report",
    "robustaudit.evaluate.physical:evaluate_patches",
    "robustaudit.evaluate.physical:evaluate_physical",
]


def _count_calls(monkeypatch: pytest.MonkeyPatch) -> Counter:
    import importlib

    calls: Counter = Counter()
    for target in COSTLY:
        module, _, path = target.partition(":")
        owner = importlib.import_module(module)
        *outer, name = path.split(".")
        for part in outer:
            owner = getattr(owner, part)
        original = getattr(owner, name)

        def counted(*args, _original=original, _target=target, **kwargs):
            calls[_target] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)
    return calls


def _unfinished_copy(out: Path, to: Path) -> Path:
    shutil.copytree(out, to)
    with Store(to / STORE_FILE) as store:
        store.put_meta("finished", False)
    (to / "results.json").unlink()
    return to


def _audit_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: str, data: str, **options) -> tuple:
    """The uninterrupted run's results.json, the resumed copy's, the resumed result and the counted calls."""
    first = tmp_path / "run"
    robustaudit.audit(model, data, out=first, **options)
    copy = _unfinished_copy(first, tmp_path / "copy")
    calls = _count_calls(monkeypatch)
    resumed = robustaudit.audit(model, data, out=copy, resume=True, **options)
    docs = [scenarios.normalize(json.loads((d / "results.json").read_text())) for d in (first, copy)]
    return *docs, resumed, calls


def _same_but_resume(a: dict, b: dict) -> list[str]:
    return [line for line in scenarios.compare(a, b) if not line.startswith("/provenance/resume:")]


def test_resume_rechecks_nothing_refits_no_detector_and_measures_nothing(tmp_path, monkeypatch):
    options = dict(attacks=["fgsm"], eps=[0.1], n=8, batch_size=8, checks="basic", cost=True, defense="squeeze",
                   physical=True, device="cpu")
    first, again, resumed, calls = _audit_twice(tmp_path, monkeypatch, "digits-cnn", "digits", **options)
    assert dict(calls) == {}  # nothing stored was computed again
    counts = resumed.provenance["resume"]
    assert (counts["computed_batches"], counts["computed_stages"], counts["reused_stages"]) == (0, 0, 4)
    assert _same_but_resume(first, again) == []
    # the sections are there, with numbers, in both runs
    prov = again["provenance"]
    assert prov["detection"]["detectors"] and prov["physical"]["rows"] and prov["models"][0]["cost"]
    assert any(r["model"] == "digits-cnn+squeeze" for r in again["records"])
    assert [c["id"] for c in again["checks"]] == [c["id"] for c in first["checks"]] != []


def test_resume_refits_no_generator_and_needs_its_artifact(tmp_path, monkeypatch):
    """The generator is fitted once; the resumed run has the same fits and learned block without fitting.
    Without its artifact (and with a section still to compute) the resume stops in one line: fitting it
    again could give another generator than the one the stored batches came from."""
    from robustaudit.core.errors import UserError

    options = dict(attacks=["atn:epochs=1,samples=32,width=8"], eps=[0.1], n=8, batch_size=8, checks="off",
                   cost=False, device="cpu")
    first, again, resumed, calls = _audit_twice(tmp_path, monkeypatch, "digits-cnn", "digits", **options)
    assert dict(calls) == {}
    assert resumed.provenance["resume"]["computed_batches"] == 0
    assert _same_but_resume(first, again) == []
    assert [(f["attack"], f["eps"]) for f in again["provenance"]["fits"]] == [("atn:epochs=1,samples=32,width=8", 0.1)]
    assert again["provenance"]["learned"]["generators"][0]["success"]["n"] > 0

    lost = _unfinished_copy(tmp_path / "run", tmp_path / "lost")
    with Store(lost / STORE_FILE) as store:  # the learned section must be computed again: it needs the object
        store.query("DELETE FROM stages WHERE name = 'learned'")
        store._db.commit()
    for f in (lost / "artifacts").iterdir():
        f.unlink()
    with pytest.raises(UserError, match=r"cannot resume .*fitted attack artifacts/.*--overwrite"):
        robustaudit.audit("digits-cnn", "digits", out=lost, resume=True, **options)


@pytest.mark.slow
def test_resume_refits_no_patch(tmp_path, monkeypatch):
    options = dict(attacks=["patch:target=3,steps=2,batch_size=8"], norm="patch", eps=[0.1, 0.2], n=16,
                   batch_size=8, checks="basic", cost=False, device="cpu")
    first, again, resumed, calls = _audit_twice(tmp_path, monkeypatch, "digits32-cnn", "digits32", **options)
    assert dict(calls) == {}
    assert resumed.provenance["resume"]["computed_batches"] == 0
    assert _same_but_resume(first, again) == []
    assert [f["eps"] for f in again["provenance"]["fits"]] == [0.1, 0.2]
    assert len(again["provenance"]["patch"]["rows"]) == 2


def test_stage_codecs_round_trip_exactly():
    from robustaudit.checks.probes import Probe
    from robustaudit.checks.verdict import Verdict
    from robustaudit.evaluate.stages import decode_checks, decode_detection, encode_checks, encode_detection

    frame = pd.DataFrame({"model": ["m+squeeze"], "eps": [0.1], "n": [16], "rate": [float("nan")],
                          "ok": [True]})
    robust = {("m+squeeze", "fgsm", 0.1): [3, 5]}
    doc = json.loads(json.dumps(encode_detection((frame, robust, {"fpr": 0.05}))))
    back, robust_back, block = decode_detection(doc)
    pd.testing.assert_frame_equal(back, frame)
    assert robust_back == robust and block == {"fpr": 0.05}
    v = [Verdict("logits-output", "m", "pass", "ok", {"k": 1}), Verdict("gradients", "m", "fail", "dead", {})]
    probes = {"m": Probe("m", dead_gradients=True, verdicts=[v[1]])}
    verdicts, probes_back = decode_checks(json.loads(json.dumps(encode_checks((v, probes)))))
    assert verdicts == v and probes_back == probes
