"""The ``robustaudit`` command: ``audit``, ``list``, ``report``. ``main(argv) -> int`` never raises.

Exit codes: 0 done; 1 a ``--fail-under`` gate failed; 2 a user mistake (one line on stderr);
3 an internal error (a bug: rerun with ROBUSTAUDIT_DEBUG=1 for the traceback); 4 interrupted
(Ctrl-C, or SIGTERM as CI cancellations send: finished batches stay stored and the message gives the
command line that continues with ``--resume``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import signal
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path

EXIT_OK, EXIT_GATE, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 4

AUDIT_EXAMPLES = """\
examples:
  robustaudit audit                                   # the embedded default: digits, 2 models, FGSM+PGD
  robustaudit audit --model digits-cnn --attack pgd:steps=100,restarts=3 --eps 0.1,0.2
  robustaudit audit --model nets.py:make_net --weights net.safetensors --data cifar10:~/data \\
      --normalize mean=0.49,0.48,0.45,std=0.25,0.24,0.26 --eps 2/255,4/255,8/255 --n 1000
  robustaudit audit --model torchvision:resnet18 --weights r18.pt --data imagefolder:val:size=224
  robustaudit audit --config audit.toml --device cuda --fail-under 0.5 --fail-on lower
  robustaudit audit --json > results.json
  robustaudit audit --model digits-cnn --out run1 --resume   # continue run1 after a crash or Ctrl-C
  robustaudit audit --config audit.toml --device cuda --precision bf16   # attacks in bf16, verdict in fp32
  torchrun --nproc-per-node=4 -m robustaudit -- audit --config audit.toml --out run1   # docs/scaling.md

--fail-under X exits 1 when any robust accuracy (worst case included) is below X. It gates on the lower
bound of the 95% Wilson interval by default (--fail-on lower: fails only when the data show the model is
below X); --fail-on point gates on the point estimate instead (stricter at small n).

Every finished batch is stored in DIR/results.sqlite as it completes. After a crash, Ctrl-C or SIGTERM,
the same command with --resume reuses the stored batches and gives the numbers an uninterrupted run
gives; it refuses when the configuration, data or weights differ. An --out holding an unfinished run
is refused without --resume or --overwrite (never silently discarded); a finished one is overwritten."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises one-line errors instead of printing usage and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        from robustaudit.core.errors import UserError

        raise UserError(f"{message}{self._close_match(message)} (see `{self.prog} --help`)")

    def _close_match(self, message: str) -> str:
        """A did-you-mean for argparse's two messages about names: a bad choice, an unknown flag."""
        from robustaudit.core.errors import suggest

        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if choice is not None:
            choices = [c.strip().strip("'\"") for c in choice.group(2).split(",")]
            return suggest(choice.group(1).lower(), choices)
        if message.startswith("unrecognized arguments:"):
            flags = self._all_flags()
            for word in message.partition(":")[2].split():
                if word.startswith("--"):
                    hint = suggest(word.partition("=")[0], flags)
                    if hint:
                        return hint
        return ""

    def _all_flags(self) -> list[str]:
        # unknown flags are reported by the top-level parser, which does not own the subcommands' flags
        parsers = [self]
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
        return sorted({flag for p in parsers for flag in p._option_string_actions if flag.startswith("--")})


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of all subcommands."""
    from robustaudit import __version__

    p = _Parser(prog="robustaudit", description="Adversarial robustness testing for PyTorch models.",
                epilog="Run `robustaudit COMMAND --help` for each command's options and examples.")
    p.add_argument("--version", action="version", version=f"robustaudit {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    a = sub.add_parser(
        "audit", help="attack models and print the clean-vs-adversarial accuracy matrix",
        description="Attack one or more models on an eps grid and write results.json, results.sqlite, "
        "report.md and report.html under --out. With no arguments: the embedded default audit.",
        epilog=AUDIT_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--config", metavar="FILE", help="TOML file with the same keys as the flags; flags override it")
    a.add_argument("--model", action="append", metavar="M",
                   help="catalog name, file.py:callable, package.module:callable, torchvision:ARCH, a .pt2 "
                   "export or a TorchScript file; repeat for several rows (default: digits-cnn, digits-cnn-pgdat)")
    a.add_argument("--weights", action="append", metavar="FILE",
                   help="state_dict .pt (loaded with weights_only=True) or .safetensors; one per --model")
    a.add_argument("--normalize", action="append", metavar="SPEC",
                   help="mean=..,std=.. : wrap a model that expects normalized inputs; one per --model")
    a.add_argument("--data", metavar="D", help="digits (default), cifar10:ROOT, mnist:ROOT, imagefolder:ROOT[:size=N], tensors:FILE")
    a.add_argument("--attack", action="append", metavar="A",
                   help="attack with inline settings, e.g. pgd:steps=50,restarts=2; repeat for several (default: fgsm, pgd)")
    a.add_argument("--eps", metavar="E", help="comma-separated radii, fractions allowed: 0.1,0.2 or 4/255,8/255 (default 0.05,0.1,0.2,0.3)")
    a.add_argument("--norm", choices=["linf", "l2", "l1", "patch"],
                   help="threat-model norm (default linf); patch: eps is the share of the image area a patch covers "
                   "(--attack patch; default eps 0.02,0.05,0.1,0.15,0.2)")
    a.add_argument("--n", type=int, metavar="N", help="audit the first N samples (default: all)")
    a.add_argument("--batch-size", type=int, metavar="B", dest="batch_size", help="batch size (default 256)")
    a.add_argument("--device", metavar="DEV", help="auto (CUDA when available), cpu, cuda, cuda:N (default auto)")
    a.add_argument("--seed", type=int, help="seed of every random draw (default 0)")
    a.add_argument("--out", metavar="DIR", help="output directory (default robustaudit-out)")
    a.add_argument("--fail-under", type=float, metavar="X", dest="fail_under", help="exit 1 when a robust accuracy is below X (see below)")
    a.add_argument("--fail-on", choices=["lower", "point"], dest="fail_on", help="gate on the 95%% lower bound (default) or the point estimate")
    a.add_argument("--trust-pickle", action="store_true", default=None, dest="trust_pickle",
                   help="allow loading a pickled whole model (runs code from the file: only for files you trust)")
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
                   "default audit uses squeeze, 'none' turns that off")
    a.add_argument("--defense-fpr", type=float, default=None, dest="defense_fpr", metavar="F",
                   help="clean false-positive rate the detector thresholds are set at, on held-out clean data (default 0.05)")
    a.add_argument("--defense-data", metavar="D", dest="defense_data",
                   help="data the detectors are fitted on, at its train split (default: the train split of --data)")
    a.add_argument("--train-data", metavar="D", dest="train_data",
                   help="data universal attacks (patch, atn, advgan) are fitted on, at its train split "
                   "(default: the train split of --data)")
    a.add_argument("--physical", action="store_true", default=None,
                   help="physical-world proxies: how many adversarial examples JPEG, blur, resizing, small rotations "
                   "and translations and a printed-photo simulation destroy (Kurakin et al.; docs/physical.md)")
    a.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=None,
                   help="precision the attacks run at (autocast; fp16 needs a GPU); the verdict on the final "
                   "adversarial points is always re-checked in fp32 (default fp32)")
    a.add_argument("--tf32", choices=["on", "off"], default=None,
                   help="allow TF32 for fp32 matmuls and convolutions on NVIDIA GPUs (default off: fp32 means fp32)")
    a.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the model the attacks get (falls back to eager, with a warning, if it fails)")

    ls = sub.add_parser("list", help="list catalog models, attacks, datasets or defenses",
                        description="List what robustaudit knows.",
                        epilog="examples:\n  robustaudit list models\n  robustaudit list attacks\n"
                               "  robustaudit list attacks pgd     # its settings: type, default, range",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ls.add_argument("what", choices=["models", "attacks", "datasets", "defenses"])
    ls.add_argument("name", nargs="?", metavar="NAME", help="with attacks: one attack's settings in detail")

    r = sub.add_parser("report", help="re-render the reports of a finished run",
                       description="Read DIR/results.json (and examples.npz) and rewrite report.md and "
                       "report.html; runs no model.",
                       epilog="example:\n  robustaudit report robustaudit-out",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("dir", metavar="DIR")
    _add_train_parser(sub)
    return p


#: This process's rank in a multi-process audit (0 otherwise): only rank 0 prints, except internal errors.
_RANK = 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (never raises, never prints a traceback for user mistakes)."""
    global _RANK
    _RANK = 0
    err = _console(stderr=True)
    try:
        from robustaudit.core.errors import UserError
    except Exception as exc:  # pragma: no cover - broken install
        err.print(f"robustaudit: cannot import the package: {exc}")
        return EXIT_INTERNAL
    restore = _sigterm_as_interrupt()
    try:
        with warnings.catch_warnings():
            # deprecation notices are for developers (a dependency importing another's old name), not
            # for someone running an audit; Python hides them outside __main__, test runners do not
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
            # what a user must see, as one readable line each (not file:line noise)
            warnings.showwarning = lambda message, *rest, **kw: err.print(
                f"[yellow]warning:[/] {_plain(str(message))}", soft_wrap=True)
            return _dispatch(argv, err)
    except UserError as exc:
        err.print(f"[bold red]error:[/] {_plain(str(exc))}", soft_wrap=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: finished batches are in the output directory's results.sqlite")
        return EXIT_INTERRUPTED
    except SystemExit as exc:  # --help/--version return in _dispatch: this one came from a user's code
        err.print(f"[bold red]error:[/] the user's code called sys.exit({_plain(repr(exc.code))}) while "
                  "robustaudit ran it (a model's forward or factory?); raise an exception instead", soft_wrap=True)
        return EXIT_USAGE
    except Exception as exc:  # a bug of ours: one line, the traceback on request
        if os.environ.get("ROBUSTAUDIT_DEBUG"):
            traceback.print_exc()
        err.quiet = False  # every rank reports its own internal error
        err.print(f"{f'rank {_RANK}: ' if _RANK else ''}[bold red]internal error:[/] {type(exc).__name__}: {_plain(str(exc))} "
                  "(set ROBUSTAUDIT_DEBUG=1 for the traceback, and please report it)", soft_wrap=True)
        return EXIT_INTERNAL
    finally:
        restore()


def _sigterm_as_interrupt():
    """Treat SIGTERM (CI cancellations, ``kill``) like Ctrl-C; returns the function that restores the
    previous handler (``main`` is also called in-process, by tests and by users' scripts)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except (ValueError, OSError, AttributeError):  # not the main thread, or no SIGTERM on this platform
        return lambda: None
    return lambda: signal.signal(signal.SIGTERM, previous)


def _dispatch(argv: Sequence[str] | None, err) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(words)
    except SystemExit as exc:  # --help, --version: argparse's way to say "done"
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USAGE
    args.argv = words  # for the resume hint of an interrupted audit
    if args.command is None:
        build_parser().print_help()
        return EXIT_USAGE
    return {"audit": _cmd_audit, "list": _cmd_list, "report": _cmd_report,
            "train": _cmd_train}[args.command](args, err)


def entrypoint() -> None:
    """``[project.scripts]`` target."""
    sys.exit(main())


def _console(*, stderr: bool = False):
    """A rich console; when output goes to a file or CI log (no terminal), wide enough that tables
    never truncate model names or intervals."""
    from rich.console import Console

    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, width=200, highlight=False)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _plain(text: str) -> str:
    """``text`` on one line, with rich markup escaped: messages quote paths, specs and TOML tables
    ("[[models]]", "data/[train]"), which rich would otherwise take for style tags and drop."""
    from rich.markup import escape

    return escape(_one_line(text))


def _plan_from_args(args: argparse.Namespace):
    from robustaudit.evaluate.plan import AuditPlan, load_toml, pair_models, parse_eps

    base = AuditPlan(**load_toml(args.config)) if args.config else AuditPlan()
    overrides = {k: getattr(args, k) for k in ("data", "norm", "n", "batch_size", "device", "seed", "out",
                                                "fail_under", "fail_on", "trust_pickle", "resume", "overwrite", "checks",
                                                "train_data", "task", "precision", "compile")}
    overrides["tf32"] = None if args.tf32 is None else args.tf32 == "on"
    if args.model:
        overrides["models"] = pair_models(args.model, args.weights or [], args.normalize or [])
    elif args.weights or args.normalize:
        if len(base.models) != 1 or args.config is None:
            flag = "--weights" if args.weights else "--normalize"
            raise_usage(f"{flag} needs --model (which model do the weights belong to?)")
        overrides["models"] = pair_models([base.models[0].spec], args.weights or [], args.normalize or [])
    if args.attack:
        from robustaudit.attacks.registry import split_specs

        # --attack atn,advgan is two attacks; pgd:steps=50,restarts=2 one with two settings
        overrides["attacks"] = [spec for text in args.attack for spec in split_specs(text)]
    if args.eps is not None:
        overrides["eps"] = parse_eps(args.eps)
    overrides["physical"] = args.physical
    overrides.update(defense=_defense(args), defense_fpr=args.defense_fpr, defense_data=args.defense_data)
    plan = base.with_overrides(overrides).validate()
    from robustaudit.evaluate.plan import DEFAULT_EPS, PATCH_DEFAULT_EPS

    if plan.norm == "patch" and args.eps is None and tuple(plan.eps) == DEFAULT_EPS:
        plan.eps = list(PATCH_DEFAULT_EPS)  # no --eps: area shares, not the Lp radii of the default grid
    return plan


def raise_usage(message: str) -> None:
    from robustaudit.core.errors import UserError

    raise UserError(message)


#: The detector of the embedded default audit (no --model, no --config): the default covers every kind of row.
DEFAULT_DEFENSE = "squeeze"


def _defense(args: argparse.Namespace) -> str | None:
    """``--defense`` (``none`` kept: it must override a config file's detectors); the embedded default audit
    (no --model, no --config) gets :data:`DEFAULT_DEFENSE`; otherwise ``None`` (the config file decides)."""
    if args.defense is not None:
        return args.defense
    return DEFAULT_DEFENSE if not args.model and not args.config else None


def _cmd_audit(args: argparse.Namespace, err) -> int:
    from robustaudit.evaluate.api import run_plan
    from robustaudit.evaluate.distributed import detect
    from robustaudit.reports import write_reports
    from robustaudit.reports.terminal import render_terminal

    global _RANK
    launch = detect()  # started by torchrun / srun as one of several processes?
    _RANK = launch.rank if launch is not None else 0
    plan = _plan_from_args(args)
    try:  # validate() refused the paths that cannot be a folder; this catches the rest (read-only mounts)
        Path(plan.out).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise_usage(f"cannot create --out '{plan.out}': {exc.strerror or exc}")
    out = _console(stderr=bool(args.json))
    if _RANK > 0:  # rank 0 speaks for all: tables, progress, warnings and user errors (internal errors excepted)
        out.quiet = err.quiet = True
    try:
        with _RichProgress(err) if _RANK == 0 else contextlib.nullcontext() as bar:
            result = run_plan(plan, progress=bar, distributed=launch is not None)
    except KeyboardInterrupt:
        err.print(_interrupted(plan.out, getattr(args, "argv", []), launch.world_size if launch else 1),
                  soft_wrap=True, markup=False)
        return EXIT_INTERRUPTED
    counts = result.provenance.get("resume")
    if counts is not None:
        err.print(f"resumed {plan.out}: {counts['reused_batches']} stored batches reused, "
                  f"{counts['computed_batches']} computed", soft_wrap=True, markup=False)
    render_terminal(result, out)
    precision = (result.provenance.get("precision") or {}).get("attack", "fp32")
    for note in ([result.provenance.get("attack precision")] if precision != "fp32" else []) + \
            [result.provenance.get("out-of-memory")]:
        if note:  # what produced the adversarial points, and batches halved for memory: also in the reports
            out.print(f"note: {note}", soft_wrap=True, markup=False)
    if _RANK > 0:  # rank 0 wrote the results; every rank computes the same exit code below
        paths = {"markdown": Path("report.md"), "html": Path("report.html")}
    else:
        paths = write_reports(result, plan.out)
    store_name = "" if result.is_segmentation else (
        "ranks/rank-K.sqlite, " if launch is not None else "results.sqlite, ")  # segmentation: not stored per batch
    out.print(f"wrote {Path(plan.out) / 'results.json'}, {store_name}{paths['markdown'].name}, "
              f"{paths['html'].name} in {plan.out}/ ({result.provenance['seconds']:.1f} s)")
    if args.json and _RANK == 0:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
    if plan.fail_under is not None:
        failing = result.below(plan.fail_under, bound="lower" if plan.fail_on == "lower" else "point")
        # segmentation gates on mIoU (ResultMatrix.below picks the column)
        value, low, high = (("miou", "miou_ci_low", "miou_ci_high") if result.is_segmentation
                            else ("robust_accuracy", "ci_low", "ci_high"))
        metric = "mIoU" if result.is_segmentation else "robust accuracy"
        if not failing.empty:
            what = "lower 95% bound" if plan.fail_on == "lower" else metric
            worst = failing.sort_values(value).iloc[0]
            err.print(f"[bold red]FAIL[/]: {len(failing)} row(s) with {what} below {plan.fail_under:g}; worst: "
                      f"{worst['model']} / {worst['attack']} @ eps={worst['eps']:g}: "
                      f"{worst[value]:.3f} [{worst[low]:.3f}, {worst[high]:.3f}]")
            return EXIT_GATE
        err.print(f"[green]PASS[/]: every {metric} ({'lower bound' if plan.fail_on == 'lower' else 'point estimate'}) >= {plan.fail_under:g}")
    return EXIT_OK


def _interrupted(out_dir: str, argv: Sequence[str], world_size: int = 1) -> str:
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


def _cmd_list(args: argparse.Namespace, err) -> int:
    from rich.table import Table

    console = _console()
    table = Table(show_lines=False)
    if args.name is not None and args.what != "attacks":
        from robustaudit.core.errors import UserError

        raise UserError(f"list {args.what} takes no NAME; a NAME shows one attack: robustaudit list attacks {args.name}")
    if args.what == "models":
        from robustaudit.models.catalog import get_card, model_names
        from robustaudit.reports.view.numbers import format_count

        for col in ("name", "task", "data", "input", "classes", "training", "clean", "params", "MACs/input",
                    "description"):
            table.add_column(col, justify="right" if col in ("params", "MACs/input") else "left")
        for name in model_names():
            c = get_card(name)
            # classification models report clean accuracy, segmentation models clean mIoU
            acc = c.reported.get("clean_miou" if c.task == "segmentation" else "clean_accuracy")
            params, macs = _architecture_cost(c)
            table.add_row(name, c.task, c.dataset, "×".join(map(str, c.input_shape)), str(c.num_classes),
                          c.defense + (f" ({c.trained_for})" if c.trained_for else ""),
                          (f"{'mIoU ' if c.task == 'segmentation' else ''}{acc:.3f}") if acc is not None else "—",
                          f"{params:,}" if params is not None else "—",
                          format_count(macs) if macs is not None else "—", c.description)
        console.print(table)
        console.print("MACs per input from PyTorch's FLOP counter (FLOPs = 2 × MACs; convolutions and matmuls "
                      "only, element-wise ops not counted): see docs/cost.md.")
        console.print("Also: file.py:callable, package.module:callable, torchvision:ARCH, .pt2 and TorchScript files.")
    elif args.what == "attacks":
        _list_attacks(console, table, args.name)
    elif args.what == "defenses":
        _list_defenses(console, table)
    else:
        from robustaudit.data.registry import dataset_names

        table.add_column("dataset")
        table.add_column("description")
        for name, text in dataset_names().items():
            table.add_row(name, text)
        console.print(table)
    return EXIT_OK


def _list_attacks(console, table, name: str | None) -> None:
    """Every attack with its settings' names, or, given ``name``, each setting's type, default, range and doc."""
    from robustaudit.attacks.registry import attack_class, names, tasks_of, valid_settings

    if name is None:
        for col in ("name", "task", "kind", "norms", "settings", "summary"):
            table.add_column(col)
        for task in ("classification", "segmentation"):
            for each in names(wrappers=True, task=task):
                cls = attack_class(each, task=task)
                doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
                table.add_row(each, task, cls.kind.value, ", ".join(cls.norms), ", ".join(valid_settings(cls)), doc)
        console.print(table)
        console.print("Settings go inline: --attack pgd:steps=100,restarts=2; `robustaudit list attacks NAME` "
                      "shows their types, defaults and ranges. Under --task segmentation (or segmentation data) "
                      "the segmentation rows apply: there pgd is pixel-wise PGD.")
        return
    from rich.markup import escape

    for task in tasks_of(name) or ["classification"]:  # an unknown name: attack_class says so, with a close match
        cls = attack_class(name, task=task)
        doc = (cls.__doc__ or "").strip().splitlines()
        console.print(f"[bold]{escape(name)}[/] ({task}, {cls.kind.value}; norms {', '.join(cls.norms)}): "
                      f"{escape(doc[0]) if doc else ''}")
        detail = type(table)(show_lines=False)
        for col in ("setting", "type", "default", "range", "meaning"):
            detail.add_column(col)
        for s in cls.SETTINGS:
            if s.spec:  # the default as a spec writes it: true, none, ce
                default = str(s.default).lower() if s.default is None or isinstance(s.default, bool) else str(s.default)
                detail.add_row(*map(escape, (s.spec_key, s.type_text(), default, s.range_text(), s.doc)))
        console.print(detail if detail.rows else "  (no settings of its own)")


def _list_defenses(console, table) -> None:
    """Training-time defenses (``robustaudit train --defense``) and detectors (``audit --defense``)."""
    from robustaudit.defenses.detection import detector_class, detector_names
    from robustaudit.defenses.training import defense_class, defense_names

    for col in ("name", "kind", "used by", "summary"):
        table.add_column(col)
    for name in defense_names():
        doc = (defense_class(name).__doc__ or "").strip().splitlines()
        table.add_row(name, "training", "robustaudit train --defense", doc[0] if doc else "")
    for name in detector_names():
        table.add_row(name, "detector", "robustaudit audit --defense", detector_class(name).headline)
    console.print(table)
    console.print("Detectors are fitted on the train split (or --defense-data), thresholded at --defense-fpr on "
                  "held-out clean data, and evaluated under the plain and a detector-aware adaptive attack.")


def _architecture_cost(card) -> tuple[int | None, int | None]:
    """Parameters and MACs per input of a catalog entry's architecture (built without its weights: the
    counts do not depend on them); ``None`` for a figure that cannot be measured."""
    from robustaudit.evaluate.cost import count_parameters, flops_per_input

    try:
        model = card.builder()
    except Exception:  # noqa: BLE001 - a listing shows what it can
        return None, None
    try:
        macs = flops_per_input(model, card.input_shape) // 2
    except Exception:  # noqa: BLE001
        macs = None
    return count_parameters(model)[0], macs


def _cmd_report(args: argparse.Namespace, err) -> int:
    from robustaudit.evaluate.result import ResultMatrix
    from robustaudit.reports import write_reports
    from robustaudit.reports.terminal import render_terminal

    result = ResultMatrix.load(args.dir)
    console = _console()
    render_terminal(result, console)
    paths = write_reports(result, args.dir)
    console.print(f"wrote {paths['markdown']} and {paths['html']}")
    return EXIT_OK


class _RichProgress:
    """The runner's Progress protocol on a rich progress bar (on stderr, transient)."""

    def __init__(self, console) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=console, transient=True)
        self._task = None

    def __enter__(self) -> _RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def start(self, description: str, total: int) -> None:
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task(description, total=max(total, 1))

    def advance(self, amount: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, amount)


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


def _add_train_parser(sub) -> None:
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


def _cmd_train(args: argparse.Namespace, err) -> int:
    """``robustaudit train``: one epoch per progress step, then the card's numbers."""
    from robustaudit.core.errors import UserError
    from robustaudit.data.registry import require_train_split
    from robustaudit.defenses.checkpoint import train_checkpoint
    from robustaudit.defenses.training import TrainConfig, defense_class, parse_defense
    from robustaudit.evaluate.plan import parse_eps

    data_name = require_train_split(args.data)
    name, settings = parse_defense(args.defense)
    defense_class(name)  # an unknown name fails first, with a suggestion
    if args.beta is not None:
        if name not in ("trades", "mart"):
            raise UserError(f"--beta is the robust-term weight of trades and mart, not of '{name}'")
        settings.setdefault("beta", args.beta)
    if args.steps is not None:
        if name not in ("pgd-at", "trades", "mart"):
            raise UserError(f"--steps sets the inner attack of pgd-at, trades and mart, not of '{name}'")
        settings.setdefault("steps", args.steps)
    if args.eps is not None:
        values = parse_eps(args.eps)
        if len(values) != 1:
            raise UserError(f"--eps takes one training radius, got {args.eps!r}")
        eps = float(values[0])
    elif data_name == "digits":
        eps = 0.2
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
    config = TrainConfig(defense=name, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         weight_decay=args.weight_decay, eps=eps, norm=args.norm,
                         eps_warmup=max(1, args.eps_warmup), seed=args.seed, settings=settings, augment=args.augment)
    total = config.build().epochs(args.epochs)  # bad settings fail here, before any data is read
    with _EpochProgress(err, total, f"train {name}") as bar:
        result = train_checkpoint(args.model, args.data, config, args.out, dropout=args.dropout, on_epoch=bar.epoch)
    for note in result.log.events:
        err.print(f"[yellow]note:[/] {note}", soft_wrap=True, markup=True)
    rep = result.record["reported"]
    robust_key = next(k for k in rep if k.startswith("pgd"))
    err.print(f"{name} on {args.data}: clean {rep['clean_accuracy']:.4f}, {robust_key} {rep[robust_key]:.4f} "
              f"(test split, n={rep['n']}), {result.record['train_seconds']:.1f} s", soft_wrap=True, markup=False)
    err.print(f"wrote {result.checkpoint} and {result.card}; audit it with: robustaudit audit --model {result.checkpoint}",
              soft_wrap=True, markup=False)
    return EXIT_OK


class _EpochProgress:
    """A rich bar with loss and accuracy per epoch on a terminal; one plain line per epoch otherwise
    (CI logs keep every epoch, not the last redraw)."""

    def __init__(self, console, total: int, description: str) -> None:
        self._console, self._total, self._description = console, total, description
        self._progress = None
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
        stats = f"loss {loss:.4f} acc {accuracy:.4f}"
        if self._progress is not None:
            self._progress.update(self._task, advance=1, stats=stats)
        else:
            self._console.print(f"{self._description} epoch {epoch + 1}/{self._total}: {stats}",
                                soft_wrap=True, markup=False)


if __name__ == "__main__":  # pragma: no cover
    entrypoint()
