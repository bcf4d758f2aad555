"""Robustness gates as ordinary tests (run: ``python -m pytest -q`` in this directory).

Both tests pass for the PGD-trained CNN; ``ROBUSTAUDIT_EXAMPLE_MODEL=digits-cnn python -m pytest -q``
audits the standard CNN instead, and both fail with the rows below the threshold.
"""

from __future__ import annotations

import pytest


@pytest.mark.robustness(attack="pgd", eps=0.1, min_accuracy=0.8)
def test_classifier_is_robust(robustness, my_model, my_data):
    robustness.audit(my_model, my_data).assert_robust()


@pytest.mark.robustness(attacks=["fgsm", "pgd"], eps=[0.1, 0.2])
def test_robust_accuracy_curve(robustness, my_model, my_data):
    result = robustness.audit(my_model, my_data)
    result.assert_robust(0.8, eps=0.1)
    # the worst case over both attacks, per sample, at the radius the model was trained for
    result.assert_robust(0.5, attack="worst-case", eps=0.2)
