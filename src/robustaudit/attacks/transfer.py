"""Transfer attacks: craft on surrogate models, judge on the target, never query the target.

A transfer attack answers "what does an attacker without access to the model achieve?": the wrapped
(white-box) attack runs against an ensemble of surrogates and its result is handed to the target as
is. Momentum (:class:`~robustaudit.attacks.gradient.MIFGSM` as the inner attack) and input diversity
(``input_diversity``, Xie et al. 2019) are the two standard ways to make examples transfer better.

Spec syntax (resolved by the evaluate layer, since an attack never loads a model)::

    transfer:surrogate=digits-cnn(mifgsm)
    transfer:surrogate=digits-cnn+digits-cnn-pgdat,di=0.5(mifgsm:steps=20)

``surrogate`` names one model or several joined by ``+`` (any model spec the audit accepts); ``di`` is
the input-diversity probability.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from robustaudit.attacks.base import Attack, AttackKind
from robustaudit.attacks.settings import Float, Setting, Settings
from robustaudit.core.errors import UserError
from robustaudit.core.rng import keyed_uniform, stream_key

#: Input diversity shrinks each image to a random side in [DI_MIN_SCALE * side, side] and pads it
#: back to full size at a random offset. Xie et al. enlarge 299 -> [299, 330) and pad to 330; that
#: changes the input size (not every surrogate accepts it) and rounds to nothing on 8x8 digits, so
#: we shrink instead and keep the size.
DI_MIN_SCALE = 0.8
#: Random draws per sample are tabulated for this many forward passes, then reused cyclically.
_DI_PERIOD = 97


class SurrogateEnsemble(nn.Module):
    """The mean of the surrogates' logits, optionally on diversified inputs.

    ``(M, C, H, W) -> (M, K)``. The wrapped attack passes subsets of its batch (it drops finished
    samples), so each row is matched to its sample by the nearest clean input (on device, no host
    sync); its diversity draws then come from a per-sample table keyed by (seed, sample id), and a
    sample gets the same transformations wherever it lands in a batch.

    Args:
        surrogates: models mapping the same inputs to the same classes as the target.
        p: probability of transforming an input on a forward pass (0 turns diversity off).
        x0: the clean batch ``(N, C, H, W)``, to match rows to samples.
        table: uniform draws ``(N, _DI_PERIOD, 4)`` per sample: apply?, size, row and column offset.
    """

    def __init__(self, surrogates: Sequence[nn.Module], p: float = 0.0, x0: torch.Tensor | None = None,
                 table: torch.Tensor | None = None) -> None:
        super().__init__()
        self.surrogates = nn.ModuleList(surrogates)
        self.p = p
        self.x0 = x0
        self.table = table
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p > 0 and self.x0 is not None and self.table is not None:
            x = self._diversify(x)
        out = self.surrogates[0](x)
        for s in self.surrogates[1:]:
            out = out + s(x)
        return out / len(self.surrogates)

    def _diversify(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        owner = torch.cdist(x.reshape(n, -1), self.x0.reshape(len(self.x0), -1)).argmin(dim=1)
        u = self.table[owner, self.calls % self.table.shape[1]]  # (n, 4)
        self.calls += 1
        # the side s of the shrunk image, then where it sits; pixel units of the output image
        lo = max(1, math.floor(DI_MIN_SCALE * h))
        side = (lo + (u[:, 1] * (h - lo + 1)).floor()).clamp(max=h)
        side_w = (side * w / h).round().clamp(1, w)
        top = (u[:, 2] * (h - side + 1)).floor()
        left = (u[:, 3] * (w - side_w + 1)).floor()
        # one affine grid per sample: output pixels [top, top + side) read input pixels [0, h); in
        # normalised coordinates (align_corners=False) that is in = (h/s) * out + (h - 2 top)/s - 1
        theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
        theta[:, 0, 0] = w / side_w
        theta[:, 0, 2] = (w - 2 * left) / side_w - 1
        theta[:, 1, 1] = h / side
        theta[:, 1, 2] = (h - 2 * top) / side - 1
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        moved = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        apply = (u[:, 0] < self.p).view(-1, 1, 1, 1)
        return torch.where(apply, moved, x)


class Transfer(Attack):
    """Transfer attack crafted on surrogates, never querying the target: transfer:surrogate=NAME(ATTACK).

    Spec: ``transfer:surrogate=NAME[+NAME...][,di=P](ATTACK)``, e.g. ``transfer:surrogate=digits-cnn(mifgsm)``.
    The wrapped attack runs against :class:`SurrogateEnsemble` (the mean of the surrogates' logits,
    in eval mode, on the input's device and dtype) and its result is returned as is; the ``model``
    argument is ignored, so the target's robust accuracy under this attack is the black-box,
    no-query figure. ``input_diversity=p`` applies DI (Xie et al. 2019) inside the ensemble: with
    probability ``p`` per sample and forward pass, shrink to a random size and pad back at a random
    offset (see ``DI_MIN_SCALE``), the draws keyed by (seed, sample id). Use ``mifgsm`` as the inner
    attack for momentum (MI-DI-FGSM when combined with DI).

    ``norms`` are the wrapped attack's; the kind is ``transfer``.

    Args:
        attack: a white-box attack (PGD, MI-FGSM, ...).
        surrogates: one or more models ``(N, C, H, W) -> (N, K)``; a mapping names them in
            :meth:`settings` (the spec form passes the names it resolved).
        input_diversity: probability in [0, 1] of transforming an input (0: off).

    Example:
        >>> from robustaudit.attacks.gradient import MIFGSM
        >>> surrogate = create_model("digits-cnn")
        >>> adv = Transfer(MIFGSM(), [surrogate], input_diversity=0.5)(target, x, y, ThreatModel("linf", 0.2))
    """

    name = "transfer"
    kind = AttackKind.TRANSFER
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2", "l1", "l0")
    SETTINGS = Settings(
        # spec only: the spec builder resolves the names to models, passed as ``surrogates``
        Setting("surrogate", str, None, "surrogate model names, several joined by +", init=False, kind="models"),
        Float("input_diversity", 0.0, "probability of the DI transform per sample and pass (0: off)", 0, 1, key="di"),
    )

    def __init__(
        self,
        attack: Attack,
        surrogates: Sequence[nn.Module] | Mapping[str, nn.Module],
        *,
        input_diversity: float = 0.0,
    ) -> None:
        if not isinstance(attack, Attack):
            raise UserError(f"transfer wraps an attack, got {type(attack).__name__}; e.g. transfer:surrogate=m(pgd)")
        if isinstance(surrogates, Mapping):
            names, models = [str(k) for k in surrogates], list(surrogates.values())
        elif isinstance(surrogates, nn.Module):
            names, models = [type(surrogates).__name__], [surrogates]
        else:
            models = list(surrogates)
            names = [type(m).__name__ for m in models]
        if not models or not all(isinstance(m, nn.Module) for m in models):
            raise UserError("transfer needs at least one surrogate nn.Module")
        Transfer.SETTINGS.apply(self, locals())
        self.attack = attack
        self.surrogates = models
        self.surrogate_names = names
        self.norms = attack.norms  # type: ignore[misc]  # what the inner attack supports
        self.randomized = attack.randomized or self.input_diversity > 0  # type: ignore[misc]
        # surrogates moved to another device/dtype, built once per (device, dtype) and reused
        self._placed: dict[tuple[torch.device, torch.dtype], list[nn.Module]] = {}
        self._checked: set[tuple[int, ...]] = set()  # input shapes every surrogate was seen to take

    def settings(self) -> dict[str, Any]:  # noqa: D102 - see Attack.settings
        return {"attack": self.attack, "surrogates": list(self.surrogate_names),
                "input_diversity": self.input_diversity}

    def _surrogates_on(self, device: torch.device, dtype: torch.dtype) -> list[nn.Module]:
        def placed(m: nn.Module) -> bool:
            p = next(iter(m.parameters()), None)
            return p is None or (p.device == device and p.dtype == dtype)

        if all(placed(m) for m in self.surrogates):
            return self.surrogates
        key = (device, dtype)
        if key not in self._placed:
            import copy

            # copies, not .to() in place: the caller's surrogates stay where they are
            self._placed[key] = [copy.deepcopy(m).to(device=device, dtype=dtype) for m in self.surrogates]
        return self._placed[key]

    def _check_inputs(self, surrogates: Sequence[nn.Module], x: torch.Tensor) -> None:
        """Refuse, in one line naming the surrogate and the shape, inputs ``x (N, C, H, W)`` a surrogate cannot
        take or answers with anything but one score vector per input: otherwise the inner attack fails deep
        in a layer ("mat1 and mat2 shapes cannot be multiplied"). One sample, once per input shape."""
        shape = tuple(x.shape[1:])
        if shape in self._checked or not len(x):
            return
        size = "x".join(map(str, shape))
        for name, s in zip(self.surrogate_names, surrogates):
            try:
                with torch.no_grad():
                    out = s(x[:1])
            except RuntimeError as err:  # a layer's shape error: the surrogate was built for other inputs
                reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise UserError(f"transfer surrogate '{name}' does not take the data's {size} inputs ({reason}); "
                                "pick a surrogate for this data") from None
            if not isinstance(out, torch.Tensor) or out.dim() != 2:
                got = "x".join(map(str, out.shape[1:])) if isinstance(out, torch.Tensor) else type(out).__name__
                raise UserError(f"transfer surrogate '{name}' answers {size} inputs with {got} outputs, not one score "
                                "vector per image; a transfer surrogate must be a classifier of the audited data")
        self._checked.add(shape)

    def _run(self, model, x, y, threat, targets, ids, seed, task):  # noqa: D102 - see Attack._run
        surrogates = self._surrogates_on(x.device, x.dtype)
        self._check_inputs(surrogates, x)
        table = None
        if self.input_diversity > 0:
            key = stream_key(seed, "transfer-di", threat.norm, threat.eps)
            table = keyed_uniform(ids, (_DI_PERIOD, 4), key, device=x.device, dtype=x.dtype)
        ensemble = SurrogateEnsemble(surrogates, self.input_diversity, x, table)
        return self.attack(ensemble, x, y, threat, targets=targets, ids=ids, seed=seed, task=task)
