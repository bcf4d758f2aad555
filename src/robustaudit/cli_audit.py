"""``robustaudit audit``: its flags, the options they give (over a TOML file), and the command itself.

The flags and the TOML file only collect what the user gave; the defaults are resolved once, by
:func:`robustaudit.evaluate.spec.resolve_spec`. The ``--fail-under`` / ``--fail-on`` gate is this layer's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robustaudit.cli_common import (
    EXIT_GATE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Rank,
    console,
    raise_usage,
)

AUDIT_EXAMPLES = """\
examples:
  robustaudit audit                                   # the embedded default (see the description above)
  robustaudit audit --model digits-cnn --attack pgd:steps=100,restarts=3 --eps 0.1,0.2
  robustaudit audit --model nets.py:make_net --weights net.safetensors --data cifar10:~/data \\
      --normalize mean=0.49,0.48,0.45,std=0.25,0.24,0.26 --eps 2/255,4/255,8/255 --n 1000
  robustaudit audit --model torchvision:resnet18 --weights r18.pt --data imagefolder:val:size=224
  robustaudit audit --model torchvision:resnet18:weights=IMAGENET1K_V1 --data imagefolder:val:size=224
  robustaudit audit --model in1k.py:make_net --data imagefolder:pets:size=224 --class-map cat=281,dog=207
  robustaudit audit --config audit.toml --device cuda --fail-under 0.5 --fail-on lower
  robustaudit audit --json > results.json
  robustaudit audit --model digits-cnn --out run1 --resume   # continue run1 after a crash or Ctrl-C
  robustaudit audit --config audit.toml --device cuda --precision bf16   # attacks in bf16, verdict in fp32
  torchrun --nproc-per-node=4 -m robustaudit -- audit --config audit.toml --out run1   # docs/scaling.md

--fail-under X exits 1 when any robust accuracy (worst case included) is below X. By default (--fail-on
lower) a row fails when the lower bound of its 95% Wilson interval is below X: the data must show the
model reaches X, which is stricter at small n (0.680 [0.542-0.792] fails X = 0.6). --fail-on point fails
a row only when its point estimate is below X (0.680 passes X = 0.6). The gate also fails when a model's
figures are upper bounds (a failing sanity check no adaptive attack answered; docs/checks.md#upper-bounds);
--allow-unreliable accepts them.

Every finished batch is stored in DIR/results.sqlite as it completes. After a crash, Ctrl-C or SIGTERM,
the same command with --resume reuses the stored batches and gives the numbers an uninterrupted run
gives; it refuses when the configuration, data or weights differ. An --out holding an unfinished run
is refused without --resume or --overwrite (never silently discarded); a finished one is overwritten."""


def add_audit_parser(sub: Any) -> None:
    """The ``audit`` subcommand and its flags (every flag defaults to ``None``: not given)."""
    a = sub.add_parser(
        "audit", help="attack models and print the clean-vs-adversarial accuracy matrix",
        description="Attack one or more models on an eps grid and write results.json, results.sqlite, "
        "report.md and report.html under --out. With no arguments: the embedded default audit: scikit-learn "
        "digits, a standard and a PGD-trained CNN (the 2×2 table), FGSM, PGD and margin-loss PGD at eps 0.1, 0.2, "
        "0.3, the standard CNN behind the squeeze detector under plain and adaptive attack, basic checks, "
        "model cost and the two models' transferability; 28-43 s of audit time (35-54 s for the whole "
        "command) on quiet 2-core x86 VMs, CPU only.",
        epilog=AUDIT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _what_flags(a)
    _how_flags(a)


def _what_flags(a: argparse.ArgumentParser) -> None:
    a.add_argument("--config", metavar="FILE", help="TOML file with the same keys as the flags; flags override it")
    a.add_argument("--model", action="append", metavar="M",
                   help="catalog name, file.py:callable, package.module:callable, torchvision:ARCH, a .pt2 "
                   "export or a TorchScript file; repeat for several rows (default: the catalog models trained "
                   "on --data; digits: the digits-cnn family)")
    a.add_argument("--weights", action="append", metavar="FILE",
                   help="state_dict .pt (loaded with weights_only=True) or .safetensors; one per --model")
    a.add_argument("--normalize", action="append", metavar="SPEC",
                   help="mean=..,std=.. : wrap a model that expects normalized inputs; one per --model")
    a.add_argument("--model-dir", metavar="DIR", dest="model_dir",
                   help="cache of published weights (torchvision:ARCH:weights=ENUM: torch hub's directory, files "
                   "in DIR/checkpoints/, default torch.hub.get_dir(); robustbench:NAME: robustbench's model_dir, "
                   "files in DIR/<dataset>/<threat>/NAME.pt, default ./models; timm:NAME: the Hugging Face hub "
                   "cache, default HF_HUB_CACHE)")
    a.add_argument("--allow-download", action="store_true", default=None, dest="allow_download",
                   help="download published weights missing from the cache (default: never; a missing file is "
                   "an error naming the path expected)")
    a.add_argument("--data", metavar="D", help="digits (default), cifar10:ROOT, mnist:ROOT, imagefolder:ROOT[:size=N], tensors:FILE")
    a.add_argument("--class-map", metavar="MAP", dest="class_map",
                   help="data class name = model output index, e.g. cat=281,dog=207, or a JSON file "
                   "{\"cat\": 281, ...}: audit each model on those outputs only. Default: a model with more outputs "
                   "than the data's named classes is audited on the outputs whose names match the data's, else "
                   "on its first outputs in class order; the map is stated in the report")
    a.add_argument("--attack", action="append", metavar="A",
                   help="attack with inline settings, e.g. pgd:steps=50,restarts=2; repeat for several (default: fgsm, pgd)")
    a.add_argument("--eps", metavar="E", help="comma-separated radii, fractions allowed: 0.1,0.2 or 4/255,8/255 (default 0.05,0.1,0.2,0.3)")
    a.add_argument("--norm", choices=["linf", "l2", "l1", "patch"],
                   help="threat-model norm (default linf); patch: eps is the share of the image area a patch covers "
                   "(--attack patch; default eps 0.02,0.05,0.1,0.15,0.2)")
    a.add_argument("--n", type=int, metavar="N", help="audit the first N samples (default: all)")
    a.add_argument("--batch-size", type=int, metavar="B", dest="batch_size", help="batch size (default: automatic, the largest that fits the device "
                   "by a probe of each model, at most 256 on CPU; recorded in results.json)")
    a.add_argument("--device", metavar="DEV", help="auto (CUDA when available), cpu, cuda, cuda:N (default auto)")
    a.add_argument("--seed", type=int, help="seed of every random draw (default 0)")
    a.add_argument("--out", metavar="DIR", help="output directory (default robustaudit-out)")


def _how_flags(a: argparse.ArgumentParser) -> None:
    a.add_argument("--fail-under", type=float, metavar="X", dest="fail_under", help="exit 1 when a robust accuracy is below X (see below)")
    a.add_argument("--fail-on", choices=["lower", "point"], dest="fail_on",
                   help="lower (default): a row fails when its 95%% lower bound is below X (stricter at small n); "
                   "point: when its point estimate is below X")
    a.add_argument("--allow-unreliable", action="store_true", default=None, dest="allow_unreliable",
                   help="let --fail-under pass figures that a failing sanity check marks as upper bounds")
    a.add_argument("--trust-pickle", action="store_true", default=None, dest="trust_pickle",
                   help="allow loading a pickled whole model (runs code from the file: only for files you trust)")
    a.add_argument("--quiet", action="store_true",
                   help="no progress on stderr (default: a bar with ETA on a terminal, else a plain line per "
                   "finished stage and at most one every 5 s, with elapsed time and ETA)")
    a.add_argument("--json", action="store_true", help="print results.json on stdout (tables go to stderr)")
    a.add_argument("--resume", action="store_true", default=None,
                   help="continue the unfinished run stored in --out: finished batches are reused, not recomputed")
    a.add_argument("--overwrite", action="store_true", default=None,
                   help="discard an unfinished run stored in --out and start over")
    a.add_argument("--task", choices=["auto", "classification", "segmentation"], default=None,
                   help="what the models do: auto (default: the data's task), classification, segmentation "
                        "(per-pixel logits; mIoU and pixel accuracy under attack)")
    a.add_argument("--checks", choices=["off", "basic", "full"], default=None,
                   help="sanity checks of the figures: basic (default, a fraction of the audit's time), full "
                   "(more checks, EOT/BPDA/Square re-runs where needed) or off; see docs/checks.md")
    a.add_argument("--defense", metavar="NAME[,NAME]",
                   help="wrap every model in detectors: squeeze, metzen, mahalanobis; adds MODEL+DETECTOR rows under "
                   "the plain and a detector-aware adaptive attack (see `robustaudit list defenses`); the embedded "
                   "default audit wraps digits-cnn in squeeze, 'none' turns that off")
    a.add_argument("--defense-fpr", type=float, default=None, dest="defense_fpr", metavar="F",
                   help="clean false-positive rate the detector thresholds are set at, on held-out clean data (default 0.05)")
    a.add_argument("--defense-data", metavar="D", dest="defense_data",
                   help="data the detectors are fitted on, at its train split (default: the train split of --data)")
    a.add_argument("--train-data", metavar="D", dest="train_data",
                   help="data universal attacks (patch, uap, atn, advgan) are fitted on, at its train split "
                   "(default: the train split of --data)")
    a.add_argument("--physical", action="store_true", default=None,
                   help="physical-world proxies: how many adversarial examples JPEG, blur, resizing, small rotations "
                   "and translations and a printed-photo simulation destroy (Kurakin et al.; docs/physical.md)")
    a.add_argument("--transfer", choices=["on", "off"], default=None,
                   help="the transferability matrix: each model's adversarial examples at the summary eps scored "
                   "on every other model (default on with two models or more; docs/transferability.md)")
    a.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=None,
                   help="precision the attacks run at (autocast; fp16 needs a GPU); the verdict on the final "
                   "adversarial points is always re-checked in fp32 (default fp32)")
    a.add_argument("--tf32", choices=["on", "off"], default=None,
                   help="allow TF32 for fp32 matmuls and convolutions on NVIDIA GPUs (default off: fp32 means fp32)")
    a.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the model the attacks get (falls back to eager, with a warning, if it fails)")


#: Flags that give an option of the same name (``None``: not given).
_PLAIN_FLAGS = ("data", "class_map", "norm", "n", "batch_size", "device", "seed", "out", "fail_under", "fail_on",
                "allow_unreliable", "trust_pickle", "allow_download", "model_dir",
                "resume", "overwrite", "checks", "train_data", "task", "precision", "compile", "physical",
                "defense", "defense_fpr", "defense_data", "eps")


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """What the user gave: the TOML file's options with the flags over them (keys of
    :data:`robustaudit.evaluate.spec.GIVEN_KEYS`, plus the gate's ``fail_under`` and ``fail_on``);
    nothing is defaulted or validated here, except where the CLI writes (``--out``)."""
    from robustaudit.evaluate.options import DEFAULT_OUT
    from robustaudit.evaluate.plan import load_toml, pair_models

    given: dict[str, Any] = load_toml(args.config) if args.config else {}
    flags = {k: getattr(args, k) for k in _PLAIN_FLAGS}
    flags["tf32"] = None if args.tf32 is None else args.tf32 == "on"
    flags["transfer"] = None if args.transfer is None else args.transfer == "on"
    flags["config_file"] = args.config
    if args.model:
        flags["models"] = pair_models(args.model, args.weights or [], args.normalize or [])
    elif args.weights or args.normalize:
        base = given.get("models") or []
        if len(base) != 1 or args.config is None:
            flag = "--weights" if args.weights else "--normalize"
            raise_usage(f"{flag} needs --model (which model do the weights belong to?)")
        flags["models"] = pair_models([base[0].spec], args.weights or [], args.normalize or [])
    if args.attack:
        from robustaudit.attacks.registry import split_specs

        # --attack atn,advgan is two attacks; pgd:steps=50,restarts=2 one with two settings
        flags["attacks"] = [spec for text in args.attack for spec in split_specs(text)]
    given.update({k: v for k, v in flags.items() if v is not None})
    given.setdefault("out", DEFAULT_OUT)
    return given


def gate_from(given: dict[str, Any]) -> tuple[float | None, str, bool]:
    """Take the ``--fail-under`` / ``--fail-on`` / ``--allow-unreliable`` gate out of ``given``, validated."""
    from robustaudit.evaluate.options import FAIL_ON, check_choice

    fail_under, fail_on = given.pop("fail_under", None), given.pop("fail_on", "lower")
    allow_unreliable = bool(given.pop("allow_unreliable", False))
    if fail_under is not None and not 0.0 <= fail_under <= 1.0:
        raise_usage(f"--fail-under is an accuracy in [0, 1], got {fail_under}")
    return fail_under, check_choice(fail_on, FAIL_ON, "--fail-on"), allow_unreliable


def spec_from_args(args: argparse.Namespace) -> Any:
    """The resolved :class:`~robustaudit.evaluate.spec.AuditSpec` of ``args`` (the gate left out)."""
    from robustaudit.evaluate.api import spec_of

    given = options_from_args(args)
    gate_from(given)
    return spec_of(given)[0]


def cmd_audit(args: argparse.Namespace, err: Any) -> int:
    from robustaudit.evaluate.api import spec_of
    from robustaudit.evaluate.distributed import detect
    from robustaudit.evaluate.execute import execute
    from robustaudit.evaluate.subject import open_subject

    launch = detect()  # started by torchrun / srun as one of several processes?
    Rank.value = launch.rank if launch is not None else 0
    given = options_from_args(args)
    gate = gate_from(given)
    spec, data = spec_of({**given, "distributed": launch is not None})
    try:  # the spec refused the paths that cannot be a folder; this catches the rest (read-only mounts)
        Path(spec.out).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise_usage(f"cannot create --out '{spec.out}': {exc.strerror or exc}")
    out = console(stderr=bool(args.json))
    if Rank.value > 0:  # rank 0 speaks for all: tables, progress, warnings and user errors (internal errors excepted)
        out.quiet = err.quiet = True
    try:
        from robustaudit.evaluate.progress import make_progress

        with make_progress(err, quiet=bool(args.quiet)) if Rank.value == 0 else contextlib.nullcontext() as bar:
            result = execute(spec, open_subject(spec, data), bar)
    except KeyboardInterrupt:
        err.print(interrupted(spec.out, getattr(args, "argv", []), launch.world_size if launch else 1),
                  soft_wrap=True, markup=False)
        return EXIT_INTERRUPTED
    _show(result, spec.out, out, err, processes=launch is not None)
    if args.json and Rank.value == 0:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
    return _gate(result, *gate, err)


def _show(result: Any, out_dir: str, out: Any, err: Any, *, processes: bool) -> None:
    """The terminal tables and notes; the reports written (rank 0)."""
    from robustaudit.evaluate.result import REPORT_HTML, REPORT_MD
    from robustaudit.reports import write_reports
    from robustaudit.reports.terminal import render_terminal

    counts = result.provenance.get("resume")
    if counts is not None:
        err.print(f"resumed {out_dir}: {counts['reused_batches']} stored batches reused, "
                  f"{counts['computed_batches']} computed", soft_wrap=True, markup=False)
    render_terminal(result, out)
    precision = (result.provenance.get("precision") or {}).get("attack", "fp32")
    for note in ([result.provenance.get("attack precision")] if precision != "fp32" else []) + \
            [result.provenance.get("out-of-memory")]:
        if note:  # what produced the adversarial points, and batches halved for memory: also in the reports
            out.print(f"note: {note}", soft_wrap=True, markup=False)
    if Rank.value > 0:  # rank 0 wrote the results; every rank computes the same exit code
        paths = {"markdown": Path(REPORT_MD), "html": Path(REPORT_HTML)}
    else:
        paths = write_reports(result, out_dir)
    store_name = "" if result.is_segmentation else (
        "ranks/rank-K.sqlite, " if processes else "results.sqlite, ")  # segmentation: not stored per batch
    out.print(f"wrote {Path(out_dir) / 'results.json'}, {store_name}{paths['markdown'].name}, "
              f"{paths['html'].name} in {out_dir}/ ({result.provenance['seconds']:.1f} s)")


def _gate(result: Any, fail_under: float | None, fail_on: str, allow_unreliable: bool, err: Any) -> int:
    """``--fail-under``: exit 1 when a row is below it (its lower 95% bound with ``--fail-on lower``), or
    when a model's figures are upper bounds (an unanswered failing sanity check) unless ``allow_unreliable``."""
    from rich.text import Text

    from robustaudit.reports.view.checkdocs import UPPER_BOUNDS, doc_reference

    if fail_under is None:
        return EXIT_OK
    unreliable = {m: r["reasons"] for m, r in result.reliability.items() if not r["reliable"]}
    # one line: which models, which checks (Text: model names are data, not markup)
    named = "; ".join(f"{m} ({', '.join(reasons)})" for m, reasons in unreliable.items())
    failed = bool(unreliable) and not allow_unreliable
    if failed:
        err.print(Text("FAIL", style="bold red") + Text(f": upper bounds, not figures to gate on: {named}; see "
                                                        f"{doc_reference(UPPER_BOUNDS)} (--allow-unreliable accepts "
                                                        "them)"), soft_wrap=True)
    failing = result.below(fail_under, bound="lower" if fail_on == "lower" else "point")
    # segmentation gates on mIoU (ResultMatrix.below picks the column)
    value, low, high = (("miou", "miou_ci_low", "miou_ci_high") if result.is_segmentation
                        else ("robust_accuracy", "ci_low", "ci_high"))
    metric = "mIoU" if result.is_segmentation else "robust accuracy"
    if not failing.empty:
        what = "lower 95% bound" if fail_on == "lower" else metric
        worst = failing.sort_values(value).iloc[0]
        err.print(Text("FAIL", style="bold red") + Text(
            f": {len(failing)} row(s) with {what} below {fail_under:g}; worst: {worst['model']} / {worst['attack']} "
            f"@ eps={worst['eps']:g}: {worst[value]:.3f} [{worst[low]:.3f}, {worst[high]:.3f}]"))
        return EXIT_GATE
    if failed:
        return EXIT_GATE
    accepted = f"; upper bounds accepted by --allow-unreliable: {named}" if unreliable else ""
    gated = "lower bound" if fail_on == "lower" else "point estimate"
    err.print(Text("PASS", style="green") + Text(f": every {metric} ({gated}) >= {fail_under:g}{accepted}"),
              soft_wrap=True)
    return EXIT_OK


def interrupted(out_dir: str, argv: Sequence[str], world_size: int = 1) -> str:
    """What an interrupted audit tells the user: what is kept, and the command that continues it."""
    from robustaudit.evaluate.store import STORE_FILE, Store

    if world_size > 1:
        from robustaudit.evaluate.distributed import rank_store_path

        paths = [rank_store_path(out_dir, k) for k in range(world_size)]
        done = 0
        for rank_path in paths:
            if rank_path.is_file():
                with Store(rank_path) as store:
                    done += store.count_batches()
        return (f"interrupted: {done} finished batches are stored in {paths[0].parent} ({world_size} processes); "
                "continue with the same launch command (torchrun / srun) plus --resume")

    path = Path(out_dir) / STORE_FILE
    if not path.is_file():
        return "interrupted before the first batch finished: nothing stored; rerun the same command"
    with Store(path) as store:
        done, finished = store.count_batches(), store.get_meta("finished", False)
    if finished:  # stopped before this run replaced the finished one stored there, or while reusing it
        return f"interrupted: {path} still holds a finished run (this one stored nothing new); rerun the same command"
    # --overwrite would discard what we just kept; it excludes --resume anyway
    words = [w for w in argv if w != "--overwrite"]
    command = shlex.join(["robustaudit", *words, *([] if "--resume" in words else ["--resume"])])
    return f"interrupted: {done} finished batches are stored in {path}; continue with: {command}"
