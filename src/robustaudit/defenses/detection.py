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

The detector-aware adaptive attack is the registered attack ``detector-aware-pgd``
(:class:`~robustaudit.attacks.detector_aware.DetectorAwarePGD`, re-exported here); called with a
detector instead of a model, it attacks the classifier and the detector together.

:func:`fit_detector` fits one on a data split and caches the fitted state in a file keyed by the
model's weights (see :func:`cache_dir`); deleting the cache only costs a refit.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from robustaudit.attacks.base import Attack
from robustaudit.attacks.detector_aware import DetectorAwarePGD
from robustaudit.core.errors import UserError, unknown
from robustaudit.core.modes import eval_mode
from robustaudit.core.threat import ThreatModel
from robustaudit.defenses.detector_base import DEFAULT_FPR, Detector
from robustaudit.defenses.detectors import FeatureSqueezing, Mahalanobis, MetzenDetector, bit_depth, median_filter

#: Bumped when a fitted state's layout or meaning changes: old cache files are then ignored.
CACHE_VERSION = 1
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


def plain_attack(attack: Attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, *,
                 ids: torch.Tensor, seed: int) -> torch.Tensor:
    """The audit's attack on the classifier alone (what a detector is usually evaluated against)."""
    return attack(model, x, y, threat, ids=ids, seed=seed)


# re-exported: callers import the detector classes, their pieces and the adaptive attack from here
__all__ = ["CACHE_VERSION", "DEFAULT_FPR", "DETECTORS", "Detector", "DetectorAwarePGD", "FeatureSqueezing",
           "Mahalanobis", "MetzenDetector", "VALIDATION_SHARE", "bit_depth", "cache_dir", "describe",
           "detector_class", "detector_names", "fit_detector", "median_filter", "model_hash", "parse_detectors",
           "plain_attack", "split_for_fit"]
