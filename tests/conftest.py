"""Shared fixtures: the catalog's digits models and a slice of the digits test split."""

from __future__ import annotations

import os
import socket

import pytest
import torch

# under xdist each worker gets one thread: two workers with two threads each on a 2-core machine
# oversubscribe the cores and run several times slower
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


@pytest.fixture(scope="session")
def digits_test():
    """The first 96 samples of the digits test split: x (96, 1, 8, 8) in [0, 1], y (96,)."""
    from robustaudit.data.digits import digits_split

    data = digits_split("test")
    return data.load(range(96))


@pytest.fixture(scope="session")
def digits_cnn():
    from robustaudit.models.catalog import create_model

    return create_model("digits-cnn")


@pytest.fixture(scope="session")
def digits_cnn_pgdat():
    from robustaudit.models.catalog import create_model

    return create_model("digits-cnn-pgdat")


@pytest.fixture
def one_thread():
    """One torch thread for tests that compare numbers across runs (they are compared at one thread
    count; subprocesses get OMP_NUM_THREADS=1), and because two threads on a loaded 2-core machine
    spin-wait tens of times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def offline(monkeypatch):
    """Every socket connection fails the test loudly; returns the refusing function, for a module to put in
    place of its library's own download functions too."""
    def refuse(*args, **kwargs):
        raise AssertionError("a test touched the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return refuse
