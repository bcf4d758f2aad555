"""The universal-perturbation section of an audit: fooling rate vs eps, beside a random-noise control.

The matrix reads a ``uap`` column as robust accuracy (the eps sweep on survivors, like any fixed-eps attack).
What the UAP paper reports, and what this section adds (``provenance["uap"]``), is the *fooling rate*: the
share of held-out (audited) samples whose prediction ``x + v`` differs from the clean prediction, each
eps's perturbation applied alone to every sample (no survivor cascade). Beside it, the same rate for a
control of the same norm (:func:`~robustaudit.attacks.uap.noise_control`: random signs times eps for Linf,
a random direction of length eps for L2, one keyed draw per sample), with 95% Wilson intervals and a paired
one-sided exact test (McNemar: the samples fooled by one and not the other) of "UAP beats noise". And its
transfer: the same ``v`` on every other audited model (same data, so the same input shape), with that
model's own noise control on the same samples.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

import torch

from robustaudit.attacks.uap import UAP, UniversalPerturbation, noise_control
from robustaudit.core.modes import eval_mode, on_device
from robustaudit.core.norms import lp_norm
from robustaudit.core.task import predictions
from robustaudit.core.threat import ThreatModel
from robustaudit.data.base import ImageData
from robustaudit.evaluate.artifacts import Artifacts
from robustaudit.evaluate.metrics import binomial_tail, wilson_interval
from robustaudit.evaluate.runner import AttackEntry, ModelEntry, Progress
from robustaudit.evaluate.stages import Stage, Stages

__all__ = ["evaluate_uaps", "uap_columns", "uap_section"]

#: What the section's numbers mean, stored beside them.
DEFINITION = ("fooling rate: share of the audited samples whose prediction on clip(x + v) differs from the clean "
              "prediction; control: the same with keyed random noise of the same norm (linf: random signs times eps; "
              "l2: a random direction of length eps); p: one-sided exact McNemar test, UAP > control, on the same "
              "samples")


def uap_columns(attacks: Sequence[AttackEntry]) -> list[AttackEntry]:
    """The audit's universal-perturbation columns."""
    return [a for a in attacks if isinstance(a.attack, UAP)]


def uap_section(artifacts: Artifacts, stages: Stages, entries: Sequence[ModelEntry], data: ImageData,
                ids: Sequence[int], attacks: Sequence[AttackEntry], grid: Sequence[float], *, norm: str, seed: int,
                device: torch.device, batch_size: int, progress: Progress | None,
                train_data: Callable[[], ImageData | None]) -> dict[str, Any] | None:
    """``provenance["uap"]`` (a stage: stored, read back on resume), or ``None`` without ``uap`` columns.

    Perturbations the runner did not fit (a cell without survivors) are fitted here, on ``train_data()``
    (opened only then), into ``artifacts``."""
    columns = uap_columns(attacks)
    if not columns:
        return None

    def compute() -> dict[str, Any]:
        _fit_missing(artifacts, entries, columns, grid, norm=norm, seed=seed, device=device, progress=progress,
                     train_data=train_data)
        block = evaluate_uaps(entries, data, ids, columns, grid, artifacts.fitted(), norm=norm, seed=seed,
                              device=device, batch_size=batch_size, progress=progress)
        saved = {(f["model"], f["attack"], f["eps"]): f.get("artifact") for f in artifacts.records}
        for row in block["rows"]:
            row["artifact"] = saved.get((row["model"], row["attack"], row["eps"]))
        return block

    return stages.run(Stage("uap", compute))


def _fit_missing(artifacts: Artifacts, entries: Sequence[ModelEntry], columns: Sequence[AttackEntry],
                 grid: Sequence[float], *, norm: str, seed: int, device: torch.device, progress: Progress | None,
                 train_data: Callable[[], ImageData | None]) -> None:
    """Fit, into ``artifacts``, every (model, column, eps) perturbation not at hand (keyed: the runner's fit)."""
    keys = [(e.name, a.name, float(eps)) for e in entries for a in columns for eps in grid]
    missing = [k for k in keys if artifacts.get(k) is None]
    train = train_data() if missing else None
    if train is None:
        return
    by_name, known = {e.name: e for e in entries}, dict(zip(artifacts.keys(), artifacts.records))
    for key in missing:
        model, attack = by_name[key[0]].module, next(a for a in columns if a.name == key[1])
        t0 = time.perf_counter()
        with on_device(model, device), eval_mode(model):
            fitted = attack.attack.fit(model, train, ThreatModel(norm, key[2]), seed=seed, device=device,
                                       progress=progress)
        record = known.get(key) or {"model": key[0], "attack": key[1], "eps": key[2],
                                    "seconds": round(time.perf_counter() - t0, 3),
                                    "note": "fitted for the uap section (no survivors left in the matrix)"}
        artifacts.put(key, fitted, dict(record))


def evaluate_uaps(entries: Sequence[ModelEntry], data: ImageData, ids: Sequence[int], columns: Sequence[AttackEntry],
                  grid: Sequence[float], fitted: dict[tuple[str, str, float], Any], *, norm: str, seed: int,
                  device: torch.device, batch_size: int, progress: Progress | None = None) -> dict[str, Any]:
    """The block: one row per model × uap column × eps with a fitted perturbation in ``fitted``.

    Each row: the fooling rate on its own model and the noise control, and ``transfer``: the same two on each
    other audited model. Predictions ``(n,)`` of every model on clean and on noisy inputs are computed once.
    """
    t0 = time.perf_counter()
    ids = list(ids)
    pairs = [(e, a, float(eps)) for e in entries for a in columns for eps in grid
             if isinstance(fitted.get((e.name, a.name, float(eps))), UniversalPerturbation)]
    rows: list[dict[str, Any]] = []
    with ExitStack() as stack:
        for e in entries:  # every model on the device once, in eval mode, restored after
            stack.enter_context(on_device(e.module, device))
            stack.enter_context(eval_mode(e.module))
        if progress is not None:
            progress.start("universal perturbations vs noise", len(ids) * len(entries) * (1 + len(grid) + len(pairs)))
        predict = _Predictor(data, ids, device, batch_size, progress)
        clean = {e.name: predict(e.module, lambda x, i: x) for e in entries} if pairs else {}
        noisy: dict[tuple[str, float], torch.Tensor] = {}
        for eps in sorted({p[2] for p in pairs}):
            threat = ThreatModel(norm, eps)
            for e in entries:
                noisy[(e.name, eps)] = predict(e.module, lambda x, i, t=threat: _noisy(x, i, t, seed))
        for source, a, eps in pairs:
            uap, threat = fitted[(source.name, a.name, eps)], ThreatModel(norm, eps)
            by_model = {}
            for e in entries:  # its own model first, then the transfer targets
                on_uap = predict(e.module, lambda x, i, u=uap, t=threat: u.apply(x, t))
                by_model[e.name] = _rates(clean[e.name], on_uap, noisy[(e.name, eps)])
            rows.append(_row(source.name, a.name, eps, uap, threat, by_model))
    return {"norm": norm, "n_samples": len(ids), "definition": DEFINITION, "rows": rows,
            "seconds": round(time.perf_counter() - t0, 3)}


def _noisy(x: torch.Tensor, ids: torch.Tensor, threat: ThreatModel, seed: int) -> torch.Tensor:
    """The control's input: ``clip(x + noise)``, the noise keyed by (seed, sample id). ``(N, C, H, W)``."""
    noise = noise_control(ids, tuple(x.shape[1:]), threat.norm, threat.eps, seed, x.device, x.dtype)
    return (x + noise).clamp(*threat.bounds)


class _Predictor:
    """Predictions ``(n,)`` (on the CPU) of a model on ``transform(x, ids)`` over the audited samples."""

    def __init__(self, data: ImageData, ids: list[int], device: torch.device, batch_size: int,
                 progress: Progress | None) -> None:
        self.data, self.ids, self.device, self.batch_size, self.progress = data, ids, device, batch_size, progress

    def __call__(self, model: torch.nn.Module, transform: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                 ) -> torch.Tensor:
        out = []
        for s in range(0, len(self.ids), self.batch_size):
            batch = self.ids[s:s + self.batch_size]
            x, _ = self.data.load(batch)
            with torch.no_grad():
                out.append(predictions(model(transform(x.to(self.device), torch.tensor(batch)))).cpu())
            if self.progress is not None:
                self.progress.advance(len(batch))
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def _rates(clean: torch.Tensor, on_uap: torch.Tensor, on_noise: torch.Tensor) -> dict[str, Any]:
    """Fooling rates of the UAP and of the control on one model, ``(n,)`` predictions each, and the paired test."""
    fu, fn = on_uap != clean, on_noise != clean
    n, ku, kn = len(clean), int(fu.sum()), int(fn.sum())
    b, c = int((fu & ~fn).sum()), int((~fu & fn).sum())
    return {"n": n, "fooling": ku / n if n else None, "fooling_ci": list(wilson_interval(ku, n)),
            "control": kn / n if n else None, "control_ci": list(wilson_interval(kn, n)),
            "gap": (ku - kn) / n if n else None, "discordant": [b, c], "p_value": binomial_tail(b, c)}


def _row(model: str, attack: str, eps: float, uap: UniversalPerturbation, threat: ThreatModel,
         by_model: dict[str, dict[str, Any]]) -> dict[str, Any]:
    v = uap.delta(threat, uap.v[None])
    return {
        "model": model, "attack": attack, "eps": eps, **by_model[model],
        "v_norm": float(lp_norm(v, threat.norm)[0]), "fitted_eps": uap.eps,
        # a loaded perturbation saved at a larger eps is projected onto this eps's ball
        "projected": uap.eps > eps * (1 + 1e-9),
        "method": uap.record.get("method"), "fit_n": uap.record.get("fit_n"),
        "fit_fooling": uap.record.get("fit_fooling"), "loaded_from": uap.record.get("loaded_from"),
        "transfer": [{"model": name, **rates} for name, rates in by_model.items() if name != model],
    }
