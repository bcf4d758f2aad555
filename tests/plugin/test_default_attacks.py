"""Issue 16.2: every plugin profile's default attacks include the scale-invariant margin-loss PGD, at the
profile's budget, with the CLI's label under the default (ci) profile."""

from __future__ import annotations

import pytest

from robustaudit.evaluate.options import DEFAULT_ATTACKS
from robustaudit.plugin.fixture import attack_list
from robustaudit.plugin.settings import PROFILES, SessionOptions, resolve


def test_the_default_attacks_include_a_scale_invariant_loss():
    assert "pgd:loss=margin" in DEFAULT_ATTACKS and {"fgsm", "pgd"} <= set(DEFAULT_ATTACKS)


@pytest.mark.parametrize("profile, margin", [("smoke", "pgd:loss=margin,steps=10"), ("ci", "pgd:loss=margin"),
                                             ("full", "pgd:loss=margin,steps=100,restarts=5")])
def test_every_profile_runs_margin_pgd_at_its_budget(profile, margin):
    attacks = attack_list(resolve(SessionOptions(profile=profile), {}, {}))
    assert attacks[2] == margin
    assert attacks[1].settings()["steps"] == PROFILES[profile].steps  # bare pgd: the profile's steps
    # a user's own inline spec stays as given
    given = attack_list(resolve(SessionOptions(profile=profile), {"attacks": ("pgd:loss=margin",)}, {}))
    assert given == ["pgd:loss=margin"]
