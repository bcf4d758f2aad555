"""Train ``unet-tiny`` on ``digit-scenes`` and write its shipped weights.

What it does: standard training (pixel-wise cross-entropy, 255 ignored) of
:func:`robustaudit.models.zoo.unet.unet_tiny` on the 1000 train scenes with Adam and a one-cycle
learning rate, then measures clean mIoU and pixel accuracy on the 200 test scenes and writes
``unet-tiny.pt`` (a state_dict) and ``unet-tiny.json`` (sha256, settings, measured numbers) into
``src/robustaudit/models/weights/``.

Reproducible bit for bit on a CPU: one thread, ``torch.manual_seed(SEED)`` for the initialisation,
minibatch order from a ``torch.Generator`` seeded per epoch, no data loader workers. After retraining,
copy the printed sha256 into ``_SHA256["unet-tiny"]`` in ``robustaudit/models/zoo/__init__.py``.

Usage: ``python scripts/train_segmentation_model.py [--out DIR] [--epochs N]``
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from robustaudit.core.task import IGNORE_INDEX
from robustaudit.data.digit_scenes import digit_scenes_split
from robustaudit.evaluate.segmetrics import (
    class_iou,
    confusion_matrix,
    miou,
    pixel_accuracy,
)
from robustaudit.models.catalog import WEIGHTS_DIR, sha256_of
from robustaudit.models.zoo.unet import UNET_TINY, UNet

SEED = 0
EPOCHS = 30
BATCH_SIZE = 16
LR = 0.003
WEIGHT_DECAY = 1e-4
# background is ~85% of the valid pixels: down-weighted so the digits' classes drive the gradient
BACKGROUND_WEIGHT = 0.2

log = logging.getLogger("train_segmentation_model")


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Confusion matrix ``(K, K)`` of ``model`` on ``x (N, C, H, W)``, ``y (N, H, W)``, in eval mode."""
    model.eval()
    preds = torch.cat([model(x[i : i + 100]).argmax(1) for i in range(0, len(x), 100)])
    return confusion_matrix(preds, y, num_classes)


def train(epochs: int = EPOCHS, log_every: int = 0) -> tuple[UNet, float]:
    """Train ``unet-tiny`` from scratch; returns the model (eval mode) and the training seconds."""
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    train_data, test_data = digit_scenes_split("train"), digit_scenes_split("test")
    x, y = train_data.load(range(len(train_data)))
    model = UNet(**UNET_TINY)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps_per_epoch = -(-len(x) // BATCH_SIZE)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=epochs * steps_per_epoch)
    weight = torch.ones(train_data.num_classes)
    weight[0] = BACKGROUND_WEIGHT
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SEED * 1000 + epoch))
        total = 0.0
        for i in range(0, len(x), BATCH_SIZE):
            idx = order[i : i + BATCH_SIZE]
            loss = F.cross_entropy(model(x[idx]), y[idx], weight=weight, ignore_index=IGNORE_INDEX)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        msg = f"epoch {epoch + 1}/{epochs}: train loss {total / len(x):.4f}"
        if log_every and (epoch + 1) % log_every == 0:
            xt, yt = test_data.load(range(len(test_data)))
            msg += f", test mIoU {miou(evaluate(model, xt, yt, test_data.num_classes)):.4f}"
        log.info(msg)
    seconds = time.perf_counter() - start
    return model.eval(), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="where to write unet-tiny.pt/.json")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="other than the default: exploration only")
    parser.add_argument("--log-every", type=int, default=0, help="test mIoU every N epochs (exploration only)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model, seconds = train(args.epochs, args.log_every)

    test_data = digit_scenes_split("test")
    xt, yt = test_data.load(range(len(test_data)))
    cm = evaluate(model, xt, yt, test_data.num_classes)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "unet-tiny.pt"
    torch.save(model.state_dict(), path)
    record = {
        "name": "unet-tiny",
        "sha256": sha256_of(path),
        "torch": torch.__version__,
        "architecture": {"builder": "robustaudit.models.zoo.unet:unet_tiny",
                         **{k: list(v) if isinstance(v, tuple) else v for k, v in UNET_TINY.items()},
                         "parameters": sum(p.numel() for p in model.parameters())},
        "train": {"data": "digit-scenes (train, 1000 scenes)",
                  "loss": f"pixel cross-entropy, 255 ignored, background weight {BACKGROUND_WEIGHT}",
                  "optimizer": "AdamW", "lr": LR, "schedule": "one-cycle", "weight_decay": WEIGHT_DECAY,
                  "epochs": args.epochs, "batch_size": BATCH_SIZE, "seed": SEED, "threads": 1},
        "train_seconds": round(seconds, 1),
        "reported": {"clean_miou": round(miou(cm), 4), "clean_pixel_accuracy": round(pixel_accuracy(cm), 4)},
        "class_iou": {name: (round(v, 4) if v is not None else None)
                      for name, v in zip(test_data.class_names or [], class_iou(cm), strict=True)},
        "evaluated_on": "digit-scenes test split, all 200 scenes",
    }
    (args.out / "unet-tiny.json").write_text(json.dumps(record, indent=2) + "\n")
    log.info(
        f"unet-tiny: clean mIoU {record['reported']['clean_miou']:.4f}, pixel accuracy "
        f"{record['reported']['clean_pixel_accuracy']:.4f}, {seconds:.0f} s, sha256 {record['sha256']}"
    )


if __name__ == "__main__":
    main()
