"""One attack call of the runner: a batch attacked in chunks that halve on out of memory, the model's and
autograd's failures turned into the runner's errors, and universal attacks fitted once, lazily."""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from robustaudit.attacks.base import Attack, UniversalAttack
from robustaudit.core.errors import UserError
from robustaudit.core.threat import ThreatModel
from robustaudit.evaluate.entries import AttackEntry
from robustaudit.evaluate.fastpath import is_out_of_memory, release_memory
from robustaudit.evaluate.runstate import ModelRun
from robustaudit.models.storage import device_failure
from robustaudit.models.wrappers import raised_by_model


class NoInputGradients(Exception):
    """A gradient attack met a model whose output has no gradient with respect to its input."""



#: What autograd says when the input is not part of the output's graph (numpy or ``.detach()`` in forward).
_NO_GRAD = re.compile(r"does not require grad|not have been used in the graph|numpy\(\) on Tensor that requires grad"
                      r"|does not have a grad_fn")


def attack_in_chunks(ctx: ModelRun, a: AttackEntry, attack: Attack, x: torch.Tensor, y: torch.Tensor,
                     threat: ThreatModel, batch: list[int],
                     targets: torch.Tensor | None = None) -> tuple[torch.Tensor, int, int]:
    """``attack`` on one batch ``x (B, C, H, W)``, ``y (B,)`` or ``(B, H, W)`` (``targets`` alike, for a
    targeted attack); returns ``(adv (B, C, H, W), forward, backward)``.

    The batch goes to the attack whole unless an earlier batch of this model and attack ran out of
    memory: then in chunks of the size that last fit. Out of memory halves the chunk and retries it;
    a sample's result does not depend on its chunk (keyed randomness), and neither do the passes
    counted (a failed attempt's passes are discarded). The stored batch stays the runner's batch, so
    resuming finds it by the same ids.
    """
    key = (ctx.name, a.name)
    n = len(batch)
    parts: list[torch.Tensor] = []
    forward = backward = 0
    start = 0
    ctx.counter.take()  # from zero: what an interrupted batch counted is not this one's
    while start < n:
        size = min(ctx.state.chunks.get(key, n), n - start)
        part = slice(start, start + size)
        try:
            parts.append(_attack_call(ctx, a, attack, x[part], y[part], threat, batch[part],
                                      None if targets is None else targets[part]))
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            ctx.counter.take()  # the failed attempt's passes are not this batch's cost
            first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
            if size == 1:
                raise UserError(f"out of memory attacking a single sample with '{a.name}' on model '{ctx.name}' "
                                f"({first}); use a device with more memory") from None
            release_memory(ctx.dev)
            half = (size + 1) // 2
            ctx.state.chunks[key] = half
            ctx.state.halvings.append({"model": ctx.name, "attack": a.name, "eps": float(threat.eps), "from": size,
                                       "to": half})
            warnings.warn(f"out of memory: attack '{a.name}' on model '{ctx.name}' continues in batches of {half} "
                          f"(was {size}); results do not change", stacklevel=2)
            continue
        f, b = ctx.counter.take()
        forward, backward = forward + f, backward + b
        start += size
    return (parts[0] if len(parts) == 1 else torch.cat(parts)), forward, backward


def _attack_call(ctx: ModelRun, a: AttackEntry, attack: Attack, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                 batch: list[int], targets: torch.Tensor | None) -> torch.Tensor:
    """One attack call; the model's and autograd's failures become the runner's errors (an allocator out of
    memory propagates as it is: the caller halves the chunk)."""
    try:
        # the attack gets the counting wrapper; the runner scores with the bare model (not counted)
        return attack(ctx.counter, x, y, threat, targets=targets, ids=torch.tensor(batch), seed=ctx.seed, task=ctx.task)
    except UserError:
        raise
    except Exception as exc:
        if is_out_of_memory(exc):
            raise
        if isinstance(exc, RuntimeError) and _NO_GRAD.search(str(exc)):
            raise NoInputGradients(str(exc).strip().splitlines()[0]) from None
        # the user's model failed on the attack's input, not the attack
        if (err := model_error(exc, ctx.name, ctx.model, f"during attack '{a.name}'")) is not None:
            raise err from None
        raise


def model_error(exc: BaseException, name: str, model: nn.Module, doing: str) -> UserError | None:
    """One line naming the model when ``exc`` passed through the ``forward`` of the user's ``model``
    (it failed on an attack's input), else ``None``: a bug in an attack stays an internal error."""
    if not raised_by_model(exc, model):
        return None
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return device_failure(exc, name) or UserError(f"model '{name}' raised {type(exc).__name__} in forward {doing}: {first}")


@contextmanager
def blame_model(name: str, model: nn.Module, doing: str) -> Iterator[None]:
    """Turn the user's model's failures inside the block into :func:`model_error`'s one line."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        if (err := model_error(exc, name, model, doing)) is not None:
            raise err from None
        raise


def fitted_attack(ctx: ModelRun, a: AttackEntry, threat: ThreatModel) -> Attack:
    """The universal attack ``a`` fitted against this model at ``threat`` on the training data (once; a
    resumed run reads a stored fit back from its artifact instead of fitting again)."""
    key = (ctx.name, a.name, threat.eps)
    fitted = ctx.state.artifacts.get(key)
    if fitted is None:
        universal = a.attack
        assert isinstance(universal, UniversalAttack) and ctx.state.train_data is not None  # run() checked
        t0 = time.perf_counter()
        ctx.counter.take()
        with blame_model(ctx.name, ctx.model, f"while fitting '{a.name}'"):
            fitted = universal.fit(ctx.counter, ctx.state.train_data, threat, seed=ctx.seed, task=ctx.task,
                                   device=ctx.dev, progress=ctx.bar)
        forward, backward = ctx.counter.take()
        fit = {"model": ctx.name, "attack": a.name, "eps": threat.eps, "seconds": round(time.perf_counter() - t0, 3),
               "forward_passes": forward, "backward_passes": backward}
        ctx.state.artifacts.put(key, fitted, fit)
        ctx.scoring.save_fit(ctx, a, threat.eps, fit, fitted)  # the cell's progress resumes: the fit nested in it
    return fitted
