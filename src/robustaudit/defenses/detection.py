"""Inference-time defenses that reject inputs: adversarial-example detectors.

A :class:`Detector` wraps a classifier and adds a reject decision. ``score(x) -> (N,)`` is higher for
inputs more likely adversarial; ``reject(x) = score(x) > threshold``. The threshold is fixed on clean
*validation* data (a held-out part of the fitting split, never the test set and never an attack) so
that a stated fraction ``fpr`` of clean inputs is rejected (default 5%).

Detectors (``DETECTORS``, ``get_detector(name)``):

* ``squeeze`` — feature squeezing (Xu et al. 2018): bit-depth reduction and a 2×2 median filter;
  score = max over squeezers of the L1 distance between the softmax of ``x`` and of ``squeeze(x)``.
  The squeezers are non-differentiable; :meth:`Detector.score` with ``differentiable=True`` passes
  gradients through them as the identity (BPDA, Athalye et al. 2018).
* ``metzen`` — Metzen et al. 2017: a small detector subnetwork on an intermediate activation (taken by
  a forward hook: the input of the last ``nn.Linear``, i.e. the penultimate features), trained to tell
  clean from PGD examples of the fitting split.
* ``mahalanobis`` — Lee et al. 2018: class-conditional Gaussians with a shared covariance on the
  penultimate features; score = minus the largest class-conditional Mahalanobis score, i.e. the
  smallest Mahalanobis distance to a class mean (no input preprocessing step).

:func:`fit_detector` fits one on a data split and caches the fitted state in a file keyed by the
model's weights (see :func:`cache_dir`); deleting the cache only costs a refit.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from robustaudit.attacks.base import Attack
from robustaudit.attacks.wrappers import BPDAFunction
from robustaudit.core.errors import UserError, unknown
from robustaudit.core.modes import eval_mode
from robustaudit.core.norms import ascent_direction, clip_to_bounds, project
from robustaudit.core.threat import ThreatModel

#: Bumped when a fitted state's layout or meaning changes: old cache files are then ignored.
CACHE_VERSION = 1
DEFAULT_FPR = 0.05
#: Share of the fitting split held out (never fitted on) to set the threshold.
VALIDATION_SHARE = 0.2


def cache_dir() -> Path:
    """Where fitted detectors are cached: ``$ROBUSTAUDIT_CACHE_DIR/detectors`` or
    ``~/.cache/robustaudit/detectors`` (``$XDG_CACHE_HOME`` honoured). Safe to delete at any time."""
    root = os.environ.get("ROBUSTAUDIT_CACHE_DIR")
    if root:
        return Path(root) / "detectors"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "robustaudit" / "detectors"


def model_hash(model: nn.Module) -> str:
    """sha256 of the model's state_dict (names, shapes, dtypes and bytes): the cache key of its fits
    (the one weights hash, :func:`robustaudit.core.hashing.state_dict_sha256`)."""
    from robustaudit.core.hashing import state_dict_sha256

    return state_dict_sha256(model)


class _Penultimate:
    """Captures the input of the model's last ``nn.Linear`` (the penultimate features) by a forward
    hook, flattened to ``(N, D)``, with its autograd graph (the adaptive attack differentiates it)."""

    def __init__(self, model: nn.Module) -> None:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise UserError("this detector reads the penultimate features, the input of the model's last "
                            "nn.Linear, and the model has no nn.Linear")
        self.layer = linears[-1]
        self.value: torch.Tensor | None = None

    def __call__(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, C, H, W) -> (logits (N, K), features (N, D))``."""
        handle = self.layer.register_forward_hook(lambda mod, inp, out: setattr(self, "value", inp[0]))
        try:
            logits = model(x)
        finally:
            handle.remove()
        if self.value is None:  # the layer exists but the forward never ran it
            raise UserError("the model's last nn.Linear is not called by its forward; cannot read its features")
        feats, self.value = self.value.flatten(1), None
        return logits, feats


class Detector(ABC):
    """A classifier plus a reject decision. Fit with :meth:`fit` (or :func:`fit_detector`), then
    ``score(x)`` ``(N, C, H, W) -> (N,)`` and ``reject(x)`` ``-> (N,)`` bool.

    ``model`` is the classifier (logits ``(N, K)``); a detector never changes its weights or mode.
    """

    name: ClassVar[str] = "detector"
    #: One line for reports: what the detector looks at (formatted with the fitted detector's settings).
    summary: ClassVar[str] = ""
    #: One line for ``robustaudit list defenses``.
    headline: ClassVar[str] = ""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.threshold: float = math.inf
        self.fpr: float = DEFAULT_FPR
        #: spread of the clean validation scores: the adaptive attack's unit for ``score - threshold``
        self.scale: float = 1.0

    # ----------------------------------------------------------------- what subclasses write
    @abstractmethod
    def _score(self, x: torch.Tensor, logits: torch.Tensor | None, differentiable: bool) -> torch.Tensor:
        """Scores ``(N,)`` of inputs ``x`` ``(N, C, H, W)``, in eval mode."""

    def _fit(self, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str, seed: int,
             batch_size: int) -> None:
        """Fit the detector's own parameters on ``x (N, C, H, W)``, ``y (N,)`` (default: nothing)."""

    def state(self) -> dict[str, torch.Tensor]:
        """The fitted parameters as tensors (what the cache stores)."""
        return {}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state` returned."""

    def settings(self) -> dict[str, Any]:
        """Settings that change the fit (part of the cache key)."""
        return {}

    def describe(self) -> str:
        """The report's one line about the fitted detector."""
        return type(self).summary.format(**self.settings())

    # ----------------------------------------------------------------- shared
    def score(self, x: torch.Tensor, *, differentiable: bool = False, batch_size: int = 512,
              logits: torch.Tensor | None = None) -> torch.Tensor:
        """Scores ``(N,)`` for ``x`` ``(N, C, H, W)``: higher means more likely adversarial.

        ``differentiable=True`` keeps the graph to ``x`` (non-differentiable steps through BPDA) and runs
        in one batch, reusing ``logits`` ``(N, K)`` of ``x`` when given (a detector that needs them then
        skips a forward pass); otherwise scores are computed without grad, ``batch_size`` at a time.
        """
        with eval_mode(self.model):
            if differentiable:
                return self._score(x, logits, True)
            with torch.no_grad():
                return torch.cat([self._score(x[i:i + batch_size], None, False)
                                  for i in range(0, len(x), batch_size)]) if len(x) else x.new_zeros(0)

    def reject(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N,)`` bool: True where the input is refused."""
        return self.score(x) > self.threshold

    def calibrate(self, clean_scores: torch.Tensor, fpr: float) -> None:
        """Set the threshold from clean validation scores ``(M,)`` so that at most ``fpr`` of them are
        above it: the ``ceil((1 - fpr) M)``-th smallest score (rejection is ``score > threshold``)."""
        s = torch.sort(clean_scores.detach().double().cpu()).values
        if not len(s):
            raise UserError("no clean validation samples to set the detector's threshold on")
        k = min(len(s), max(1, math.ceil((1.0 - fpr) * len(s))))
        self.threshold = float(s[k - 1])
        self.fpr = float(fpr)
        # robust spread (IQR / 1.35 ~ one standard deviation for a normal), never 0
        q = torch.quantile(s, torch.tensor([0.25, 0.75], dtype=s.dtype))
        self.scale = float(max((q[1] - q[0]).item() / 1.35, 1e-6 * max(1.0, abs(self.threshold)), 1e-12))

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({inner})"


# ------------------------------------------------------------------------------- feature squeezing
def bit_depth(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Reduce ``x`` ``(N, C, H, W)`` in [0, 1] to ``2**bits`` levels (Xu et al.'s bit-depth squeezer)."""
    levels = 2 ** bits - 1
    return torch.round(x * levels) / levels


def median_filter(x: torch.Tensor, size: int = 2) -> torch.Tensor:
    """``size``×``size`` median filter of ``(N, C, H, W)``, output of the same shape.

    Even windows have no centre: like scipy's ``median_filter`` (which Xu et al. used), the window
    reaches one pixel further up/left than down/right, borders are reflected half-sample (``d c b a |
    a b c d``), and of the two middle values the upper is taken (scipy's rank ``size**2 // 2``).
    """
    before, after = size // 2, (size - 1) // 2
    padded = _symmetric_pad(_symmetric_pad(x, before, after, -1), before, after, -2)
    patches = padded.unfold(2, size, 1).unfold(3, size, 1)  # (N, C, H, W, size, size)
    flat = patches.reshape(*patches.shape[:4], -1)
    return flat.sort(dim=-1).values[..., (size * size) // 2]


def _symmetric_pad(x: torch.Tensor, before: int, after: int, dim: int) -> torch.Tensor:
    """Half-sample symmetric padding along ``dim`` (scipy's ``reflect`` mode)."""
    parts = [x.narrow(dim, 0, before).flip(dim)] if before else []
    parts.append(x)
    if after:
        parts.append(x.narrow(dim, x.shape[dim] - after, after).flip(dim))
    return torch.cat(parts, dim=dim)


class FeatureSqueezing(Detector):
    """Feature squeezing (Xu et al. 2018): score = max over squeezers of ``||softmax(f(x)) -
    softmax(f(squeeze(x)))||_1``; squeezers are a ``bits``-bit depth reduction and a ``median``×``median``
    median filter. Attacked through BPDA (identity backward).

    Xu et al. picked, per data set, squeezers that keep the clean accuracy; here that choice is made on
    the fitting split: a squeezer whose clean accuracy there is more than ``max_accuracy_drop`` below
    the model's is left out (on 8×8 digits the 2×2 median filter costs ~25 points and would put the
    5%-FPR threshold at an L1 distance of ~2, the maximum). The kept squeezers are in :meth:`describe`.
    """

    name = "squeeze"
    headline = ("feature squeezing (Xu et al. 2018): L1 softmax change under bit-depth reduction and a 2×2 median "
                "filter; squeezers that cost clean accuracy on the fitting split are left out; attacked via BPDA")
    summary = ("feature squeezing (Xu et al. 2018): L1 change of the softmax when the input is {kept}")
    _SQUEEZERS = ("bits", "median")

    def __init__(self, model: nn.Module, *, bits: int = 4, median: int = 2, max_accuracy_drop: float = 0.05) -> None:
        super().__init__(model)
        if not isinstance(bits, int) or not 1 <= bits <= 8:
            raise UserError(f"squeeze: bits must be an integer in 1..8, got {bits!r}")
        if not isinstance(median, int) or median < 2:
            raise UserError(f"squeeze: median must be an integer >= 2, got {median!r}")
        self.bits, self.median, self.max_accuracy_drop = bits, median, float(max_accuracy_drop)
        self.kept = torch.ones(2, dtype=torch.bool)  # which of _SQUEEZERS the score uses

    def settings(self) -> dict[str, Any]:
        return {"bits": self.bits, "median": self.median, "max_accuracy_drop": self.max_accuracy_drop}

    def describe(self) -> str:
        names = {"bits": f"reduced to {self.bits} bits", "median": f"median-filtered {self.median}×{self.median}"}
        kept = [names[s] for s, k in zip(self._SQUEEZERS, self.kept.tolist()) if k]
        dropped = [names[s] for s, k in zip(self._SQUEEZERS, self.kept.tolist()) if not k]
        text = self.summary.format(kept=" or ".join(kept))
        return text + (f" ({', '.join(dropped)} left out: it costs clean accuracy)" if dropped else "")

    def _squeezers(self):
        return (lambda t: bit_depth(t, self.bits), lambda t: median_filter(t, self.median))

    def _fit(self, x, y, *, eps, norm, seed, batch_size):
        with torch.no_grad():
            def acc(f):
                return torch.cat([self.model(f(x[i:i + batch_size])).argmax(1) == y[i:i + batch_size]
                                  for i in range(0, len(x), batch_size)]).float().mean().item()
            base = acc(lambda t: t)
            kept = [acc(sq) >= base - self.max_accuracy_drop for sq in self._squeezers()]
        if not any(kept):  # every squeezer hurts: keep the mildest rather than none
            kept = [True, False]
        self.kept = torch.tensor(kept)

    def state(self):
        return {"kept": self.kept}

    def load_state(self, state):
        self.kept = state["kept"].bool().cpu()

    def _score(self, x, logits, differentiable):
        p = F.softmax(self.model(x) if logits is None else logits, dim=1)
        dists = []
        for squeeze, keep in zip(self._squeezers(), self.kept.tolist()):
            if not keep:
                continue
            with torch.no_grad():
                xs = squeeze(x.detach())
            if differentiable:  # BPDA: forward the squeezed input, backward as the identity
                xs = BPDAFunction.apply(x, xs, None)
            dists.append((p - F.softmax(self.model(xs), dim=1)).abs().sum(dim=1))
        return torch.stack(dists).amax(dim=0)


# ------------------------------------------------------------------------------- Mahalanobis
class Mahalanobis(Detector):
    """Lee et al. 2018 on the penultimate features ``f(x)`` ``(N, D)``: class means ``mu_c`` and one
    shared covariance ``S`` from the fitting split (true labels); score ``= min_c (f - mu_c)^T S^-1
    (f - mu_c)`` (minus the max class-conditional Mahalanobis score). No input preprocessing."""

    name = "mahalanobis"
    headline = "Mahalanobis (Lee et al. 2018): class-conditional Gaussians, shared covariance, penultimate features"
    summary = ("Mahalanobis (Lee et al. 2018): distance of the penultimate features to the nearest class mean "
               "under a shared covariance")

    def __init__(self, model: nn.Module, *, ridge: float = 1e-3) -> None:
        super().__init__(model)
        self.ridge = float(ridge)
        self._features = _Penultimate(model)
        self.means: torch.Tensor | None = None  # (K, D)
        self.precision: torch.Tensor | None = None  # (D, D)

    def settings(self) -> dict[str, Any]:
        return {"ridge": self.ridge}

    def _fit(self, x, y, *, eps, norm, seed, batch_size):
        feats = torch.cat([self._features(self.model, x[i:i + batch_size])[1].detach().double()
                           for i in range(0, len(x), batch_size)])
        classes = int(y.max()) + 1
        means = torch.stack([feats[y == c].mean(0) if (y == c).any() else feats.new_full((feats.shape[1],), math.inf)
                             for c in range(classes)])
        centred = feats - means[y]
        cov = centred.T @ centred / len(feats)
        # a ridge relative to the mean variance: penultimate ReLU features have dead (zero-variance) units
        cov += self.ridge * cov.diagonal().mean().clamp_min(1e-12) * torch.eye(len(cov), dtype=cov.dtype)
        self.means, self.precision = means.float(), torch.linalg.inv(cov).float()

    def state(self):
        return {"means": self.means, "precision": self.precision}

    def load_state(self, state):
        self.means, self.precision = state["means"], state["precision"]

    def _score(self, x, logits, differentiable):
        _, f = self._features(self.model, x)
        means, prec = self.means.to(f), self.precision.to(f)  # type: ignore[union-attr]
        d = f[:, None, :] - means[None]  # (N, K, D)
        dist = torch.einsum("nkd,de,nke->nk", d, prec, d)
        return dist.nan_to_num(math.inf).amin(dim=1)


# ------------------------------------------------------------------------------- Metzen
class MetzenDetector(Detector):
    """Metzen et al. 2017: a detector subnetwork (an MLP ``D -> hidden -> 1``) on the penultimate
    features (forward hook on the input of the last ``nn.Linear``), trained with binary cross-entropy on
    clean vs PGD (``pgd_steps`` steps at the audit's middle eps) versions of the fitting split's
    samples; score = the subnetwork's logit."""

    name = "metzen"
    headline = "detector subnetwork (Metzen et al. 2017) on penultimate features, trained on clean vs PGD examples"
    summary = ("detector subnetwork (Metzen et al. 2017) on the penultimate features, trained on clean vs PGD "
               "examples of the fitting split")

    def __init__(self, model: nn.Module, *, hidden: int = 64, epochs: int = 30, pgd_steps: int = 10) -> None:
        super().__init__(model)
        self.hidden, self.epochs, self.pgd_steps = int(hidden), int(epochs), int(pgd_steps)
        self._features = _Penultimate(model)
        self.net: nn.Module | None = None
        self.fit_eps: float | None = None

    def settings(self) -> dict[str, Any]:
        return {"hidden": self.hidden, "epochs": self.epochs, "pgd_steps": self.pgd_steps}

    def _build(self, dim: int) -> nn.Module:
        # inputs are standardised by the first layer's stored statistics (buffers kept in the state)
        return nn.Sequential(nn.Linear(dim, self.hidden), nn.ReLU(), nn.Linear(self.hidden, self.hidden), nn.ReLU(),
                             nn.Linear(self.hidden, 1))

    def _feats(self, x: torch.Tensor, batch_size: int) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([self._features(self.model, x[i:i + batch_size])[1] for i in range(0, len(x), batch_size)])

    def _fit(self, x, y, *, eps, norm, seed, batch_size):
        from robustaudit.attacks.gradient import PGD

        self.fit_eps = float(eps)
        ids = torch.arange(len(x))
        adv = torch.cat([PGD(steps=self.pgd_steps)(self.model, x[i:i + batch_size], y[i:i + batch_size],
                                                   ThreatModel(norm, eps), ids=ids[i:i + batch_size], seed=seed + 7919)
                         for i in range(0, len(x), batch_size)])
        fc, fa = self._feats(x, batch_size), self._feats(adv, batch_size)
        feats = torch.cat([fc, fa])
        labels = torch.cat([torch.zeros(len(fc)), torch.ones(len(fa))]).to(feats)
        self.mu, self.sigma = feats.mean(0), feats.std(0).clamp_min(1e-6)
        gen = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):  # weight init from our seed, global state untouched
            torch.manual_seed(seed)
            net = self._build(feats.shape[1]).to(feats.device)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
        z = (feats - self.mu) / self.sigma
        for _ in range(self.epochs):
            order = torch.randperm(len(z), generator=gen).to(z.device)
            for i in range(0, len(z), 128):
                idx = order[i:i + 128]
                loss = F.binary_cross_entropy_with_logits(net(z[idx]).squeeze(1), labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
        self.net = net.eval().requires_grad_(False)

    def state(self):
        assert self.net is not None
        return {"mu": self.mu, "sigma": self.sigma, "fit_eps": torch.tensor(self.fit_eps),
                **{f"net.{k}": v for k, v in self.net.state_dict().items()}}

    def load_state(self, state):
        self.mu, self.sigma, self.fit_eps = state["mu"], state["sigma"], float(state["fit_eps"])
        net = self._build(self.mu.shape[0])
        net.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("net.")})
        self.net = net.eval().requires_grad_(False)

    def _score(self, x, logits, differentiable):
        _, f = self._features(self.model, x)
        net = self.net.to(f.device)  # type: ignore[union-attr]
        return net((f - self.mu.to(f)) / self.sigma.to(f)).squeeze(1)


# ------------------------------------------------------------------------------- registry and fitting
_DETECTORS: dict[str, type[Detector]] = {"squeeze": FeatureSqueezing, "metzen": MetzenDetector,
                                         "mahalanobis": Mahalanobis}
DETECTORS: tuple[str, ...] = tuple(_DETECTORS)


def detector_class(name: str) -> type[Detector]:
    """The class of a detector name; an unknown name is a UserError with a close-match suggestion."""
    if name not in _DETECTORS:
        raise unknown("detector", name, _DETECTORS)
    return _DETECTORS[name]


def detector_names() -> list[str]:
    return list(_DETECTORS)


def parse_detectors(spec: str | Sequence[str]) -> list[str]:
    """``"squeeze,metzen"`` (or a list) -> validated, de-duplicated names."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [s.strip().lower() for s in items if s.strip()]
    if not names:
        raise UserError("--defense needs a detector name: " + ", ".join(_DETECTORS))
    for n in names:
        detector_class(n)
    return list(dict.fromkeys(names))


def describe(detector: Detector) -> str:
    """The report's one line about a fitted detector."""
    return detector.describe()


def split_for_fit(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(fit, validation)`` of a fitting split of ``n`` samples: a seeded permutation, the last
    :data:`VALIDATION_SHARE` held out for the threshold (never fitted on)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(VALIDATION_SHARE * n))
    return order[: n - n_val].sort().values, order[n - n_val:].sort().values


def fit_detector(
    name: str,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    fpr: float = DEFAULT_FPR,
    eps: float,
    norm: str = "linf",
    seed: int = 0,
    batch_size: int = 256,
    data_name: str = "data",
    cache: bool = True,
) -> Detector:
    """Fit detector ``name`` around ``model`` on a fitting split ``x (N, C, H, W)``, ``y (N,)`` (the
    training split of the audit's data): 80% to fit, 20% held out to set the threshold at ``fpr``.

    ``eps``/``norm``: the radius Metzen's detector is trained at (ignored by the others). With
    ``cache``, the fitted state is read from / written to :func:`cache_dir` under a key of the model's
    weights, the detector and its settings, the data (name and content hash), ``fpr``, ``eps`` and
    ``seed``; a broken or stale cache file is refitted, never trusted blindly.
    """
    if not 0.0 < fpr < 1.0:
        raise UserError(f"--defense-fpr must be in (0, 1), got {fpr!r}")
    det = detector_class(name)(model)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x, y = x.to(device), y.to(device)
    key_doc = {"v": CACHE_VERSION, "detector": name, "settings": det.settings(), "model": model_hash(model),
               "data": data_name, "data_sha": hashlib.sha256(x.cpu().numpy().tobytes() + y.cpu().numpy().tobytes())
               .hexdigest(), "fpr": fpr, "eps": eps if name == "metzen" else None, "norm": norm, "seed": seed}
    key = hashlib.sha256(json.dumps(key_doc, sort_keys=True).encode()).hexdigest()[:32]
    path = cache_dir() / f"{name}-{key}.pt"
    if cache and path.is_file():
        try:
            saved = torch.load(path, map_location=device, weights_only=True)
            det.load_state({k: v for k, v in saved.items() if not k.startswith("_")})
            det.threshold, det.scale = float(saved["_threshold"]), float(saved["_scale"])
            det.fpr = fpr
            return det
        except Exception:  # noqa: BLE001, S110 - a cache is a convenience: refit on anything unreadable
            pass
    fit_idx, val_idx = split_for_fit(len(x), seed)
    with eval_mode(model):
        det._fit(x[fit_idx], y[fit_idx], eps=eps, norm=norm, seed=seed, batch_size=batch_size)
        det.calibrate(det.score(x[val_idx], batch_size=batch_size), fpr)
    if cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save({**{k: v.detach().cpu() for k, v in det.state().items()},
                        "_threshold": torch.tensor(det.threshold, dtype=torch.float64),
                        "_scale": torch.tensor(det.scale, dtype=torch.float64)}, tmp)
            tmp.replace(path)  # atomic: concurrent audits never read half a file
        except OSError:  # a read-only home: work without the cache
            pass
    return det


# ------------------------------------------------------------------------------- adaptive attack
class DetectorAwarePGD:
    """The detector-aware adaptive attack (Carlini & Wagner 2017): Linf/L2 PGD on the combined objective

        ``min(max_{k != y} z_k - z_y, kappa) - lam * relu((score(x) - threshold) / scale + margin)``

    so the search first crosses the decision boundary and then pulls the score under the threshold
    (``scale``: the spread of clean validation scores, so one ``lam`` fits every detector). Success
    means **misclassified and accepted**; a sample is frozen at its first successful iterate (best
    iterate), and the real forward pass (not the BPDA view) judges it. Squeezers are crossed by BPDA.

    ``attack(detector, x (N, C, H, W), y (N,), threat, ids=..., seed=...) -> (N, C, H, W)``
    """

    def __init__(self, *, steps: int = 50, restarts: int = 1, lam: float = 1.0, kappa: float = 2.0,
                 margin: float = 0.1, rel_step_size: float | None = None) -> None:
        self.steps, self.restarts, self.lam, self.kappa, self.margin = steps, restarts, lam, kappa, margin
        self.rel_step_size = rel_step_size

    def settings(self) -> dict[str, Any]:
        return {"steps": self.steps, "restarts": self.restarts, "lam": self.lam, "kappa": self.kappa,
                "margin": self.margin, "rel_step_size": self.rel_step_size}

    def success(self, detector: Detector, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``(N,)`` bool: misclassified by the classifier AND accepted by the detector."""
        with torch.no_grad(), eval_mode(detector.model):
            wrong = detector.model(x).argmax(1) != y
        return wrong & ~detector.reject(x)

    def __call__(self, detector: Detector, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
                 ids: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
        from robustaudit.attacks.gradient import random_start
        from robustaudit.core.rng import stream_key

        if threat.eps == 0 or not len(x):
            return x.clone()
        ids = torch.arange(len(x)) if ids is None else ids.cpu()
        x0 = x.detach()
        best = x0.clone()
        done = self.success(detector, x0, y)
        # a step that starts at half the radius and decays (cosine) to 1/50 of it: small fixed steps
        # never cross the rounding boundaries of a bit-depth squeezer, large ones never settle
        top = self.rel_step_size if self.rel_step_size is not None else 0.5
        alphas = [threat.eps * (0.02 * top / 0.5 + (top - 0.02 * top / 0.5) * 0.5 * (1 + math.cos(math.pi * t / self.steps)))
                  for t in range(self.steps)]
        model = detector.model
        with eval_mode(model), torch.enable_grad():
            for restart in range(self.restarts):
                active = (~done).nonzero().squeeze(1)
                if not len(active):
                    break
                key = stream_key(seed, "detector-aware-pgd", threat.norm, threat.eps, restart)
                xa = random_start(x0[active], ids[active.cpu()], threat, key)
                ya, xo = y[active], x0[active]
                for step in range(self.steps):
                    alpha = alphas[step]
                    xa = xa.detach().requires_grad_(True)
                    logits = model(xa)
                    true = logits.gather(1, ya[:, None]).squeeze(1)
                    other = logits.masked_fill(F.one_hot(ya, logits.shape[1]).bool(), -math.inf).amax(1)
                    s = detector.score(xa, differentiable=True, logits=logits)
                    over = F.relu((s - detector.threshold) / detector.scale + self.margin)
                    obj = (other - true).clamp_max(self.kappa) - self.lam * over
                    (grad,) = torch.autograd.grad(obj.sum(), xa)
                    with torch.no_grad():
                        # judge this iterate by the real forward (BPDA only shaped the gradient)
                        ok = (logits.argmax(1) != ya) & ~(detector.score(xa.detach()) > detector.threshold)
                        hit = active[ok]
                        best[hit] = xa.detach()[ok]
                        done[hit] = True
                        xa = xa + alpha * ascent_direction(grad, threat.norm)
                        xa = clip_to_bounds(xo + project(xa - xo, threat.norm, threat.eps), threat.bounds)
                        # samples already broken stop moving: freeze them at their successful point
                        xa = torch.where(ok.view(-1, *[1] * (x.dim() - 1)), best[active], xa)
                with torch.no_grad():  # the last step's point
                    ok = (model(xa).argmax(1) != ya) & ~(detector.score(xa) > detector.threshold)
                    best[active[ok]] = xa[ok]
                    done[active[ok]] = True
                    if restart == self.restarts - 1:
                        left = active[~done[active]]
                        # unbroken: return the last iterate (what a report's examples would show)
                        best[left] = xa[~done[active]]
        best = clip_to_bounds(x0 + project(best - x0, threat.norm, threat.eps), threat.bounds)
        return best.to(dtype=x.dtype)


def plain_attack(attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
                 ids: torch.Tensor, seed: int) -> torch.Tensor:
    """The audit's attack on the classifier alone (what a detector is usually evaluated against)."""
    return attack(model, x, y, threat, ids=ids, seed=seed)
