"""The six golden audits of issue 15 (tests/golden/scenarios.py): each run's results.json, without
times, versions and the machine, equals the one recorded before the pipeline redesign, per sample
(robust ids, minimal norms, example images, verdicts, detection and patch blocks)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
sys.path.insert(0, str(GOLDEN))
import scenarios  # noqa: E402  (tests/golden is not a package)

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", list(scenarios.SCENARIOS))
def test_audit_equals_its_golden(name, tmp_path):
    golden = json.loads(scenarios.golden_path(name).read_text())
    assert scenarios.compare(golden, scenarios.run(name, tmp_path / "out")) == []


def test_the_comparison_sees_a_changed_sample():
    golden = json.loads(scenarios.golden_path("d_checks_full").read_text())
    changed = json.loads(json.dumps(golden))
    changed["robust_ids"][0]["ids"] = changed["robust_ids"][0]["ids"][1:] + [10_000]
    lines = scenarios.diff(golden, changed)
    assert lines and all(line.startswith("/robust_ids[0]/ids[") for line in lines)
    assert lines[-1].endswith("!= 10000")


#: What a resumed run adds to results.json by design: its batch and stage counts, and the flag in its config.
#: Nothing else may differ: fitted attacks are saved in OUT/artifacts as they are fitted and read back, and
#: the stages after the matrix are stored, so a resumed patch / ATN run has the same ``fits``, ``learned``
#: and ``patch`` blocks as the uninterrupted one.
_RESUME_KEYS = ("/provenance/resume:",)


@pytest.mark.parametrize("name", [n for n in scenarios.SCENARIOS if n != "f_torchrun"])
def test_a_killed_and_resumed_audit_equals_its_golden(name, tmp_path):
    golden = json.loads(scenarios.golden_path(name).read_text())
    resumed, stderr = scenarios.kill_then_resume(name, tmp_path / "out")
    assert "stored batches reused" in stderr
    assert resumed["provenance"]["resume"]["reused_batches"] >= 1
    lines = [line for line in scenarios.compare(golden, resumed) if not line.startswith(_RESUME_KEYS)]
    assert lines == []


def test_the_cpu_allowance_is_one_detector_sample_and_evidence_only():
    golden = json.loads(scenarios.golden_path("a_default").read_text())
    row = next(i for i, r in enumerate(golden["records"]) if "+" in r["model"])
    plain = next(i for i, r in enumerate(golden["records"]) if "+" not in r["model"])
    one, two, undefended = (json.loads(json.dumps(golden)) for _ in range(3))
    one["records"][row]["n_robust"] += 1
    two["records"][row]["n_robust"] += 2
    undefended["records"][plain]["n_robust"] += 1
    assert scenarios.compare(golden, one) == []
    assert [line.split(":")[0] for line in scenarios.compare(golden, two)] == [f"/records[{row}]/n_robust"]
    assert [line.split(":")[0] for line in scenarios.compare(golden, undefended)] == [f"/records[{plain}]/n_robust"]
    check = next(i for i, c in enumerate(golden["checks"]) if c["id"] == "finite-differences")
    moved = json.loads(json.dumps(golden))
    moved["checks"][check]["evidence"]["median_error"] *= 1.05
    moved["checks"][check]["status"] = "warn"
    assert [line.split(":")[0] for line in scenarios.compare(golden, moved)] == [f"/checks[{check}]/status"]
