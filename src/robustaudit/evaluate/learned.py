"""The learned-attack report: what each fitted generator (ATN, AdvGAN) does on held-out data.

For every generator the runner fitted (one per model × learned attack × eps), on the audited (held-out)
samples: its own success rate with a 95% Wilson interval (the generator applied once to every
clean-correct sample, not the runner's eps sweep on survivors), targeted success when it has a target,
the mean perturbation norms (Linf and L2), its throughput in images/s against PGD-10 on the same batch,
model and device (measured in this process, back to back), and transfer: the same adversarial images
scored on the other audited models and on the catalog models made for the same data (input shape and
classes).

The block is ``provenance["learned"]`` = ``{"reference": {...}, "generators": [...]}`` (additive; the
schema version stays).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

from robustaudit.attacks.base import Attack
from robustaudit.attacks.learned import GeneratorAttack
from robustaudit.core.modes import eval_mode, on_device
from robustaudit.core.norms import lp_norm
from robustaudit.core.threat import ThreatModel
from robustaudit.data.base import ImageData
from robustaudit.evaluate.metrics import wilson_interval
from robustaudit.evaluate.runner import ModelEntry

#: The reference the generators' throughput is compared with: a fixed-cost PGD (every sample, every step).
PGD_REFERENCE = {"attack": "pgd", "steps": 10, "restarts": 1, "early_stop": False}


def _rate(k: int, n: int) -> dict[str, Any]:
    lo, hi = wilson_interval(k, n)
    return {"k": k, "n": n, "rate": k / n if n else None, "ci95": [lo, hi]}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(fn, n: int, device: torch.device, *, repeats: int) -> float:
    """``n / median seconds`` of ``fn()`` over ``repeats`` timed calls after one warm-up."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return n / max(statistics.median(times), 1e-9)


def transfer_models(entries: Sequence[ModelEntry], data: ImageData) -> list[tuple[str, nn.Module, str]]:
    """``(name, module, source)`` of every model a generator's images are also scored on: the audited models
    and the catalog models for the same data set, input shape and class count (each once)."""
    from robustaudit.models.catalog import get_card, model_names
    from robustaudit.models.loading import load_model

    out = [(e.name, e.module, "audited") for e in entries]
    audited = {e.name for e in entries} | {e.info.get("spec") for e in entries}
    for name in model_names():
        card = get_card(name)
        if (name in audited or card.dataset != data.name or tuple(card.input_shape) != tuple(data.sample_shape)
                or card.num_classes != data.num_classes):
            continue
        out.append((name, load_model(name).module, "catalog"))
    return out


def learned_report(
    fitted: dict[tuple[str, str, float], Attack],
    fits: list[dict[str, Any]],
    entries: Sequence[ModelEntry],
    data: ImageData,
    ids: Sequence[int],
    *,
    norm: str,
    device: torch.device,
    batch_size: int,
    seed: int,
    repeats: int = 5,
) -> dict[str, Any] | None:
    """The ``provenance["learned"]`` block for the generators in ``fitted`` (``None`` when there are none).

    Args:
        fitted: the runner's fitted universal attacks by (model, attack column, eps).
        fits: the runner's fit records (seconds, passes), matched by the same key.
        entries: the audited models (the generators' targets and transfer targets).
        data, ids: the held-out samples the audit ran on.
        repeats: timed calls per throughput figure (after one warm-up).
    """
    generators = {k: a for k, a in fitted.items() if isinstance(a, GeneratorAttack)}
    if not generators:
        return None
    from robustaudit.attacks.gradient import PGD

    by_name = {e.name: e for e in entries}
    others = transfer_models(entries, data)
    ids = list(ids)
    chunks = [ids[i:i + batch_size] for i in range(0, len(ids), batch_size)]
    batches = [data.load(c) for c in chunks]
    clean: dict[str, list[torch.Tensor]] = {}  # per model: clean-correct mask per batch
    for name, module, _ in others:
        with on_device(module, device), eval_mode(module), torch.no_grad():
            clean[name] = [(module(x.to(device)).argmax(1) == y.to(device)).cpu() for x, y in batches]
    pgd = PGD(steps=PGD_REFERENCE["steps"], restarts=PGD_REFERENCE["restarts"], early_stop=False)
    rows = []
    for (model_name, attack, eps), gen in generators.items():
        entry = by_name[model_name]
        threat = ThreatModel(norm, eps)
        advs = []
        linf, l2 = [], []
        with on_device(entry.module, device), eval_mode(entry.module):
            for (x, y), ok in zip(batches, clean[model_name]):
                x, y = x.to(device), y.to(device)
                adv = gen(entry.module, x, y, threat, seed=seed)
                advs.append(adv)
                delta = (adv - x)[ok.to(device)]
                linf += lp_norm(delta, "linf").tolist()
                l2 += lp_norm(delta, "l2").tolist()
            n_batch = min(batch_size, len(ids))
            xb, yb = batches[0][0][:n_batch].to(device), batches[0][1][:n_batch].to(device)
            gen_speed = images_per_second(partial(gen, entry.module, xb, yb, threat, seed=seed), n_batch, device,
                                          repeats=repeats)
            pgd_speed = images_per_second(partial(pgd, entry.module, xb, yb, threat, seed=seed), n_batch, device,
                                          repeats=max(1, repeats // 2))
        success = {}
        transfer = []
        for name, module, source in others:
            with on_device(module, device), eval_mode(module), torch.no_grad():
                broken = [(module(a).argmax(1) != y.to(device)).cpu() for a, (_, y) in zip(advs, batches)]
                hits = [module(a).argmax(1).cpu() for a in advs] if gen.target is not None else None
            ok = torch.cat(clean[name])
            k = int((torch.cat(broken) & ok).sum())
            rate = _rate(k, int(ok.sum()))
            if gen.target is not None:
                labels = torch.cat([y for _, y in batches])
                eligible = ok & (labels != gen.target)
                rate["targeted"] = _rate(int((torch.cat(hits) == gen.target)[eligible].sum()), int(eligible.sum()))
            if name == model_name:
                success = rate
            else:
                transfer.append({"model": name, "source": source, **rate})
        fit = next((f for f in fits if (f["model"], f["attack"], f["eps"]) == (model_name, attack, eps)), {})
        rows.append({
            "model": model_name, "attack": attack, "eps": eps, "norm": norm, "target": gen.target,
            "success": success,
            "mean_linf": statistics.fmean(linf) if linf else None,
            "mean_l2": statistics.fmean(l2) if l2 else None,
            "fit_seconds": fit.get("seconds", gen.meta.get("fit_seconds")),
            "fit_passes": {"forward": fit.get("forward_passes"), "backward": fit.get("backward_passes")},
            "loaded_from": gen.meta.get("loaded_from"),
            "train_success": gen.meta.get("train", {}).get("last_epoch_success"),
            "throughput": {"batch": n_batch, "generator_images_per_s": gen_speed, "pgd_images_per_s": pgd_speed,
                           "speedup": gen_speed / pgd_speed if pgd_speed else None},
            "transfer": transfer,
        })
    return {"reference": {**PGD_REFERENCE, "device": str(device), "repeats": repeats}, "generators": rows}
