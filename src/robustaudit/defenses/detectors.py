"""The detectors: feature squeezing (Xu et al. 2018), Mahalanobis (Lee et al. 2018) and a detector
subnetwork (Metzen et al. 2017). See :mod:`robustaudit.defenses.detection` for what each looks at."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustaudit.attacks.wrappers import BPDAFunction
from robustaudit.core.errors import UserError
from robustaudit.core.threat import ThreatModel
from robustaudit.defenses.detector_base import Detector, Penultimate


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
        self._features = Penultimate(model)
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
        self._features = Penultimate(model)
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
