"""Reproduce the shipped ``digits32`` weights: ``digits32-cnn`` and ``digits32-resnet``.

Standard training (``defenses.training.train``, Adam, cosine schedule, seed 0) on the digits32 train split
(the sklearn digits upsampled to 1×32×32, :func:`robustaudit.data.digits.digits32_split`), one torch
thread; evaluates clean and PGD-20 accuracy at Linf eps = 0.1 on the test split and writes ``<name>.pt``
and a ``<name>.json`` record (sha256, settings, measured numbers) into ``src/robustaudit/models/weights/``.
Deterministic on CPU with one thread: same torch version, same bytes. About a minute on a 2-core CPU.

    python scripts/train_digits32_models.py [--only digits32-cnn]

After retraining, copy the printed sha256 values into ``robustaudit/models/zoo/__init__.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from robustaudit.attacks.gradient import PGD
from robustaudit.core.threat import ThreatModel
from robustaudit.data.digits import digits32_split
from robustaudit.defenses.training import TrainConfig, train
from robustaudit.models.catalog import WEIGHTS_DIR, sha256_of
from robustaudit.models.zoo.digits32 import DIGITS32_MODELS

RECIPES = {
    "digits32-cnn": TrainConfig(defense="standard", epochs=15),
    "digits32-resnet": TrainConfig(defense="standard", epochs=15),
}
EVAL_EPS = 0.1


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log = logging.getLogger("train")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(RECIPES))
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    args = parser.parse_args()
    torch.set_num_threads(1)  # bit-reproducible: reductions split over threads change the float sums
    tr, te = digits32_split("train"), digits32_split("test")
    xtr, ytr = tr.load(range(len(tr)))
    xte, yte = te.load(range(len(te)))
    for name, cfg in RECIPES.items():
        if args.only and name != args.only:
            continue
        torch.manual_seed(cfg.seed)
        model = DIGITS32_MODELS[name][0]()
        history = train(model, xtr, ytr, cfg, on_epoch=lambda e, l, a, name=name: log.info(
            f"{name} epoch {e + 1}: loss {l:.4f} acc {a:.4f}"))
        model.eval()
        with torch.no_grad():
            clean = (model(xte).argmax(1) == yte).float().mean().item()
        adv = PGD(steps=20)(model, xte, yte, ThreatModel("linf", EVAL_EPS), seed=1)
        with torch.no_grad():
            robust = (model(adv).argmax(1) == yte).float().mean().item()
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"{name}.pt"
        torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, path)
        record = {
            "name": name,
            "data": "digits32",
            "sha256": sha256_of(path),
            "torch": torch.__version__,
            "train": cfg.record(),
            "train_seconds": round(history.seconds, 1),
            "reported": {"clean_accuracy": round(clean, 4), f"pgd20_linf_{EVAL_EPS:g}": round(robust, 4)},
        }
        (args.out / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
        log.info(f"{name}: clean {clean:.4f}, PGD-20 @ linf {EVAL_EPS:g}: {robust:.4f}, sha256 {record['sha256']}")


if __name__ == "__main__":
    main()
