"""cifar_scale.py: a CIFAR-scale benchmark: a 32x32 ResNet-18 with real robustness, our attacks against the
bare forward+backward loop and torchattacks' AutoAttack, side by side in one process.

What. The model: torchvision ResNet-18 with the CIFAR stem (3x3 stride-1 conv, no max-pool), 10 classes,
adversarially trained here with our Fast-AT (Wong et al. 2020: FGSM from a random start, step 1.25 eps,
held-out PGD-10 guard against catastrophic overfitting; ``robustaudit.defenses``) on digits32 replicated to
RGB (1437 train images, 32x32), cached under ``bench/.cache/`` (outside git) keyed by the training
settings. Then, on the same clean-correct test samples and at the same Linf eps, in one process with one
torch thread: the bare loop (PGD-10 with nothing but its arithmetic: 10 x forward, CE, autograd.grad
w.r.t. the input, sign step, projection, plus the one scoring forward), our PGD-10 (as the audit runs it,
early stop on; and with early stop off, the like-for-like overhead figure), our APGD-CE-100, our ``fast``
ensemble, and torchattacks' AutoAttack (standard: APGD-CE, APGD-T 9 targets, FAB-T 9 targets, Square
5000) as torchattacks ships it (10 steps) and at the reference budget of 100 steps (``--aa-steps 10,100``). Every contender gets
the model through robustaudit's ``PassCounter`` (the runner's pass count), so each row also shows the
forward/backward passes per sample. Seconds are process CPU seconds (``time.process_time``, one thread):
the machine is shared, wall time is not a measure there; wall seconds are printed beside them.

Printed: robust accuracy (over the clean-correct samples) and count, CPU seconds, the ratio to the bare
PGD-10 loop's seconds, the speed of our PGD-10 relative to the bare loop (bare / ours, the same number of
passes when early stop is off), seconds per backward pass relative to the bare loop's, and for ``fast``
its seconds relative to torchattacks' AutoAttack with the per-sample comparison (b: left robust by
``fast`` but broken by AutoAttack, c: the reverse).

Where and result: BENCHMARKS.md ("CIFAR-scale: ResNet-18 ..."). Session 7, a quiet Intel Xeon VM, CPU only, 8
clean-correct samples at Linf 0.1: our PGD-10 at 1.013x the bare loop's speed (same passes); ``fast`` (with
APGD-DLR) leaves the same 5 points robust as torchattacks' AutoAttack at 100 steps, in 0.184 of its CPU time,
and one fewer than AutoAttack at torchattacks' default 10 steps, in 0.322 of its time. GPU figures pending.
Command: ``OMP_NUM_THREADS=1 PYTHONPATH=src python bench/cifar_scale.py --n 8 --eps 0.1 --epochs 3 --n-train 640
--aa-steps 10,100 --repeats 2``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchattacks
import torchvision
from torch import nn

from _bare import bare_pgd as floor_pgd
from _machine import machine  # bench/ is on sys.path when a benchmark runs as a script
from robustaudit.attacks.apgd import APGD
from robustaudit.attacks.ensemble import FastEnsemble
from robustaudit.attacks.gradient import PGD
from robustaudit.core.threat import ThreatModel
from robustaudit.data.digits import digits32_split
from robustaudit.defenses.training import TrainConfig, train
from robustaudit.evaluate.passes import PassCounter

CACHE = Path(__file__).resolve().parent / ".cache"
SEED = 0


def cifar_resnet18() -> nn.Module:
    """ResNet-18 for 32x32 RGB inputs: a 3x3 stride-1 stem and no max-pool (the usual CIFAR variant)."""
    torch.manual_seed(SEED)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def rgb(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """digits32 ``split`` as RGB: ``x (N, 3, 32, 32)`` in [0, 1] (the grey channel three times), ``y (N,)``."""
    data = digits32_split(split)
    x, y = data.load(range(len(data)))
    return x.repeat(1, 3, 1, 1).contiguous(), y


def trained(config: TrainConfig, n_train: int | None) -> tuple[nn.Module, dict]:
    """The Fast-AT ResNet-18, from the cache when the same settings were trained before."""
    record = {"model": "resnet18-cifar-stem", "data": "digits32-rgb:train", "n_train": n_train,
              "config": config.record(), "torch": torch.__version__}
    key = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
    weights, card = CACHE / f"cifar_scale-{key}.pt", CACHE / f"cifar_scale-{key}.json"
    model = cifar_resnet18()
    if weights.exists() and card.exists():
        model.load_state_dict(torch.load(weights, weights_only=True))
        return model.eval(), json.loads(card.read_text())
    x, y = rgb("train")
    if n_train is not None:
        x, y = x[:n_train], y[:n_train]
    cpu0 = time.process_time()
    log = train(model, x, y, config, on_epoch=lambda e, loss, acc: print(
        f"  epoch {e + 1}: loss {loss:.3f}, train accuracy (adversarial) {acc:.3f}", flush=True))
    record.update(train_cpu_seconds=round(time.process_time() - cpu0, 1), train_wall_seconds=round(log.seconds, 1),
                  guard_accuracy=log.guard_accuracy, events=log.events)
    CACHE.mkdir(exist_ok=True)
    torch.save(model.state_dict(), weights)
    card.write_text(json.dumps(record, indent=1))
    return model.eval(), record


def bare_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 10) -> torch.Tensor:
    """The floor (:func:`_bare.bare_pgd`), step 2.5 eps / steps. ``(N, 3, 32, 32) -> (N, 3, 32, 32)``."""
    return floor_pgd(model, x, y, eps, 2.5 * eps / steps, steps)


def measured(model: nn.Module, fn: Callable[[nn.Module], torch.Tensor], x: torch.Tensor, y: torch.Tensor
             ) -> dict:
    """Run ``fn(counted_model) -> adv`` once: robust mask ``(N,)``, CPU and wall seconds, passes."""
    counter = PassCounter(model)
    cpu, wall = time.process_time(), time.perf_counter()
    adv = fn(counter)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if adv.shape != x.shape or not torch.isfinite(adv).all():
        raise RuntimeError("a contender returned a bad tensor")
    with torch.no_grad():
        robust = model(adv).argmax(1) == y
    return {"robust": robust, "cpu": cpu, "wall": wall, "forward": counter.forward_passes,
            "backward": counter.backward_passes}


def torchattacks_aa(eps: float, steps: int) -> Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]:
    """torchattacks' AutoAttack (standard) with its APGD/APGD-T/FAB budgets set to ``steps``."""
    def attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        aa = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=10, seed=SEED)
        for sub in aa._autoattack.attacks:
            if hasattr(sub, "steps"):
                sub.steps = steps
        return aa(x, y)
    return attack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="test samples (the clean-correct ones are attacked)")
    parser.add_argument("--eps", type=float, default=0.1, help="Linf radius of training and evaluation")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n-train", type=int, default=None, help="train on the first N training images")
    parser.add_argument("--aa-steps", default="10,100",
                        help="torchattacks AutoAttack's APGD/FAB steps, comma-separated: one peer each (it ships 10; "
                             "the reference AutoAttack runs 100)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of the bare loop and PGD-10")
    args = parser.parse_args()
    torch.manual_seed(SEED)
    print(f"machine: {machine(torch.device('cpu'), torchattacks)}", flush=True)
    config = TrainConfig(defense="fast-at", epochs=args.epochs, batch_size=32, lr=2e-3, eps=args.eps,
                         eps_warmup=1, seed=SEED, settings={"guard_size": 32})
    model, record = trained(config, args.n_train)
    print(f"model: ResNet-18 (CIFAR stem), Fast-AT at Linf {args.eps}, {args.epochs} epochs on digits32-rgb "
          f"(train CPU s {record.get('train_cpu_seconds')}, guard PGD-10 accuracy {record.get('guard_accuracy')})")
    x_all, y_all = rgb("test")
    x_all, y_all = x_all[: args.n], y_all[: args.n]
    with torch.no_grad():
        keep = model(x_all).argmax(1) == y_all
    x, y = x_all[keep].contiguous(), y_all[keep]
    if len(y) == 0:
        raise SystemExit("no clean-correct sample to attack: train longer (--epochs) or give more samples (--n)")
    threat, ids = ThreatModel("linf", args.eps), torch.arange(len(y))
    print(f"{args.n} test samples, {len(y)} clean-correct (clean accuracy {len(y) / args.n:.3f}), Linf eps "
          f"{args.eps}", flush=True)

    def ours(attack: Callable) -> Callable[[nn.Module], torch.Tensor]:
        return lambda m: attack(m, x, y, threat, ids=ids, seed=SEED)

    def bare(m: nn.Module) -> torch.Tensor:
        torch.manual_seed(SEED)
        return bare_pgd(m, x, y, args.eps)

    cheap = {"bare loop (PGD-10)": bare, "robustaudit PGD-10": ours(PGD(steps=10)),
             "robustaudit PGD-10, no early stop": ours(PGD(steps=10, early_stop=False))}
    rows: dict[str, dict] = {}
    for name, fn in cheap.items():  # warm-up
        measured(model, fn, x, y)
    rounds: dict[str, list[dict]] = {name: [] for name in cheap}
    for _ in range(args.repeats):  # interleaved, so a drifting load hits each alike
        for name, fn in cheap.items():
            rounds[name].append(measured(model, fn, x, y))
    for name, runs in rounds.items():
        rows[name] = dict(runs[0], cpu=statistics.median(r["cpu"] for r in runs),
                          wall=statistics.median(r["wall"] for r in runs))
    expensive = {"robustaudit APGD-CE-100": ours(APGD(steps=100, loss="ce")),
                 "robustaudit fast": ours(FastEnsemble())}
    peers = [f"torchattacks AutoAttack ({steps} steps)" for steps in _steps(args.aa_steps)]
    for name, steps in zip(peers, _steps(args.aa_steps)):
        expensive[name] = (lambda attack: lambda m: attack(m, x, y))(torchattacks_aa(args.eps, steps))
    for name, fn in expensive.items():
        rows[name] = measured(model, fn, x, y)
        print(f"  {name}: {rows[name]['cpu']:.1f} CPU s", flush=True)
    report(rows, len(y), peers)


def _steps(text: str) -> list[int]:
    """``--aa-steps`` ``"10,100"`` -> ``[10, 100]``."""
    try:
        steps = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"--aa-steps: expected comma-separated integers, got '{text}'") from None
    if not steps or min(steps) < 1:
        raise SystemExit(f"--aa-steps: expected positive step counts, got '{text}'")
    return steps


def report(rows: dict[str, dict], n: int, peers: list[str]) -> None:
    """The table: robust accuracy, seconds, ratios to the bare loop and the first peer, passes per sample;
    then ``fast`` against each peer, per sample."""
    peer = peers[0]
    bare = rows["bare loop (PGD-10)"]
    bare_per_pass = bare["cpu"] / max(1, bare["backward"])
    print(f"\n{'contender':40s} {'robust':>11s} {'CPU s':>8s} {'wall s':>8s} {'x bare':>7s} {'x peer':>7s} "
          f"{'fwd/n':>7s} {'bwd/n':>7s} {'s/bwd vs bare':>13s}")
    for name, r in rows.items():
        k = int(r["robust"].sum())
        per_pass = r["cpu"] / r["backward"] if r["backward"] else float("nan")
        print(f"{name:40s} {k / n:6.3f} ({k:2d}) {r['cpu']:8.2f} {r['wall']:8.2f} {r['cpu'] / bare['cpu']:7.2f} "
              f"{r['cpu'] / rows[peer]['cpu']:7.3f} {r['forward'] / n:7.1f} {r['backward'] / n:7.1f} "
              f"{per_pass / bare_per_pass:13.3f}")
    print("(x bare: CPU seconds / the bare PGD-10 loop's; x peer: / the first torchattacks AutoAttack's; s/bwd vs bare: CPU "
          "seconds per backward pass / the bare loop's)")
    pgd = rows["robustaudit PGD-10, no early stop"]
    print(f"our PGD-10 speed relative to the bare loop (same passes, early stop off): {bare['cpu'] / pgd['cpu']:.3f}; "
          f"as the audit runs it (early stop on): {bare['cpu'] / rows['robustaudit PGD-10']['cpu']:.3f}")
    fast = rows["robustaudit fast"]
    for peer in peers:
        aa = rows[peer]
        b = int((fast["robust"] & ~aa["robust"]).sum())
        c = int((aa["robust"] & ~fast["robust"]).sum())
        print(f"fast vs {peer}: {b} sample(s) left robust by fast but broken by AutoAttack, {c} the reverse; "
              f"fast takes {fast['cpu'] / aa['cpu']:.3f} of its CPU time")


if __name__ == "__main__":
    main()
