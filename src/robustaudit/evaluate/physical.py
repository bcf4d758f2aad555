"""Physical-world proxies (Kurakin et al. 2016): which adversarial examples survive a print, a photo, a codec.

For each model and attack of the audit, the adversarial examples at the summary eps are recomputed on a
subsample (evenly spread over the audited samples, like the sanity checks; the same keyed draws as the
matrix, without its survivor cascade) and passed through each transform of
:func:`robustaudit.data.transforms.physical_transforms`. As in the paper, the destruction rate of a
transform T counts only images whose clean version is classified correctly both before and after T,
and whose adversarial version is misclassified:

    d = #{k : C(x_k) and C(T(x_k)) and not C(adv_k) and C(T(adv_k))}
        / #{k : C(x_k) and C(T(x_k)) and not C(adv_k)}

with ``C`` "classified correctly". An image the transform itself ruins (T(x) wrong) says nothing about the
perturbation and is left out; ``clean_kept`` reports how many clean images T keeps correct, so a transform
too harsh to judge by shows up as such. A destruction rate near 0 means the perturbations survive T; near
1, T removes them (and a camera or printer doing T would too).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from robustaudit.attacks.base import Attack, AttackKind, UniversalAttack
from robustaudit.core.errors import UserError
from robustaudit.core.modes import eval_mode, on_device
from robustaudit.core.norms import lp_norm
from robustaudit.core.task import predictions
from robustaudit.core.threat import ThreatModel
from robustaudit.data.base import ImageData
from robustaudit.data.transforms import Transform, physical_transforms
from robustaudit.evaluate.metrics import wilson_interval
from robustaudit.evaluate.artifacts import Artifacts
from robustaudit.evaluate.patch import evaluate_patches, patch_columns
from robustaudit.evaluate.runner import AttackEntry, ModelEntry, Progress
from robustaudit.evaluate.stages import Stage, Stages

#: Samples per model the proxies recompute adversarial examples on (evenly spread over the audit).
MAX_SAMPLES = 256


def destruction(clean_ok: torch.Tensor, adv_ok: torch.Tensor, t_clean_ok: torch.Tensor,
                t_adv_ok: torch.Tensor) -> tuple[int, int]:
    """Kurakin et al.'s destruction count: ``(destroyed, n)``, all inputs ``(m,)`` bool "classified correctly"
    for the clean image, the adversarial one, and both after the transform. ``n`` counts the images that
    are clean-correct before and after the transform and adversarial; ``destroyed`` those of them whose
    transformed adversarial version is correct again."""
    counted = clean_ok & t_clean_ok & ~adv_ok
    return int((counted & t_adv_ok).sum()), int(counted.sum())


def evaluate_physical(
    entries: Sequence[ModelEntry],
    data: ImageData,
    ids: Sequence[int],
    attacks: Sequence[AttackEntry],
    fitted: dict[tuple[str, str, float], Attack],
    *,
    eps: float,
    norm: str,
    seed: int,
    device: torch.device,
    batch_size: int,
    transforms: Sequence[Transform] | None = None,
    max_samples: int = MAX_SAMPLES,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The ``provenance["physical"]`` block: one row per model × attack × transform at ``eps``.

    Universal attacks use their fitted artifact at ``eps`` (from ``fitted``; skipped when there is none);
    a minimal-norm attack runs unbounded and counts as adversarial only within ``eps``.
    """
    t0 = time.perf_counter()
    transforms = list(physical_transforms() if transforms is None else transforms)
    m = min(len(ids), max_samples)
    picked = [ids[int(k * len(ids) / m)] for k in range(m)]
    x_all, y_all = data.load(picked)
    id_t = torch.tensor(picked)
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for entry in entries:
        model = entry.module
        with on_device(model, device), eval_mode(model):
            clean_ok = _correct(model, x_all, y_all, device, batch_size)
            t_clean = {t.name: _correct(model, t(x_all, id_t, seed), y_all, device, batch_size) for t in transforms}
            for a in attacks:
                attack = _attack_at(entry.name, a, eps, fitted)
                if attack is None:
                    skipped.append({"model": entry.name, "attack": a.name, "reason": "not fitted at this eps"})
                    continue
                if progress is not None:
                    progress.start(f"{entry.name}: physical proxies for {a.name}", m)
                adv = _adversarial(model, attack, x_all, y_all, id_t, eps, norm, seed, device, batch_size, progress)
                adv_ok = _correct(model, adv, y_all, device, batch_size)
                for t in transforms:
                    t_adv = _correct(model, t(adv, id_t, seed), y_all, device, batch_size)
                    destroyed, n = destruction(clean_ok, adv_ok, t_clean[t.name], t_adv)
                    kept = int((clean_ok & t_clean[t.name]).sum())
                    lo, hi = wilson_interval(destroyed, n)
                    rows.append({"model": entry.name, "attack": a.name, "transform": t.name,
                                 "n_adversarial": int((clean_ok & ~adv_ok).sum()), "n": n, "destroyed": destroyed,
                                 # None, not NaN, without a count: results.json is strict JSON
                                 "rate": destroyed / n if n else None, "ci": [lo, hi],
                                 "clean_kept": kept / int(clean_ok.sum()) if int(clean_ok.sum()) else None})
    out = {"eps": float(eps), "norm": norm, "n_samples": m,
           "transforms": [{"name": t.name, "description": t.description} for t in transforms],
           "rows": rows, "seconds": round(time.perf_counter() - t0, 3)}
    if skipped:
        out["skipped"] = skipped
    return out


def _attack_at(model: str, a: AttackEntry, eps: float, fitted: dict[tuple[str, str, float], Attack]) -> Attack | None:
    if isinstance(a.attack, UniversalAttack):
        return fitted.get((model, a.name, float(eps)))
    return a.attack


def _correct(model, x: torch.Tensor, y: torch.Tensor, device, batch_size: int) -> torch.Tensor:
    """Per sample: classified correctly. ``(m,)`` bool on the CPU."""
    out = []
    for s in range(0, len(x), batch_size):
        with torch.no_grad():
            out.append(predictions(model(x[s : s + batch_size].to(device))).cpu() == y[s : s + batch_size])
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


def _adversarial(model, attack: Attack, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, eps: float, norm: str,
                 seed: int, device, batch_size: int, progress: Progress | None) -> torch.Tensor:
    """Adversarial examples of ``x`` ``(m, C, H, W)`` at ``eps`` (on the CPU); a minimal-norm attack's
    points farther than ``eps`` are replaced by the clean image (not adversarial within the budget)."""
    minimal = attack.kind is AttackKind.MINIMAL_NORM
    threat = ThreatModel(norm, float("inf") if minimal else eps)
    out = []
    for s in range(0, len(x), batch_size):
        xs, ys = x[s : s + batch_size].to(device), y[s : s + batch_size].to(device)
        adv = attack(model, xs, ys, threat, ids=ids[s : s + batch_size], seed=seed).detach()
        if minimal:
            far = lp_norm(adv - xs, norm) > eps * (1 + 1e-5)
            adv = torch.where(far.view(-1, 1, 1, 1), xs, adv)
        out.append(adv.cpu())
        if progress is not None:
            progress.advance(len(xs))
    return torch.cat(out)


def check_patch_norm(attacks: Sequence[AttackEntry], norm: str) -> None:
    """Refuse, before anything runs, an audit mixing the patch threat model with other attacks: eps means
    an area share under ``--norm patch`` and a radius under every other norm."""
    patches = [a for a in attacks if "patch" in a.attack.norms]
    if norm == "patch":
        other = [a for a in attacks if "patch" not in a.attack.norms]
        if other:
            raise UserError(f"--norm patch is the adversarial patch's threat model (eps = share of the image area); "
                            f"attack '{other[0].name}' does not take it: audit it in a separate run with --norm linf "
                            "or l2, or use --attack patch")
    elif patches:
        raise UserError(f"attack '{patches[0].name}' needs --norm patch: its eps is the patch's share of the image "
                        "area (e.g. --norm patch --eps 0.05,0.1,0.2)")


def physical_sections(
    artifacts: Artifacts,
    stages: Stages,
    entries: Sequence[ModelEntry],
    data: ImageData,
    ids: Sequence[int],
    attacks: Sequence[AttackEntry],
    grid: Sequence[float],
    *,
    physical: bool,
    norm: str,
    seed: int,
    device: torch.device,
    batch_size: int,
    progress: Progress | None,
    summary_eps: float,
    train_data: Callable[[], ImageData | None],
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The audit's ``provenance["patch"]`` block (when it has patch columns) and ``provenance["physical"]``
    (when ``physical``), each a stage (stored; read back on resume). Patches the runner did not fit (a cell
    without survivors) are fitted here (opening ``train_data()`` only then) into ``artifacts``."""
    patches = world = None
    if patch_columns(attacks):
        patches = stages.run(Stage("patch", lambda: _patch_section(
            artifacts, entries, data, ids, attacks, grid, seed=seed, device=device, batch_size=batch_size,
            progress=progress, train_data=train_data)))
    if physical:
        world = stages.run(Stage("physical", lambda: evaluate_physical(
            entries, data, ids, attacks, artifacts.fitted(), eps=summary_eps, norm=norm, seed=seed, device=device,
            batch_size=batch_size, progress=progress)))
    return patches, world


def _patch_section(artifacts: Artifacts, entries: Sequence[ModelEntry], data: ImageData, ids: Sequence[int],
                   attacks: Sequence[AttackEntry], grid: Sequence[float], *, seed: int, device: torch.device,
                   batch_size: int, progress: Progress | None, train_data: Callable[[], ImageData | None]
                   ) -> dict[str, Any]:
    """:func:`~robustaudit.evaluate.patch.evaluate_patches` over every model × patch column × eps, after fitting
    the patches that are not at hand (deterministic: keyed by the seed), their rows linked to the artifacts."""
    columns = patch_columns(attacks)
    by_name = {e.name: e for e in entries}
    keys = sorted((e.name, a.name, float(eps)) for e in entries for a in columns for eps in grid)
    missing = [k for k in keys if artifacts.get(k) is None]
    train = train_data() if missing else None
    known = {k: r for k, r in zip(artifacts.keys(), artifacts.records)}
    for key in missing:
        if train is None:
            continue
        model, attack = by_name[key[0]].module, next(a for a in columns if a.name == key[1])
        with on_device(model, device), eval_mode(model):
            patch = attack.attack.fit(model, train, ThreatModel("patch", key[2]), seed=seed, device=device,
                                      progress=progress)
        record = known.get(key) or {"model": key[0], "attack": key[1], "eps": key[2],
                                    "note": "fitted again for the patch section"}
        artifacts.put(key, patch, dict(record))
    rows = evaluate_patches(entries, data, ids, attacks, grid, artifacts.fitted(), seed=seed, device=device,
                            batch_size=batch_size, progress=progress)
    link_artifacts(rows, artifacts.records)
    return rows


def link_artifacts(patches: dict[str, Any] | None, fits: list[dict[str, Any]]) -> None:
    """Point each patch row at its saved artifact (``artifacts/....png`` beside the ``.pt``), relative to ``out``."""
    if patches is None:
        return
    saved = {(f["model"], f["attack"], f["eps"]): f["artifact"] for f in fits if f.get("artifact")}
    for row in patches["rows"]:
        pt = saved.get((row["model"], row["attack"], row["eps"]))
        if pt is not None:
            row["artifact"] = str(Path(pt).with_suffix(".png"))
            row["artifact_pt"] = pt
