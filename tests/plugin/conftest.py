"""Shared pieces of the pytest-plugin tests.

``pytester`` is enabled by ``pytest_plugins = ["pytester"]`` at the top of each test module that needs
it, not here: pytest refuses ``pytest_plugins`` in a conftest below the rootdir when the suite is run
from the repository root (``python -m pytest``), while a test module may declare it.
"""

from __future__ import annotations

import pytest

#: The inner projects' conftest: the catalog's digits CNN (or the model named by RA_TEST_MODEL; with
#: RA_TEST_WRAP set, inside ``nn.Sequential(nn.Identity(), model)``, as adding a normalization layer does)
#: and the first 64 digits test images, as an (x, y) pair of tensors.
INNER_CONFTEST = '''
import os

import pytest


@pytest.fixture(scope="session")
def my_model():
    import torch.nn as nn

    from robustaudit.models.catalog import create_model

    model = create_model(os.environ.get("RA_TEST_MODEL", "digits-cnn-pgdat"))
    return nn.Sequential(nn.Identity(), model).eval() if os.environ.get("RA_TEST_WRAP") else model


@pytest.fixture(scope="session")
def my_data():
    from robustaudit.data.digits import digits_split

    return digits_split("test").load(range(64))
'''

@pytest.fixture(scope="session")
def warm_engine(tmp_path_factory):
    """Import, in this process, everything an inner run imports lazily, by running one tiny audit and
    rendering its reports.

    pytester's in-process runs restore ``sys.modules`` afterwards: a module first imported inside an
    inner run is dropped and imported again by the next run, and C extensions (numpy.fft, for one)
    refuse a second load in the same process.
    """
    from robustaudit.data.digits import digits_split
    from robustaudit.evaluate.api import audit
    from robustaudit.models.catalog import create_model
    from robustaudit.plugin import compare, fixture, session  # noqa: F401 - imported for their side effect
    from robustaudit.reports import write_reports

    try:  # hypothesis's pytest plugin imports it at each terminal summary: once here, not per inner run
        import hypothesis.internal.observability  # noqa: F401
    except ImportError:
        pass
    x, y = digits_split("test").load(range(8))
    result = audit(create_model("digits-cnn"), (x, y), attacks=["fgsm", "pgd:steps=1"], eps=[0.1], device="cpu")
    write_reports(result, tmp_path_factory.mktemp("warm"))


@pytest.fixture
def project(pytester, warm_engine):
    """A pytester directory with the inner conftest written.

    Inner runs use one torch thread: these audits are tiny, and on a busy 2-core machine two threads
    that wait for each other made one audit 0.25 s or 10 s depending on the neighbours' load.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pytester.makeconftest(INNER_CONFTEST)
    yield pytester
    torch.set_num_threads(threads)
