"""The default audit keeps its time promise (issue 17.1), checked as a ratio, not as seconds.

``robustaudit audit`` with no arguments must finish in under 60 s of audit time on a quiet 2-core
machine. CI machines differ in speed, so the test measures, in the same process and on one thread, a
bare forward+backward loop of the default standard CNN (a batch of 256 digits, the audit's batch size) and
the default audit, both in CPU seconds (``time.process_time``: another job on a shared machine slows the
wall clock, much less the CPU time), and bounds their ratio.

Measured on the shared 2-core development machine (load about 10, one thread): the audit took 38 CPU s
(a fresh detector fit included), one forward+backward batch 28 ms: a ratio of about 1,350. The default
before issue 17 took about 190 CPU s on that machine, a ratio near 6,800. The bound, 2,500, leaves
about 85% for machine differences (cache sizes, Python's per-step overhead next to the model's
arithmetic, noise in the loop's timing) and still fails long before the default grows back to its old
cost. The wall-clock promise itself (under 60 s on a quiet 2-core machine) is measured, not tested: see
the README.
"""

from __future__ import annotations

import time

import pytest
import torch

RATIO_BOUND = 2_500


def _bare_loop_seconds(repeats: int = 200) -> float:
    """CPU seconds of one forward+backward pass of ``digits-cnn`` on a batch of 256 digits (median of
    blocks of ``repeats / 10``)."""
    from robustaudit.data.digits import digits_split
    from robustaudit.models.catalog import create_model

    model = create_model("digits-cnn").eval()
    data = digits_split("test")
    x, y = data.load(list(range(256)))
    per_block = []
    for _ in range(10):
        t = time.process_time()
        for _ in range(repeats // 10):
            xg = x.clone().requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(model(xg), y)
            torch.autograd.grad(loss, xg)
        per_block.append((time.process_time() - t) / (repeats // 10))
    return sorted(per_block)[len(per_block) // 2]


@pytest.mark.slow
def test_default_audit_within_its_ratio_of_a_bare_loop(tmp_path, monkeypatch):
    from robustaudit.cli import main

    monkeypatch.setenv("ROBUSTAUDIT_CACHE_DIR", str(tmp_path / "cache"))  # a fresh user fits the detector too
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        unit = _bare_loop_seconds()
        t = time.process_time()
        rc = main(["audit", "--out", str(tmp_path / "out"), "--device", "cpu"])
        audit = time.process_time() - t
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    ratio = audit / unit
    assert ratio < RATIO_BOUND, f"default audit {audit:.1f} CPU s = {ratio:.0f} bare forward+backward batches"
