"""Context managers that guard a model's state while it is attacked."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode and restore each one's own ``training`` flag on exit.

    Restoring per submodule (not ``model.train(was_training)``) keeps a caller's mixed state, e.g. a
    frozen batch-norm inside a model in training mode.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


@contextmanager
def on_device(model: nn.Module, device: torch.device | str) -> Iterator[nn.Module]:
    """Move ``model`` to ``device`` and back to where its parameters were on exit (a caller's model is
    left where the caller had it, even when the audit fails)."""
    home = next((p.device for p in model.parameters()), None)
    model.to(device)
    try:
        yield model
    finally:
        if home is not None:
            model.to(home)

