"""Issue 16 item 4: on the default digits models, ``--checks full`` costs at most twice the ``basic`` audit.

Counted in model passes, not seconds, so the bound is deterministic: each default model is wrapped in a
:class:`~robustaudit.evaluate.passes.PassCounter`, which sees every sample the audit pushes through it (the
clean pass, the attacks, the checks' own attacks and probes, the adaptive columns, the cost and
transferability stages), and the default audit (all 360 test digits, the default attacks and eps; no
detector, which would add the same cost to both sides) runs once per level.

Measured (session 6, the shared 2-core machine, one thread): basic 442,288 passes, full 724,323 (1.64x;
CPU 71 s and 117 s, 1.64x, a loaded machine). The full checks cost a fixed amount (a subsample of 128, Square
with 1,000 queries on it), so the ratio holds at the default n and not on a small one.
"""

from __future__ import annotations

import warnings

import pytest
import torch


def _passes(level: str) -> int:
    from robustaudit import audit
    from robustaudit.evaluate.options import DEFAULT_MODELS
    from robustaudit.evaluate.passes import PassCounter
    from robustaudit.models.catalog import create_model

    counters = {m: PassCounter(create_model(m)) for m in DEFAULT_MODELS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        audit(dict(counters), "digits", checks=level, device="cpu")
    return sum(c.forward_passes + c.backward_passes for c in counters.values())


@pytest.mark.slow
def test_full_checks_cost_at_most_twice_the_basic_audit_on_the_default_models() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        basic, full = _passes("basic"), _passes("full")
    finally:
        torch.set_num_threads(threads)
    assert basic < full <= 2 * basic, (basic, full)
