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
    assert scenarios.diff(golden, scenarios.run(name, tmp_path / "out")) == []


def test_the_comparison_sees_a_changed_sample():
    golden = json.loads(scenarios.golden_path("d_checks_full").read_text())
    changed = json.loads(json.dumps(golden))
    changed["robust_ids"][0]["ids"] = changed["robust_ids"][0]["ids"][1:] + [10_000]
    lines = scenarios.diff(golden, changed)
    assert lines and all(line.startswith("/robust_ids[0]/ids[") for line in lines)
    assert lines[-1].endswith("!= 10000")
