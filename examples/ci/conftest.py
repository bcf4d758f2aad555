"""Fixtures of the example: the model under test and the data it is audited on.

Swap these for your own: ``my_model`` may be any ``nn.Module`` mapping images in [0, 1] to logits, and
``my_data`` anything ``robustaudit.audit`` accepts (an ``(x, y)`` pair of tensors, a ``Dataset`` or a
``DataLoader``). The example audits the PGD-trained digits CNN that ships with robustaudit;
``ROBUSTAUDIT_EXAMPLE_MODEL=digits-cnn`` swaps in its standard-trained twin, which is not robust, to
see the gates fail.
"""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def my_model():
    from robustaudit.models.catalog import create_model

    return create_model(os.environ.get("ROBUSTAUDIT_EXAMPLE_MODEL", "digits-cnn-pgdat"))


@pytest.fixture(scope="session")
def my_data():
    """The digits test split (359 images, 1×8×8) as a DataLoader; the profile picks how many are audited."""
    from torch.utils.data import DataLoader, TensorDataset

    from robustaudit.data.digits import digits_split

    test = digits_split("test")
    x, y = test.load(range(len(test)))
    return DataLoader(TensorDataset(x, y), batch_size=128)
