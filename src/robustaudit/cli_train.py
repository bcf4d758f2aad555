"""``robustaudit train``: train a model with a training-time defense, write its checkpoint and model card."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from robustaudit.cli_common import EXIT_INTERRUPTED, EXIT_OK

if TYPE_CHECKING:
    from robustaudit.defenses.training import TrainConfig

TRAIN_EXAMPLES = """\
examples:
  robustaudit train --model digits-cnn --defense pgd-at --eps 0.2 --epochs 40 --out pgdat.pt
  robustaudit train --model digits-cnn --defense trades:beta=6 --eps 0.2 --epochs 40 --out trades.safetensors
  robustaudit train --model digits-cnn --defense fast-at --eps 0.2 --epochs 20 --augment --out fast.pt
  robustaudit train --model torchvision:resnet18 --data cifar10:~/data --defense pgd-at --eps 8/255 \\
      --epochs 30 --batch-size 128 --lr 1e-3 --out r18_pgdat.pt
  robustaudit audit --model pgdat.pt                  # the card pgdat.pt.json names the architecture

defenses (settings inline, like attacks: --defense NAME:key=value,...):
  standard                     cross-entropy on clean inputs
  pgd-at[:steps,rel_step_size] Madry et al.: cross-entropy on PGD examples
  trades[:beta=6,steps]        Zhang et al.: CE(f(x),y) + beta KL(f(x)||f(x'))
  mart[:beta=5,steps]          Wang et al.: boosted CE on x' + beta KL weighted by 1-p_y(x)
  fast-at[:alpha=1.25,guard_size=100,guard_drop=0.2]
                               Wong et al.: FGSM from a random start; stops and rolls back when the
                               held-out PGD accuracy collapses (catastrophic overfitting)
  free-at[:replays=4]          Shafahi et al.: each minibatch replayed m times, epochs / m
  input-grad[:lam=1]           CE + lam ||grad_x CE||^2
  jacobian[:lam=0.01,projections=1]  CE + lam * random-projection Jacobian norm (Hoffman et al.)
  label-smoothing[:alpha=0.1]  CE against smoothed labels

Writes CKPT (a state_dict) and CKPT.json, the model card: architecture, data, defense and settings,
eps, clean and PGD-20 accuracy on the test split (first 500), seed, seconds, torch version, sha256."""


def add_train_parser(sub) -> None:
    t = sub.add_parser(
        "train", help="train a model with a training-time defense; write a checkpoint and its model card",
        description="Train ARCH on the train split of --data with a defense, evaluate clean and PGD-20 accuracy "
        "on the test split, write --out (state_dict) and --out.json (model card).",
        epilog=TRAIN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--model", required=True, metavar="ARCH",
                   help="catalog name (its architecture, untrained), file.py:callable, package.module:callable, torchvision:ARCH")
    t.add_argument("--data", default="digits", metavar="D", help="digits (default), cifar10:ROOT, mnist:ROOT")
    t.add_argument("--defense", default="standard", metavar="NAME[:k=v,...]", help="see below (default standard)")
    t.add_argument("--eps", metavar="E", help="training radius, fractions allowed (8/255); default 0.2 on digits")
    t.add_argument("--norm", choices=["linf", "l2"], default="linf", help="threat-model norm (default linf)")
    t.add_argument("--epochs", type=int, default=30, metavar="K", help="epochs (default 30; free-at runs K/m)")
    t.add_argument("--out", required=True, metavar="CKPT", help="checkpoint file: .pt, .pth or .safetensors")
    t.add_argument("--overwrite", action="store_true",
                   help="replace an existing CKPT and its card (refused without it, as audit refuses an existing --out)")
    t.add_argument("--beta", type=float, metavar="B", help="weight of the robust term of trades or mart (shortcut for :beta=B)")
    t.add_argument("--steps", type=int, metavar="S", help="inner attack steps of pgd-at, trades, mart (default 10)")
    t.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate, cosine schedule (default 1e-3)")
    t.add_argument("--batch-size", type=int, default=64, dest="batch_size", metavar="B", help="batch size (default 64)")
    t.add_argument("--weight-decay", type=float, default=0.0, dest="weight_decay", metavar="W", help="L2 weight decay (default 0)")
    t.add_argument("--eps-warmup", type=int, default=5, dest="eps_warmup", metavar="K",
                   help="epochs over which eps ramps up from 0 (default 5, at most --epochs)")
    t.add_argument("--augment", action="store_true", help="random 1-pixel shifts (small images) or crop+flip (larger)")
    t.add_argument("--dropout", type=float, metavar="P", help="dropout probability, where the architecture has one")
    t.add_argument("--seed", type=int, default=0, help="seed of weights, batch order and every random draw (default 0)")


def cmd_train(args: argparse.Namespace, err) -> int:
    """``robustaudit train``: one epoch per progress step, then the card's numbers."""
    from robustaudit.defenses.checkpoint import train_checkpoint

    config = _config(args)
    name = config.defense
    total = config.build().epochs(args.epochs)  # bad settings fail here, before any data is read
    replaced = Path(args.out).exists()
    bar = _EpochProgress(err, total, f"train {name}")
    try:
        with bar:
            result = train_checkpoint(args.model, args.data, config, args.out, dropout=args.dropout,
                                      on_epoch=bar.epoch, overwrite=args.overwrite)
    except KeyboardInterrupt:
        # train keeps no store (audit's message about results.sqlite would mislead): say what is lost
        err.print(interrupted_training(args.out, bar.finished, total, replaced), soft_wrap=True, markup=False)
        return EXIT_INTERRUPTED
    if replaced:
        err.print(f"replaced the existing {result.checkpoint} (--overwrite)", soft_wrap=True, markup=False)
    for note in result.log.events:
        err.print(f"[yellow]note:[/] {note}", soft_wrap=True, markup=True)
    rep = result.record["reported"]
    robust_key = next(k for k in rep if k.startswith("pgd"))
    err.print(f"{name} on {args.data}: clean {rep['clean_accuracy']:.4f}, {robust_key} {rep[robust_key]:.4f} "
              f"(test split, n={rep['n']}), {result.record['train_seconds']:.1f} s", soft_wrap=True, markup=False)
    err.print(f"wrote {result.checkpoint} and {result.card}; audit it with: robustaudit audit --model {result.checkpoint}",
              soft_wrap=True, markup=False)
    return EXIT_OK


def _config(args: argparse.Namespace) -> TrainConfig:
    """The training configuration of ``args``, every flag checked (one line each) before anything is spent."""
    from robustaudit.core.errors import UserError
    from robustaudit.data.registry import is_segmentation_spec, require_train_split
    from robustaudit.defenses.checkpoint import check_out
    from robustaudit.defenses.training import TrainConfig, defense_class, parse_defense
    from robustaudit.evaluate.options import parse_eps

    data_name = require_train_split(args.data)
    if is_segmentation_spec(args.data):
        # the trainer's losses and its PGD evaluation take one label per image; a mask would crash
        # after the data is read ("Target 255 is out of bounds"), so refuse before anything is spent
        raise UserError(f"data '{data_name}' is segmentation data (a class per pixel): train supports "
                        "classification only (one label per image: digits, cifar10:ROOT, mnist:ROOT)")
    # a bad --out would otherwise surface only after the whole training run (lost work)
    check_out(args.out, overwrite=args.overwrite)
    name, settings = parse_defense(args.defense)
    defense_class(name)  # an unknown name fails first, with a suggestion
    if args.beta is not None:
        if name not in ("trades", "mart"):
            raise UserError(f"--beta is the robust-term weight of trades and mart, not of '{name}'")
        _shortcut(settings, "beta", args.beta, "--beta", args.defense)
    if args.steps is not None:
        if name not in ("pgd-at", "trades", "mart"):
            raise UserError(f"--steps sets the inner attack of pgd-at, trades and mart, not of '{name}'")
        _shortcut(settings, "steps", args.steps, "--steps", args.defense)
    if args.eps is not None:
        values = parse_eps(args.eps)
        if len(values) != 1:
            raise UserError(f"--eps takes one training radius, got {args.eps!r}")
        eps = float(values[0])
    elif data_name == "digits":
        eps = 0.2
    elif name == "standard":
        raise UserError("give --eps: the radius of the final PGD-20 evaluation on the test split "
                        "(standard training itself uses none)")
    else:
        raise UserError(f"give --eps: the training radius of '{name}' and of the final PGD evaluation")
    if not eps > 0:
        raise UserError(f"--eps must be > 0, got {args.eps}")
    for flag, value, low in (("--epochs", args.epochs, 1), ("--batch-size", args.batch_size, 1), ("--eps-warmup", args.eps_warmup, 0)):
        if value < low:
            raise UserError(f"{flag} must be >= {low}, got {value}")
    if not args.lr > 0 or args.weight_decay < 0:
        raise UserError("--lr must be > 0 and --weight-decay >= 0")
    if args.dropout is not None and not 0 <= args.dropout < 1:
        raise UserError(f"--dropout must be in [0, 1), got {args.dropout}")
    return TrainConfig(defense=name, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         weight_decay=args.weight_decay, eps=eps, norm=args.norm,
                         eps_warmup=max(1, args.eps_warmup), seed=args.seed, settings=settings, augment=args.augment)


def interrupted_training(out: str, finished: int, total: int, existed: bool) -> str:
    """What an interrupted ``train`` tells the user: the checkpoint is written only after the last
    epoch and the test-split evaluation, so nothing of this run is kept."""
    kept = f"; {out} is the earlier one, untouched" if existed else ""
    return (f"interrupted after {finished} of {total} epochs: nothing was saved (train writes {out} and its card "
            f"only once every epoch and the evaluation finished){kept}; rerun the same command to train again")


def _shortcut(settings: dict, key: str, value: object, flag: str, spec: str) -> None:
    """Set ``settings[key]`` from ``flag``; a UserError when the --defense spec already set another value
    (one of the two would be silently ignored)."""
    from robustaudit.core.errors import UserError

    if key in settings and settings[key] != value:  # 6 and 6.0 agree
        raise UserError(f"{flag} {value} conflicts with --defense {spec} ({key}={settings[key]}): give one")
    settings.setdefault(key, value)


class _EpochProgress:
    """A rich bar with loss and accuracy per epoch on a terminal; one plain line per epoch otherwise
    (CI logs keep every epoch, not the last redraw)."""

    def __init__(self, console, total: int, description: str) -> None:
        self._console, self._total, self._description = console, total, description
        self._progress = None
        #: epochs finished so far (what an interruption reports)
        self.finished = 0
        if console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), console=console)
            self._task = self._progress.add_task(description, total=total, stats="")

    def __enter__(self) -> _EpochProgress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def epoch(self, epoch: int, loss: float, accuracy: float) -> None:
        self.finished = epoch + 1
        stats = f"loss {loss:.4f} acc {accuracy:.4f}"
        if self._progress is not None:
            self._progress.update(self._task, advance=1, stats=stats)
        else:
            self._console.print(f"{self._description} epoch {epoch + 1}/{self._total}: {stats}",
                                soft_wrap=True, markup=False)
