"""The plugin under pytest-xdist, and its promise to stay light (subprocesses, so each costs seconds)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest_plugins = ["pytester"]

HEAVY = ("torch", "numpy", "pandas")


def test_loading_the_plugin_imports_no_torch():
    """``python -X importtime`` logs every module the import pulls in: no torch, numpy or pandas."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import robustaudit.pytest_plugin"],
                          capture_output=True, text=True, check=True)
    modules = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert "robustaudit.pytest_plugin" in modules
    heavy = [m for m in modules if m.split(".")[0] in HEAVY]
    assert heavy == [], f"the plugin module imported {heavy[:5]}"


def test_a_session_without_the_fixture_imports_no_torch(pytester):
    """A whole pytest run whose tests do not use the fixture (markers, options and all) stays torch-free."""
    pytester.makepyfile(test_plain='''
        import sys

        import pytest

        @pytest.mark.robustness(attack="pgd", eps=0.1)
        def test_marker_only():
            assert not [m for m in sys.modules if m.split(".")[0] in ("torch", "pandas")]
    ''')
    result = pytester.runpytest_subprocess("--robust-profile", "smoke", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


XDIST_CONFTEST = '''
import json
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def my_model():
    import torch

    torch.set_num_threads(1)  # two workers on two cores
    from robustaudit.models.catalog import create_model

    return create_model("digits-cnn-pgdat")


@pytest.fixture(scope="session")
def my_data():
    from robustaudit.data.digits import digits_split

    return digits_split("test").load(range(32))


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    """On each worker, after the plugin's own sessionfinish: did this worker write the session files?"""
    config = session.config
    if hasattr(config, "workerinput"):
        root = Path(config.rootpath)
        seen = {"save": (root / "saved.json").exists(), "junit": (root / "junit.xml").exists()}
        (root / f"worker-{config.workerinput['workerid']}.json").write_text(json.dumps(seen))
'''

XDIST_TESTS = '''
import pytest


@pytest.mark.robustness(attack="pgd", eps=0.1, min_accuracy=0.5)
def test_one(robustness, my_model, my_data):
    robustness.audit(my_model, my_data).assert_robust()


@pytest.mark.robustness(attack="fgsm", eps=0.1, min_accuracy=0.5)
def test_two(robustness, my_model, my_data):
    robustness.audit(my_model, my_data).assert_robust()
'''


def test_xdist_summary_and_files_from_the_controller_only(pytester):
    pytest.importorskip("xdist")
    pytester.makeconftest(XDIST_CONFTEST)
    pytester.makepyfile(test_dist=XDIST_TESTS)
    result = pytester.runpytest_subprocess(
        "-n", "2", "--robust-profile", "smoke", "--robust-device", "cpu", "--robust-save", "saved.json",
        "--junitxml", "junit.xml", "-p", "no:cacheprovider",
    )
    result.assert_outcomes(passed=2)
    # the controller printed both workers' figures
    result.stdout.fnmatch_lines(["*= robustness =*"])
    result.stdout.fnmatch_lines(["test_dist.py::test_one * DigitsCNN * pgd * 0.1 * 32 * min 50.0% point: pass"])
    result.stdout.fnmatch_lines(["test_dist.py::test_two * DigitsCNN * fgsm * 0.1 * 32 * min 50.0% point: pass"])
    # no worker had written a file when it finished; the controller wrote them with both tests in
    workers = sorted(pytester.path.glob("worker-*.json"))
    assert len(workers) == 2
    assert all(json.loads(w.read_text()) == {"save": False, "junit": False} for w in workers)
    saved = json.loads((pytester.path / "saved.json").read_text())
    assert sorted(saved["tests"]) == ["test_dist.py::test_one", "test_dist.py::test_two"]
    assert all(t["outcome"] == "passed" and t["audits"][0]["robust_ids"] for t in saved["tests"].values())
    assert "robust_accuracy[DigitsCNN/fgsm/0.1]" in (pytester.path / "junit.xml").read_text()
