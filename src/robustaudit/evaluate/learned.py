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
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from functools import partial
from typing import Any

import torch
from torch import nn

from robustaudit.attacks.base import Attack
from robustaudit.attacks.learned import GeneratorAttack
from robustaudit.core.modes import eval_mode, on_device
from robustaudit.core.norms import lp_norm
from robustaudit.core.task import predictions
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


def images_per_second(fns: Sequence[Callable[[], Any]], n: int, device: torch.device, *,
                      repeats: int) -> list[float]:
    """``n / median seconds`` of each of ``fns``, timed in turns (a, b, a, b, ...) after one warm-up each,
    so that a change of the machine's load during the measurement hits them alike and their ratio holds."""
    for fn in fns:
        fn()
    _sync(device)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[k].append(time.perf_counter() - t0)
    return [n / max(statistics.median(t), 1e-9) for t in times]


def transfer_models(entries: Sequence[ModelEntry], data: ImageData
                    ) -> tuple[list[tuple[str, nn.Module, str]], list[dict[str, str]]]:
    """``(name, module, source)`` of every model a generator's images are scored on: the audited models and
    the catalog models for the same data set, input shape and class count (each once); and the catalog
    models left out because they could not be loaded (``{"model", "reason"}``: a transfer figure is never
    worth failing the audit for)."""
    from robustaudit.core.errors import UserError
    from robustaudit.models.catalog import get_card, model_names
    from robustaudit.models.loading import load_model

    out = [(e.name, e.module, "audited") for e in entries]
    skipped = []
    audited = {e.name for e in entries} | {e.info.get("spec") for e in entries}
    for name in model_names():
        card = get_card(name)
        if (name in audited or card.dataset != data.name or tuple(card.input_shape) != tuple(data.sample_shape)
                or card.num_classes != data.num_classes):
            continue
        try:
            out.append((name, load_model(name).module, "catalog"))
        except UserError as exc:  # e.g. weights missing from a source checkout
            skipped.append({"model": name, "reason": str(exc)})
    return out, skipped


def _scores(module: nn.Module, adv: torch.Tensor, y: torch.Tensor, target: int | None) -> tuple[torch.Tensor, ...]:
    """``(broken, hit)`` per sample: misclassified; classified as ``target`` (all False without one)."""
    pred = predictions(module(adv)).cpu()
    return pred != y, (pred == target) if target is not None else torch.zeros_like(y, dtype=torch.bool)


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
    repeats: int = 3,
) -> dict[str, Any] | None:
    """The ``provenance["learned"]`` block for the generators in ``fitted`` (``None`` when there are none).

    Batches are streamed (loaded, attacked, scored on every model, dropped), so memory does not grow with
    the number of audited samples.

    Args:
        fitted: the runner's fitted universal attacks by (model, attack column, eps).
        fits: the runner's fit records (seconds, passes), matched by the same key.
        entries: the audited models (the generators' targets and transfer targets).
        data, ids: the held-out samples the audit ran on.
        repeats: timed calls per throughput figure (after one warm-up), generator and PGD in turns.
    """
    generators = {k: a for k, a in fitted.items() if isinstance(a, GeneratorAttack)}
    if not generators:
        return None
    from robustaudit.attacks.gradient import PGD

    by_name = {e.name: e for e in entries}
    others, skipped = transfer_models(entries, data)
    ids = list(ids)
    chunks = [ids[i:i + batch_size] for i in range(0, len(ids), batch_size)]
    pgd = PGD(steps=PGD_REFERENCE["steps"], restarts=PGD_REFERENCE["restarts"], early_stop=False)
    rows = []
    with ExitStack() as stack:
        for _, module, _ in others:  # every scoring model on the device once, in eval mode, restored after
            stack.enter_context(on_device(module, device))
            stack.enter_context(eval_mode(module))
        for (model_name, attack, eps), gen in generators.items():
            target_model = by_name[model_name].module
            threat = ThreatModel(norm, eps)
            labels, linf, l2, clean, broken, hit = _stream(gen, target_model, model_name, threat, others, data,
                                                           chunks, device, seed)
            throughput = _throughput([gen, pgd], target_model, data, ids[:min(batch_size, len(ids))], threat,
                                     device, seed, repeats)
            success, transfer = _success(gen.target, model_name, others, torch.cat(labels), clean, broken, hit)
            rows.append(_row((model_name, attack, eps), norm, gen, fits, success, (linf, l2), throughput, transfer))
    return {"reference": {**PGD_REFERENCE, "device": str(device), "repeats": repeats}, "generators": rows,
            **({"transfer_skipped": skipped} if skipped else {})}


def _stream(gen: GeneratorAttack, target_model: nn.Module, model_name: str, threat: ThreatModel,
            others: Sequence[tuple[str, nn.Module, str]], data: ImageData, chunks: Sequence[Sequence[int]],
            device: torch.device, seed: int) -> tuple[list[torch.Tensor], list[float], list[float],
                                                      dict[str, list[torch.Tensor]], dict[str, list[torch.Tensor]],
                                                      dict[str, list[torch.Tensor]]]:
    """Attack every chunk with ``gen`` on ``target_model`` and score the images on every model in ``others``.

    Returns ``(labels, linf, l2, clean, broken, hit)``: the labels ``(B,)`` per chunk; the Linf and L2 norms of
    the perturbations of the samples ``target_model`` classifies correctly; and per scoring model, per chunk,
    ``(B,)`` bool: clean-correct, misclassified under attack, classified as the target.
    """
    labels, linf, l2 = [], [], []
    clean: dict[str, list[torch.Tensor]] = {name: [] for name, _, _ in others}
    broken: dict[str, list[torch.Tensor]] = {name: [] for name, _, _ in others}
    hit: dict[str, list[torch.Tensor]] = {name: [] for name, _, _ in others}
    for chunk in chunks:
        x, y = data.load(chunk)
        xd = x.to(device)
        adv = gen(target_model, xd, y.to(device), threat, seed=seed)
        labels.append(y)
        with torch.no_grad():
            for name, module, _ in others:
                clean[name].append(predictions(module(xd)).cpu() == y)
                b, h = _scores(module, adv, y, gen.target)
                broken[name].append(b)
                hit[name].append(h)
        delta = (adv - xd)[clean[model_name][-1].to(device)]
        linf += lp_norm(delta, "linf").tolist()
        l2 += lp_norm(delta, "l2").tolist()
    return labels, linf, l2, clean, broken, hit


def _success(target: int | None, model_name: str, others: Sequence[tuple[str, nn.Module, str]], y_all: torch.Tensor,
             clean: dict[str, list[torch.Tensor]], broken: dict[str, list[torch.Tensor]],
             hit: dict[str, list[torch.Tensor]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(success, transfer)``: the generator's rates on its own model, and on each other model in ``others``
    (``y_all (N,)`` the labels; the per-chunk masks as :func:`_stream` returns them)."""
    success: dict[str, Any] = {}
    transfer = []
    for name, _, source in others:
        ok = torch.cat(clean[name])
        rate = _rate(int((torch.cat(broken[name]) & ok).sum()), int(ok.sum()))
        if target is not None:
            eligible = ok & (y_all != target)
            rate["targeted"] = _rate(int((torch.cat(hit[name]) & eligible).sum()), int(eligible.sum()))
        if name == model_name:
            success = rate
        else:
            transfer.append({"model": name, "source": source, **rate})
    return success, transfer


def _throughput(attacks: Sequence[Attack], target_model: nn.Module, data: ImageData, batch_ids: Sequence[int],
                threat: ThreatModel, device: torch.device, seed: int, repeats: int) -> dict[str, Any]:
    """The ``throughput`` field: images/s of the generator and of PGD (``attacks``, in that order) on the
    batch ``batch_ids``, timed in turns by :func:`images_per_second`."""
    n_batch = len(batch_ids)
    xb, yb = (t.to(device) for t in data.load(batch_ids))
    gen, pgd = attacks
    gen_speed, pgd_speed = images_per_second(
        [partial(gen, target_model, xb, yb, threat, seed=seed), partial(pgd, target_model, xb, yb, threat,
                                                                          seed=seed)], n_batch, device,
        repeats=repeats)
    return {"batch": n_batch, "generator_images_per_s": gen_speed, "pgd_images_per_s": pgd_speed,
            "speedup": gen_speed / pgd_speed if pgd_speed else None}


def _row(key: tuple[str, str, float], norm: str, gen: GeneratorAttack, fits: list[dict[str, Any]],
         success: dict[str, Any], norms: tuple[list[float], list[float]], throughput: dict[str, Any],
         transfer: list[dict[str, Any]]) -> dict[str, Any]:
    """One ``generators`` row for the generator fitted at ``key`` = (model, attack column, eps); ``norms``:
    the Linf and L2 norms of its perturbations; ``fits``: the runner's fit records."""
    model_name, attack, eps = key
    linf, l2 = norms
    fit = next((f for f in fits if (f["model"], f["attack"], f["eps"]) == (model_name, attack, eps)), {})
    return {
        "model": model_name, "attack": attack, "eps": eps, "norm": norm, "target": gen.target,
        "success": success,
        "mean_linf": statistics.fmean(linf) if linf else None,
        "mean_l2": statistics.fmean(l2) if l2 else None,
        "fit_seconds": fit.get("seconds", gen.meta.get("fit_seconds")),
        "fit_passes": {"forward": fit.get("forward_passes"), "backward": fit.get("backward_passes")},
        "loaded_from": gen.meta.get("loaded_from"),
        "train_success": gen.meta.get("train", {}).get("last_epoch_success"),
        "throughput": throughput,
        "transfer": transfer,
    }
