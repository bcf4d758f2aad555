"""docs/extending.md's example, built from the doc itself: registration alone puts it under the contract.

The code block is read from the doc and executed, so the doc cannot drift from what works; the checks
are the contract test's own functions, called with the registered name.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import test_attack_contract as contract  # the sibling module (rootdir-less test layout: its folder is on sys.path)

from robustaudit.attacks import registry
from robustaudit.core.threat import ThreatModel

DOC = Path(__file__).resolve().parents[2] / "docs" / "extending.md"
NAME = "halving-pgd"


@pytest.fixture
def example(monkeypatch):
    """Execute the doc's code block; its ``register`` call goes into a copy of the user table."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1, "docs/extending.md should hold exactly one python example"
    monkeypatch.setattr(registry, "_USER", dict(registry._USER))
    namespace: dict = {"__name__": "extending_example"}
    exec(compile(blocks[0], str(DOC), "exec"), namespace)  # noqa: S102 - our own doc
    return namespace["HalvingPGD"]


def test_the_example_is_registered_and_listed(example):
    assert NAME in registry.names()
    assert registry.attack_class(NAME) is example
    assert registry.get(NAME, steps=10).steps == 10


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_the_example_keeps_the_fixed_eps_contract(example, norm, digits_cnn, digits_test):
    contract.test_result_in_ball_and_bounds(NAME, norm, digits_cnn, digits_test)


def test_the_example_passes_every_contract_check(example, digits_cnn, digits_test):
    contract.test_eps_zero_returns_input(NAME, digits_cnn, digits_test)
    contract.test_same_seed_same_result(NAME, digits_cnn, digits_test)
    contract.test_accuracy_drops_on_standard_model(NAME, digits_cnn, digits_test)
    contract.test_model_state_untouched(NAME, digits_test)
    contract.test_independent_of_batch_size(NAME, digits_cnn, digits_test)
    contract.test_never_drops_an_adversarial_iterate(NAME, digits_cnn, digits_test)


def test_the_example_breaks_digits_cnn(example, digits_cnn, digits_test):
    x, y = digits_test
    adv = registry.get(NAME)(digits_cnn, x, y, ThreatModel("linf", 0.2), seed=1)
    with torch.no_grad():
        clean = (digits_cnn(x).argmax(1) == y).float().mean().item()
        robust = (digits_cnn(adv).argmax(1) == y).float().mean().item()
    assert robust < clean
    assert torch.equal(adv, registry.get(NAME)(digits_cnn, x, y, ThreatModel("linf", 0.2), seed=1))
    assert torch.equal(registry.get(NAME)(digits_cnn, x, y, ThreatModel("linf", 0.0)), x)
