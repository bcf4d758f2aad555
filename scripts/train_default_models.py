"""Reproduce the shipped catalog weights: ``digits-cnn``, ``-pgdat``, ``-trades`` and ``-ls``.

Trains on the fixed digits train split (``robustaudit.data.digits``), evaluates clean and PGD-50 (5
restarts) accuracy at Linf eps = 0.2 on the test split, writes ``<name>.pt`` and a ``<name>.json``
record (sha256, settings, measured numbers) into ``src/robustaudit/models/weights/``. Deterministic on
CPU: same torch version, same bytes. Takes about 8 minutes on a 2-core CPU (PGD-AT and TRADES about
3 minutes each, the others seconds).

    python scripts/train_default_models.py [--only digits-cnn]

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
from robustaudit.data.digits import digits_split
from robustaudit.defenses.training import TrainConfig, train
from robustaudit.models.catalog import WEIGHTS_DIR, sha256_of
from robustaudit.models.zoo.digits import DigitsCNN

RECIPES = {
    "digits-cnn": TrainConfig(defense="standard", epochs=30),
    "digits-cnn-pgdat": TrainConfig(defense="pgd-at", epochs=40, eps=0.2, attack_steps=10),
    "digits-cnn-trades": TrainConfig(defense="trades", epochs=40, eps=0.2, attack_steps=10, settings={"beta": 6.0}),
    "digits-cnn-ls": TrainConfig(defense="label-smoothing", epochs=30, settings={"alpha": 0.1}),
}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log = logging.getLogger("train")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(RECIPES))
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    tr, te = digits_split("train"), digits_split("test")
    xtr, ytr = tr.load(range(len(tr)))
    xte, yte = te.load(range(len(te)))
    for name, cfg in RECIPES.items():
        if args.only and name != args.only:
            continue
        torch.manual_seed(cfg.seed)
        model = DigitsCNN()
        history = train(model, xtr, ytr, cfg, on_epoch=lambda e, l, a: log.info(f"{name} epoch {e + 1}: loss {l:.4f} acc {a:.4f}"))
        with torch.no_grad():
            clean = (model(xte).argmax(1) == yte).float().mean().item()
        threat = ThreatModel("linf", 0.2)
        adv = PGD(steps=50, restarts=5)(model, xte, yte, threat, seed=1)
        with torch.no_grad():
            robust = (model(adv).argmax(1) == yte).float().mean().item()
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"{name}.pt"
        torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, path)
        record = {
            "name": name,
            "sha256": sha256_of(path),
            "torch": torch.__version__,
            "train": cfg.record(),
            "train_seconds": round(history.seconds, 1),
            "reported": {"clean_accuracy": round(clean, 4), "pgd50x5_linf_0.2": round(robust, 4)},
        }
        (args.out / f"{name}.json").write_text(json.dumps(record, indent=2) + "\n")
        log.info(f"{name}: clean {clean:.4f}, PGD-50x5 @ linf 0.2: {robust:.4f}, sha256 {record['sha256']}")


if __name__ == "__main__":
    main()
