"""Any foolbox 3 attack under the robustaudit contract, by class name.

Spec syntax: ``foolbox:NAME[:SETTINGS]``, the settings being the foolbox constructor's keyword
arguments, e.g.::

    foolbox:LinfPGD:steps=10
    foolbox:L2CarliniWagnerAttack:steps=200,stepsize=0.01,binary_search_steps=5
    foolbox:BoundaryAttack:steps=5000

``distance=l2`` (``l0``, ``l1``, ``linf``) is accepted for the attacks that take a foolbox distance.
foolbox is an optional dependency (the ``dev`` extra) and is imported only when such an attack is built.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, ClassVar

import torch

from robustaudit.attacks.base import Attack, AttackKind
from robustaudit.attacks.settings import check_like_defaults
from robustaudit.core.errors import UserError, suggest
from robustaudit.core.norms import lp_norm

_NORM_OF_P = {math.inf: "linf", 2: "l2", 1: "l1", 0: "l0"}


def _foolbox() -> Any:
    try:
        import foolbox
    except ImportError:
        raise UserError("foolbox is not installed: pip install foolbox") from None
    return foolbox


def foolbox_attack_names() -> list[str]:
    """The attack classes (and aliases such as ``LinfPGD``) ``foolbox.attacks`` exports, sorted."""
    fb = _foolbox()
    base = fb.attacks.base
    abstract = {base.Attack, base.AttackWithDistance, base.FixedEpsilonAttack, base.MinimizationAttack,
                base.FlexibleDistanceMinimizationAttack, base.Repeated}
    return sorted(
        n for n in dir(fb.attacks)
        if not n.startswith("_") and isinstance(c := getattr(fb.attacks, n), type)
        and issubclass(c, base.Attack) and c not in abstract
    )


class FoolboxAttack(Attack):
    """Any foolbox attack by class name: foolbox:NAME:SETTINGS, e.g. foolbox:L2CarliniWagnerAttack:steps=200.

    ``FoolboxAttack(name, **settings)`` builds ``foolbox.attacks.<name>(**settings)`` and runs it on
    ``foolbox.PyTorchModel(model, bounds=threat.bounds, device=x.device)``, untargeted
    (``Misclassification``) or towards ``targets`` (``TargetedMisclassification``).

    What comes back depends on the foolbox class, and so does :attr:`kind` (per instance):

    * fixed-epsilon attacks (PGD, FGSM, BIM, noise...): kind ``fixed-eps``; called with
      ``epsilons=threat.eps`` and the *clipped* result is returned (inside the ball).
    * minimization attacks (C&W, DDN, FMN, DeepFool, EAD, Brendel-Bethge, Boundary, HopSkipJump...):
      kind ``minimal-norm``; called with ``epsilons=None`` and the raw result is returned where it
      is adversarial (and, at a finite eps, inside the ball), ``x`` elsewhere.

    ``norms`` come from the attack's foolbox distance (``LpDistance(p)``). The decision-based
    attacks (``BoundaryAttack``, ``HopSkipJumpAttack``; also ``PointwiseAttack`` and the
    Brendel-Bethge family) start from an adversarial point that foolbox finds with its init attack
    (blended uniform noise or salt-and-pepper); when that fails for some samples foolbox raises, and
    we retry with starting points only for the samples that have one, returning ``x`` for the rest.
    They need thousands of queries to get close: slow, and meant for small subsets.

    Randomness: foolbox draws from torch's global generator; we seed it from (seed, attack, eps)
    inside ``torch.random.fork_rng`` (the caller's generator state is restored), so a result is
    reproducible for the same batch, but, unlike our own attacks, not independent of the batch.

    Example:
        >>> adv = FoolboxAttack("LinfPGD", steps=10)(model, x, y, ThreatModel("linf", 0.1))  # (N, C, H, W)
        >>> from_spec("foolbox:L2CarliniWagnerAttack:steps=20,binary_search_steps=3").kind
        <AttackKind.MINIMAL_NORM: 'minimal-norm'>
    """

    name = "foolbox"
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2", "l1", "l0")
    # no declared SETTINGS: the foolbox class's own keywords, checked against its defaults' types

    def __init__(self, name: str, **settings: Any) -> None:
        fb = _foolbox()
        if not isinstance(name, str) or not name:
            raise UserError(f"foolbox: give an attack class name, got {name!r}")
        known = foolbox_attack_names()
        if name not in known:
            raise UserError(
                f"unknown foolbox attack '{name}'{suggest(name, known)}; known: {', '.join(known)}"
            )
        cls = getattr(fb.attacks, name)
        params = inspect.signature(cls.__init__).parameters
        valid = [k for k, p in params.items() if k != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD]
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        for key in settings:
            if key not in valid and not takes_any:
                raise UserError(
                    f"foolbox attack '{name}' has no setting '{key}'{suggest(key, valid)}; "
                    f"valid: {', '.join(valid) or '(none)'}"
                )
        # foolbox stores settings unchecked and fails mid-attack with a TypeError: check them here
        check_like_defaults(f"foolbox attack '{name}'", cls.__init__, settings)
        built = dict(settings)
        if isinstance(built.get("distance"), str):
            built["distance"] = self._distance(fb, built["distance"])
        try:
            self._fb = cls(**built)
        except (TypeError, ValueError) as exc:
            raise UserError(f"foolbox attack '{name}': {exc}") from None
        self.attack_name = name
        self.fb_settings = dict(settings)
        # per instance, shadowing the ClassVars: the run semantics follow the wrapped foolbox class
        self.name = f"foolbox:{name}"  # type: ignore[misc]
        minimal = isinstance(self._fb, fb.attacks.base.MinimizationAttack)
        self.kind = AttackKind.MINIMAL_NORM if minimal else AttackKind.FIXED_EPS  # type: ignore[misc]
        try:
            p = float(self._fb.distance.p)
        except (AttributeError, ValueError):  # no distance yet (FlexibleDistance attacks without one)
            raise UserError(
                f"foolbox attack '{name}' needs a distance: add distance=l2 (or l0, l1, linf)"
            ) from None
        if p not in _NORM_OF_P:
            raise UserError(f"foolbox attack '{name}' measures an L{p:g} distance, which robustaudit has no norm for")
        self.norms = (_NORM_OF_P[p],)  # type: ignore[misc]
        self.randomized = True  # type: ignore[misc]

    @staticmethod
    def _distance(fb: Any, text: str) -> Any:
        table = {"l0": fb.distances.l0, "l1": fb.distances.l1, "l2": fb.distances.l2, "linf": fb.distances.linf}
        if text not in table:
            raise UserError(f"foolbox: distance must be one of {', '.join(table)}, got '{text}'")
        return table[text]

    def settings(self) -> dict[str, Any]:  # noqa: D102 - see Attack.settings
        return {"attack": self.attack_name, **self.fb_settings}

    def __repr__(self) -> str:
        inner = "".join(f", {k}={v!r}" for k, v in self.fb_settings.items())
        return f"FoolboxAttack({self.attack_name!r}{inner})"

    def _run(self, model, x, y, threat, targets, ids, seed, task):  # noqa: D102 - see Attack._run
        fb = _foolbox()
        if task.name != "classification":
            raise UserError(f"{self.name}: foolbox attacks support classification only, not {task.name}")
        fmodel = fb.PyTorchModel(model, bounds=threat.bounds, device=x.device)
        criterion = (fb.criteria.Misclassification(y) if targets is None
                     else fb.criteria.TargetedMisclassification(targets))
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.stream(seed, threat, 0))
            try:
                if self.kind is AttackKind.FIXED_EPS:
                    _, clipped, _ = self._fb(fmodel, x, criterion, epsilons=threat.eps)
                    return clipped
                return self._minimize(fb, fmodel, model, x, y, targets, criterion, threat)
            except (ValueError, NotImplementedError) as exc:
                raise UserError(f"{self.name} failed: {exc}") from None

    def _minimize(self, fb, fmodel, model, x, y, targets, criterion, threat) -> torch.Tensor:
        try:
            raw, _, ok = self._fb(fmodel, x, criterion, epsilons=None)
        except ValueError as exc:
            if "init_attack failed" not in str(exc):
                raise
            raw, ok = self._from_starts(fb, fmodel, model, x, y, targets)
        if math.isfinite(threat.eps):  # a minimal point outside the ball is no success at this eps
            ok = ok & (lp_norm(raw - x, threat.norm) <= threat.eps * (1 + 1e-5))
        return torch.where(ok.view(-1, *[1] * (x.dim() - 1)), raw, x)

    def _from_starts(self, fb, fmodel, model, x, y, targets) -> tuple[torch.Tensor, torch.Tensor]:
        """Foolbox's init attack failed on some samples: run its init ourselves and the attack only on
        the samples that got an adversarial starting point."""
        init = getattr(self._fb, "init_attack", None) or fb.attacks.LinearSearchBlendedUniformNoiseAttack(steps=50)
        criterion = (fb.criteria.Misclassification(y) if targets is None
                     else fb.criteria.TargetedMisclassification(targets))
        starts = init.run(fmodel, x, criterion)
        with torch.no_grad():
            pred = model(starts).argmax(1)
        has = pred != y if targets is None else pred == targets
        raw, ok = x.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
        idx = has.nonzero().squeeze(1)
        if idx.numel() == 0:
            return raw, ok
        sub = (fb.criteria.Misclassification(y[idx]) if targets is None
               else fb.criteria.TargetedMisclassification(targets[idx]))
        out, _, hit = self._fb(fmodel, x[idx], sub, epsilons=None, starting_points=starts[idx])
        raw[idx], ok[idx] = out, hit
        return raw, ok
