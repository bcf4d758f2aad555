"""Regenerate ``src/robustaudit/models/data/robustbench_published.json``, the published RobustBench
figures the report shows beside ours (DESIGN.md, robustbench source; the report's "Published figures" section).

Reads the leaderboard entries ``model_info/<dataset>/<threat>/<NAME>.json`` of a RobustBench checkout
(https://github.com/RobustBench/robustbench) and keeps what the report needs: architecture, clean
accuracy, ε, link, paper title and the robust accuracy (``autoattack_acc`` for Linf and L2,
``corruptions_acc`` for corruptions), in percent. Nothing is downloaded: point it at a checkout.

    git clone https://github.com/RobustBench/robustbench /tmp/robustbench
    git -C /tmp/robustbench checkout 78fcc9e48a07a861268f295a777b975f25155964
    python scripts/robustbench_published.py /tmp/robustbench

The shipped snapshot was made from commit 78fcc9e (236 entries); rerunning on that commit gives the
same bytes. Pass ``--commit`` to name the commit in the file's ``_source`` line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "src" / "robustaudit" / "models" / "data" / "robustbench_published.json"
#: The leaderboard field holding the robust accuracy, per threat.
ROBUST_FIELD = {"Linf": "autoattack_acc", "L2": "autoattack_acc", "corruptions": "corruptions_acc"}


def _percent(value: Any) -> float | None:
    """RobustBench writes accuracies as strings ("91.08"); an empty or missing one stays None."""
    if value in (None, ""):
        return None
    return float(value)


def entry(info: dict[str, Any], threat: str) -> dict[str, Any]:
    """The fields the report uses from one ``model_info`` file."""
    return {
        "architecture": info.get("architecture"),
        "clean_acc": _percent(info.get("clean_acc")),
        "eps": info.get("eps"),
        "link": info.get("link"),
        "paper": info.get("name"),
        "robust_acc": _percent(info.get(ROBUST_FIELD[threat])),
    }


def collect(checkout: Path) -> dict[str, dict[str, Any]]:
    """``{"<dataset>/<threat>/<NAME>": entry}`` for every leaderboard file under ``checkout/model_info``."""
    root = checkout / "model_info"
    if not root.is_dir():
        raise SystemExit(f"error: {checkout} is not a RobustBench checkout (no model_info/ folder)")
    models: dict[str, dict[str, Any]] = {}
    for path in sorted(root.glob("*/*/*.json")):
        dataset, threat, name = path.parent.parent.name, path.parent.name, path.stem
        if threat not in ROBUST_FIELD:
            continue
        models[f"{dataset}/{threat}/{name}"] = entry(json.loads(path.read_text()), threat)
    return models


def _head_commit(checkout: Path) -> str:
    result = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="a RobustBench git checkout")
    parser.add_argument("--commit", help="the commit to name in _source (default: the checkout's HEAD)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    commit = args.commit or _head_commit(args.checkout)
    snapshot = {
        "_source": f"RobustBench/robustbench model_info/<dataset>/<threat>/<NAME>.json at commit {commit}; "
                   "robust_acc is autoattack_acc (Linf, L2) or corruptions_acc (corruptions), percent",
        "models": collect(args.checkout),
    }
    # indent=0: one field per line, so a leaderboard update reads as a small diff.
    args.out.write_text(json.dumps(snapshot, indent=0, sort_keys=True, ensure_ascii=False))


if __name__ == "__main__":
    main()
