"""Adaptive-attack wrappers (Athalye et al. 2018, "Obfuscated Gradients Give a False Sense of Security").

A defense that randomizes its forward pass or puts a non-differentiable step in front of the
classifier breaks plain gradient attacks without being robust. These wrappers change the model the
wrapped attack *sees*, not the attack:

* :class:`EOT` — Expectation over Transformation: the attack sees the mean of ``k`` forward passes,
  so its gradients average over the model's randomness.
* :class:`BPDA` — Backward Pass Differentiable Approximation: the forward pass runs the real
  preprocessing, the backward pass differentiates a substitute (the identity by default).

Spec syntax (CLI ``--attack`` and :func:`robustaudit.attacks.registry.from_spec`): the wrapped attack
goes in parentheses after the wrapper and its settings, and wrappers nest::

    eot:k=20(pgd:steps=50)
    bpda(pgd)
    eot:k=10(bpda(apgd))

The wrapper reports the wrapped attack's ``kind`` and ``norms``, so the runner treats
``eot(cw)`` as the minimal-norm attack it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
import torch.nn as nn

from robustaudit.attacks.base import Attack
from robustaudit.attacks.settings import MAX_EOT, Int, Setting, Settings
from robustaudit.core.errors import UserError

#: What a wrapper supports is what the wrapped attack supports; the class lists every norm.
_ANY_NORM = ("linf", "l2", "l1", "l0")


class _Wrapper(Attack):
    """Shared plumbing: an instance takes the wrapped attack's kind, norms and randomness."""

    norms: ClassVar[tuple[str, ...]] = _ANY_NORM

    def _adopt(self, wrapper: str, attack: object) -> None:
        if not isinstance(attack, Attack):
            raise UserError(f"{wrapper} wraps an attack, got {type(attack).__name__}; e.g. {wrapper}(pgd)")
        self.attack = attack
        # instance attributes shadow the ClassVars: what this object promises is what it wraps
        self.kind = attack.kind  # type: ignore[misc]
        self.norms = attack.norms  # type: ignore[misc]
        self.randomized = attack.randomized  # type: ignore[misc]

    def settings(self) -> dict[str, Any]:  # noqa: D102 - the wrapped attack first, then the declared settings
        return {"attack": self.attack, **super().settings()}


# ---------------------------------------------------------------------------------------------- EOT
class Expectation(nn.Module):
    """The model averaged over its own randomness: ``mean_k model(x)`` over ``k`` forward passes.

    ``(N, C, H, W) -> (N, K)`` logits. The passes run one after the other rather than as one batch of
    ``k * N``: a defense that draws one transformation per call (a random resize of the whole batch)
    would otherwise apply the same draw to all ``k`` copies.
    """

    def __init__(self, model: nn.Module, k: int) -> None:
        super().__init__()
        self.model = model
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = self.model(x)
        for _ in range(self.k - 1):
            total = total + self.model(x)
        return total / self.k


class EOT(_Wrapper):
    """Expectation over Transformation (Athalye et al. 2018) around any attack: eot:k=20(pgd).

    The wrapped attack runs against :class:`Expectation` — a module whose forward is the mean of ``k``
    forward passes of the model — so each gradient it takes is the average over ``k`` draws of the
    model's randomness, and its success checks use the averaged prediction. With ``judge=R`` the runner
    scores each sample on ``R`` draws of the model's own prediction (robust only if correct in all) and
    records how often each sample was correct (the verdict's spread). This is the adaptive
    attack for randomized defenses (random noise, random resizing, dropout kept at test time). The
    randomness must be the model's own and active in eval mode: the attack runs the model in eval
    mode, as every attack does. Costs ``k`` forward/backward passes per step of the wrapped attack.

    ``kind``, ``norms`` and ``randomized`` are the wrapped attack's.

    Example:
        >>> from robustaudit.attacks.gradient import PGD
        >>> adv = EOT(PGD(steps=50), k=20)(noisy_model, x, y, ThreatModel("linf", 0.1))  # (N, C, H, W)
        >>> from_spec("eot:k=20(pgd:steps=50)")   # the same from a spec
    """

    name = "eot"
    SETTINGS = Settings(Int("k", 20, "forward passes averaged per gradient", 1, MAX_EOT),
                        Int("judge", 1, "draws of the final prediction (the runner's): robust only if correct in "
                            "every draw; the spread over draws goes to provenance['verdict_spread']", 1, 100))

    def __init__(self, attack: Attack, *, k: int = 20, judge: int = 1) -> None:
        EOT.SETTINGS.apply(self, locals())
        self._adopt("eot", attack)

    @property
    def judge_repeats(self) -> int:
        """How many times the runner draws the prediction it scores a sample on (``judge``)."""
        return self.judge

    def _run(self, model, x, y, threat, targets, ids, seed, task):  # noqa: D102 - see Attack._run
        view = Expectation(model, self.k)
        return self.attack(view, x, y, threat, targets=targets, ids=ids, seed=seed, task=task)


# --------------------------------------------------------------------------------------------- BPDA
class BPDAFunction(torch.autograd.Function):
    """Forward: the preprocessed tensor as computed; backward: the gradient of ``substitute`` at ``x``.

    ``apply(x, preprocessed, substitute)`` returns ``preprocessed`` (any shape the classifier takes)
    and sends the incoming gradient back to ``x`` through ``substitute`` (``None``: the identity, so
    ``preprocessed`` must have ``x``'s shape). ``preprocessed`` itself gets no gradient: its own graph
    (zero or undefined gradients, the reason for BPDA) is cut.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, preprocessed: torch.Tensor,
                substitute: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
        ctx.substitute = substitute
        ctx.save_for_backward(x)
        return preprocessed.detach().clone()

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (x,) = ctx.saved_tensors
        if ctx.substitute is None:
            return grad_out, None, None
        with torch.enable_grad():
            xs = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(ctx.substitute(xs), xs, grad_out)
        return grad, None, None


def _find_preprocess(model: nn.Module) -> nn.Module | None:
    """``model.preprocess``, looking through wrappers that keep the wrapped model as ``.model``
    (robustaudit's ``LogitsOutput`` and ``Normalize``, :class:`Expectation`)."""
    m: object = model
    for _ in range(16):
        if not isinstance(m, nn.Module):
            return None
        pre = getattr(m, "preprocess", None)
        if pre is not None:
            return pre
        m = getattr(m, "model", None)
    return None


def _check_preprocess(owner: str, value: Any) -> nn.Module:
    if not isinstance(value, nn.Module):
        raise UserError(
            f"{owner}: preprocess must be the nn.Module inside the model that does the preprocessing "
            f"(BPDA hooks its output), got {type(value).__name__}; wrap a function in an nn.Module"
        )
    return value


def _check_substitute(owner: str, value: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    if not callable(value):
        raise UserError(f"{owner}: substitute must be callable, got {type(value).__name__}")
    return value


class BPDA(_Wrapper):
    """Backward Pass Differentiable Approximation (Athalye et al. 2018) around any attack: bpda(pgd).

    For a defended model ``classifier(preprocess(x))`` whose preprocessing has useless gradients
    (quantization, JPEG, median filters: zero, undefined or shattered), the wrapped attack sees the
    same forward pass but a backward pass through ``substitute`` in place of ``preprocess``: the
    identity by default, which suits preprocessing that keeps ``preprocess(x) ≈ x``.

    Which module is the preprocessing:

    * ``preprocess=None`` (the spec form ``bpda(pgd)``): the model must expose a ``preprocess``
      attribute holding an ``nn.Module`` that its ``forward`` calls on the input, e.g.
      ``self.preprocess`` and ``self.classifier`` with ``forward = classifier(preprocess(x))``.
      robustaudit's own wrappers (``LogitsOutput``, ``Normalize``) are looked through.
    * ``preprocess=module``: that module, which must be a submodule of the attacked model.

    BPDA intercepts the module's output with a forward hook for the duration of the attack (removed
    afterwards, even on error); the model passed to the attack stays the full defended model, so the
    result is judged on the real forward pass. A model whose ``forward`` never calls its
    ``preprocess`` is a :class:`UserError`, not a silent plain attack.

    ``kind``, ``norms`` and ``randomized`` are the wrapped attack's.

    Settings (keyword-only, Python only: a spec cannot name a callable):
        preprocess: the non-differentiable ``nn.Module`` inside the model, or ``None``.
        substitute: differentiable ``x -> preprocess(x)`` approximation for the backward pass;
            ``None`` is the identity.

    Example:
        >>> class Defended(nn.Module):
        ...     def __init__(self, net):
        ...         super().__init__()
        ...         self.preprocess, self.classifier = Quantize(levels=4), net
        ...     def forward(self, x):
        ...         return self.classifier(self.preprocess(x))
        >>> adv = BPDA(PGD(steps=20))(Defended(net), x, y, ThreatModel("linf", 0.3))  # (N, C, H, W)
        >>> from_spec("eot:k=10(bpda(apgd))")   # randomized and non-differentiable: nest them
    """

    name = "bpda"
    SETTINGS = Settings(
        Setting("preprocess", None, None, "the module to approximate (none: the model's .preprocess)",
                optional=True, parse=_check_preprocess, spec=False, kind="nn.Module"),
        Setting("substitute", None, None, "x -> its differentiable approximation (none: the identity)",
                optional=True, parse=_check_substitute, spec=False, kind="callable"),
    )

    def __init__(
        self,
        attack: Attack,
        *,
        preprocess: nn.Module | None = None,
        substitute: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        BPDA.SETTINGS.apply(self, locals())
        self._adopt("bpda", attack)

    def _locate(self, model: nn.Module) -> nn.Module:
        if self.preprocess is not None:
            if not any(m is self.preprocess for m in model.modules()):
                raise UserError("bpda: the given preprocess module is not part of the attacked model")
            return self.preprocess
        pre = _find_preprocess(model)
        if pre is None:
            raise UserError(
                # not the class name: the model reaching here is the runner's wrapper, not the user's
                "bpda: the audited model has no 'preprocess' attribute; give the defended model attributes "
                "'preprocess' and 'classifier' with forward = classifier(preprocess(x)), or, in Python, pass "
                "BPDA(attack, preprocess=<the module>)"
            )
        if not isinstance(pre, nn.Module):
            raise UserError(
                f"bpda: model.preprocess must be an nn.Module (BPDA hooks its output), got {type(pre).__name__}"
            )
        return pre

    @contextmanager
    def _approximated(self, pre: nn.Module) -> Iterator[list[int]]:
        calls = [0]
        substitute = self.substitute

        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> torch.Tensor:
            calls[0] += 1
            x = args[0]
            if not isinstance(output, torch.Tensor) or not isinstance(x, torch.Tensor):
                raise UserError("bpda: preprocess must map one tensor to one tensor")
            if substitute is None and output.shape != x.shape:
                raise UserError(
                    f"bpda: preprocess changes the shape {tuple(x.shape)} -> {tuple(output.shape)}; "
                    "the identity cannot stand in for it, give BPDA(..., substitute=<x -> approx>)"
                )
            return BPDAFunction.apply(x, output, substitute)

        handle = pre.register_forward_hook(hook)
        try:
            yield calls
        finally:
            handle.remove()

    def _run(self, model, x, y, threat, targets, ids, seed, task):  # noqa: D102 - see Attack._run
        pre = self._locate(model)
        with self._approximated(pre) as calls:
            adv = self.attack(model, x, y, threat, targets=targets, ids=ids, seed=seed, task=task)
        if calls[0] == 0:
            raise UserError(
                f"bpda: the model's forward never called its preprocess module ({type(pre).__name__}); "
                "BPDA can only stand in for a module the forward pass runs"
            )
        return adv
