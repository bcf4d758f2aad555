"""The ``robustaudit`` command: ``audit``, ``list``, ``report``. ``main(argv) -> int`` never raises.

Exit codes: 0 done; 1 a ``--fail-under`` gate failed; 2 a user mistake (one line on stderr);
3 an internal error (a bug: rerun with ROBUSTAUDIT_DEBUG=1 for the traceback); 4 interrupted
(Ctrl-C, or SIGTERM as CI cancellations send: finished batches stay stored and the message gives the
command line that continues with ``--resume``).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from pathlib import Path
import warnings
from collections.abc import Sequence

from robustaudit.cli_audit import (  # noqa: F401 - re-exported: tests and scripts import them from here
    AUDIT_EXAMPLES,
    add_audit_parser,
    cmd_audit,
    options_from_args,
    spec_from_args,
)
from robustaudit.cli_audit import interrupted as _interrupted  # noqa: F401
from robustaudit.cli_common import (  # noqa: F401 - the exit codes are part of this module's interface
    EXIT_GATE,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    Parser,
    Rank,
    console,
    plain,
)
from robustaudit.cli_train import add_train_parser, cmd_train

#: The resolved spec of parsed ``audit`` arguments (the name tests know).
_plan_from_args = spec_from_args


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of all subcommands."""
    from robustaudit import __version__

    p = Parser(prog="robustaudit", description="Adversarial robustness testing for PyTorch models.",
               epilog="Run `robustaudit COMMAND --help` for each command's options and examples.")
    p.add_argument("--version", action="version", version=f"robustaudit {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    add_audit_parser(sub)
    ls = sub.add_parser("list", help="list catalog models, attacks, datasets or defenses",
                        description="List what robustaudit knows.",
                        epilog="examples:\n  robustaudit list models\n  robustaudit list attacks\n"
                               "  robustaudit list attacks pgd     # its settings: type, default, range\n"
                               "  robustaudit list models --source torchvision   # published weights, offline",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ls.add_argument("what", choices=["models", "attacks", "datasets", "defenses"])
    ls.add_argument("name", nargs="?", metavar="NAME", help="with attacks: one attack's settings in detail")
    ls.add_argument("--source", choices=["catalog", "torchvision", "timm", "robustbench"], default=None,
                    help="with models: whose models (default catalog: ours); torchvision lists its classification "
                    "weight enums with published top-1, timm its pretrained tags, robustbench its zoo with "
                    "published clean/AutoAttack accuracy; each marks those in the cache")
    ls.add_argument("--model-dir", metavar="DIR", dest="model_dir",
                    help="with --source torchvision|timm|robustbench: the cache to look in (default: torch.hub.get_dir(); "
                    "timm: the Hugging Face hub cache, HF_HUB_CACHE; robustbench: ./models, its own default)")

    r = sub.add_parser("report", help="re-render the reports of a finished run",
                       description="Read DIR/results.json (and examples.npz) and rewrite report.md and "
                       "report.html; runs no model. DIR may also be the results.json file itself.",
                       epilog="example:\n  robustaudit report robustaudit-out",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("dir", metavar="DIR")
    add_train_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (never raises, never prints a traceback for user mistakes)."""
    Rank.value = 0
    err = console(stderr=True)
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
                f"[yellow]warning:[/] {plain(str(message))}", soft_wrap=True)
            return _dispatch(argv, err)
    except UserError as exc:
        err.print(f"[bold red]error:[/] {plain(str(exc))}", soft_wrap=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]: finished batches are in the output directory's results.sqlite")
        return EXIT_INTERRUPTED
    except SystemExit as exc:  # --help/--version return in _dispatch: this one came from a user's code
        err.print(f"[bold red]error:[/] the user's code called sys.exit({plain(repr(exc.code))}) while "
                  "robustaudit ran it (a model's forward or factory?); raise an exception instead", soft_wrap=True)
        return EXIT_USAGE
    except Exception as exc:  # a bug of ours: one line, the traceback on request
        if os.environ.get("ROBUSTAUDIT_DEBUG"):
            traceback.print_exc()
        err.quiet = False  # every rank reports its own internal error
        err.print(f"{f'rank {Rank.value}: ' if Rank.value else ''}[bold red]internal error:[/] {type(exc).__name__}: {plain(str(exc))} "
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
    return {"audit": cmd_audit, "list": _cmd_list, "report": _cmd_report,
            "train": cmd_train}[args.command](args, err)


def entrypoint() -> None:
    """``[project.scripts]`` target."""
    sys.exit(main())


def _cmd_list(args: argparse.Namespace, err) -> int:
    from rich.table import Table

    out = console()
    table = Table(show_lines=False)
    if args.name is not None and args.what != "attacks":
        from robustaudit.core.errors import UserError

        raise UserError(f"list {args.what} takes no NAME; a NAME shows one attack: robustaudit list attacks {args.name}")
    if (args.source is not None or args.model_dir is not None) and args.what != "models":
        from robustaudit.core.errors import UserError

        raise UserError(f"--source and --model-dir go with 'list models', not 'list {args.what}'")
    if args.what == "models" and args.source not in (None, "catalog"):
        _list_source(out, table, args.source, args.model_dir)
    elif args.what == "models":
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
        out.print(table)
        out.print("MACs per input from PyTorch's FLOP counter (FLOPs = 2 × MACs; convolutions and matmuls "
                      "only, element-wise ops not counted): see docs/cost.md.")
        out.print("Also: file.py:callable, package.module:callable, torchvision:ARCH, torchvision:ARCH:weights=ENUM "
                  "(list models --source torchvision), timm:NAME, robustbench:NAME (--source robustbench), .pt2 and TorchScript files.")
    elif args.what == "attacks":
        _list_attacks(out, table, args.name)
    elif args.what == "defenses":
        _list_defenses(out, table)
    else:
        from robustaudit.data.registry import dataset_names

        table.add_column("dataset")
        table.add_column("description")
        for name, text in dataset_names().items():
            table.add_row(name, text)
        out.print(table)
    return EXIT_OK


def _list_source(console, table, source: str, model_dir: str | None) -> None:
    """Published models of another library, offline: torchvision's weight enums (``timm``: its extra)."""
    if source == "timm":
        _list_timm(console, table, model_dir)
        return
    if source == "robustbench":
        _list_robustbench(console, table, model_dir)
        return
    from robustaudit.models.torchvision_weights import hub_dir, list_torchvision_weights

    rows = list_torchvision_weights(model_dir)
    for col in ("model", "params", "acc@1 (ImageNet-1K)", "cached"):
        table.add_column(col, justify="right" if col in ("params", "acc@1 (ImageNet-1K)") else "left")
    for row in rows:
        table.add_row(row["spec"] + (" (DEFAULT)" if row["default"] else ""),
                      f"{row['params']:,}" if row["params"] is not None else "—",
                      f"{row['acc1']:.1f}%" if row["acc1"] is not None else "—", "yes" if row["cached"] else "")
    console.print(table)
    cached = sum(row["cached"] for row in rows)
    console.print(f"{len(rows)} weight enums, {cached} in {hub_dir(model_dir) / 'checkpoints'}; published top-1 from "
                  "torchvision's metadata. Audit one with --model SPEC (--allow-download fetches a missing file).")


def _list_timm(console, table, model_dir: str | None) -> None:
    """timm's pretrained tags, offline: spec, hub repo, cached; then how many architectures take --weights."""
    from robustaudit.models.timm_models import hf_cache_dir, list_timm_models, list_timm_weights

    rows = list_timm_weights(model_dir)  # one line naming the extra when timm is missing
    for col in ("model", "hub repo", "cached"):
        table.add_column(col)
    for row in rows:
        table.add_row(row["spec"], row["hf_hub_id"] or "— (not on the hub)", "yes" if row["cached"] else "")
    console.print(table)
    cached = sum(row["cached"] for row in rows)
    console.print(f"{len(rows)} timm weight tags, {cached} in {hf_cache_dir(model_dir)}; any of the "
                  f"{len(list_timm_models())} timm architectures also takes your own file: --model timm:ARCH "
                  "--weights FILE. Audit a tag with --model SPEC (--allow-download fetches a missing file).")


def _list_robustbench(console, table, model_dir: str | None) -> None:
    """RobustBench's zoo, offline: name, dataset, threat, published clean and AutoAttack accuracy, cached."""
    from robustaudit.models.robustbench_models import DEFAULT_MODEL_DIR, list_robustbench

    rows = list_robustbench(model_dir)  # one line naming the extra when robustbench is missing
    for col in ("model", "dataset", "threat", "clean", "AutoAttack", "cached"):
        table.add_column(col, justify="right" if col in ("clean", "AutoAttack") else "left")
    for row in rows:
        table.add_row(f"robustbench:{row['name']}", row["dataset"], row["threat"],
                      *(f"{row[k]:.2f}%" if row[k] is not None else "—" for k in ("clean_acc", "robust_acc")),
                      "yes" if row["cached"] else "")
    console.print(table)
    cached = sum(row["cached"] for row in rows)
    console.print(f"{len(rows)} RobustBench models, {cached} in {model_dir or DEFAULT_MODEL_DIR}; published accuracy "
                  "from RobustBench's model_info (AutoAttack; corruptions accuracy for threat corruptions). Audit one "
                  "with --model robustbench:NAME:dataset=D,threat=T (--allow-download fetches a missing file).")


def _listed_norms(name: str, cls: type, task: str) -> str:
    """The norms ``list attacks`` shows: those an audit of ``task`` can ask for with ``--norm`` (a class may
    list more: foolbox's l0 distance, which no audit takes); a wrapper's are the wrapped attack's."""
    from robustaudit.attacks.registry import WRAPPERS
    from robustaudit.evaluate.options import AUDIT_NORMS

    if name in WRAPPERS and name != "foolbox":
        return "the wrapped attack's"
    norms = cls.norms if task == "segmentation" else [n for n in cls.norms if n in AUDIT_NORMS]
    return ", ".join(norms)


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
                table.add_row(each, task, cls.kind.value, _listed_norms(each, cls, task), ", ".join(valid_settings(cls)),
                              doc)
        console.print(table)
        console.print("Settings go inline: --attack pgd:steps=100,restarts=2; `robustaudit list attacks NAME` "
                      "shows their types, defaults and ranges. Under --task segmentation (or segmentation data) "
                      "the segmentation rows apply: there pgd is pixel-wise PGD.")
        return
    from rich.markup import escape

    for task in tasks_of(name) or ["classification"]:  # an unknown name: attack_class says so, with a close match
        cls = attack_class(name, task=task)
        doc = (cls.__doc__ or "").strip().splitlines()
        console.print(f"[bold]{escape(name)}[/] ({task}, {cls.kind.value}; norms {_listed_norms(name, cls, task)}): "
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
    # a results.json path names its run: the reports go beside it, as the audit wrote them
    folder = Path(args.dir).parent if Path(args.dir).is_file() else Path(args.dir)
    out = console()
    render_terminal(result, out)
    paths = write_reports(result, folder)
    out.print(f"wrote {paths['markdown']} and {paths['html']}")
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    entrypoint()
