"""The adversarial patch (``provenance["patch"]``) and the physical-world proxies (``provenance["physical"]``)
sections: success rates with their stored 95% intervals, destruction rates, and the patches as figures."""

from __future__ import annotations

from typing import Any

from robustaudit.evaluate.result import ResultMatrix
from robustaudit.reports.view.blocks import Image, Section, Table
from robustaudit.reports.view.numbers import DASH, format_number, format_percent, format_percent_ci

PATCH_HEADERS = ("model", "patch", "target", "area", "n", "patch success", "noise control", "gap", "p (patch > noise)")
PATCH_NOTES = (
    ("Success: targeted, the share of test images neither labelled nor predicted as the target (clean) that "
     "the patched image makes the model call the target; untargeted, the share of clean-correct images it "
     "makes wrong. Area: the patch's share of the image (at most that many pixels change)."),
    ("Noise control: uniform random noise of the same size and shape at the same placements; occlusion alone "
     "changes predictions, the gap is the patch's own effect (p: one-sided exact McNemar test, patch > noise)."),
    ("Placements: a random location, rotation, scale and brightness/contrast per test image, keyed by the seed "
     "and the image (fresh draws, not the fit's); the patch was fitted on the training split. See docs/physical.md."),
)
LINKS_INTRO = "The patches (files under `artifacts/`, reusable with `--attack patch:load=FILE.pt`):"


def patch_block(result: ResultMatrix) -> dict[str, Any]:
    block = result.provenance.get("patch")
    return block if isinstance(block, dict) else {}


def physical_block(result: ResultMatrix) -> dict[str, Any]:
    block = result.provenance.get("physical")
    return block if isinstance(block, dict) else {}


def _rate_ci(x: Any, ci: Any) -> str:
    if isinstance(ci, list) and len(ci) == 2:
        return format_percent_ci(x, ci[0], ci[1])
    return format_percent(x)


def patch_rows(result: ResultMatrix) -> tuple[tuple[str, ...], ...]:
    """One row per model × patch × area share: success rates (%, 95% Wilson) of the patch and of the control."""
    return tuple(
        (str(r.get("model")), str(r.get("attack")), "untargeted" if r.get("target") is None else str(r["target"]),
         f"{100 * r.get('eps', 0):g}% ({r.get('area_pixels')} px)", str(r.get("n")),
         _rate_ci(r.get("success"), r.get("success_ci")), _rate_ci(r.get("control_success"), r.get("control_ci")),
         format_percent(r.get("gap")), format_number(r.get("p_value"), ".2g"))
        for r in patch_block(result).get("rows", []))


def patch_images(result: ResultMatrix) -> list[dict[str, Any]]:
    """``{"model", "attack", "eps", "artifact", "image" (C, R, R) lists}`` per fitted patch."""
    return [{k: r.get(k) for k in ("model", "attack", "eps", "artifact", "image", "shape")}
            for r in patch_block(result).get("rows", [])]


def patch_section(result: ResultMatrix) -> Section | None:
    """``## Adversarial patch``: notes, the table, the success curves and the patches (links in Markdown)."""
    rows = patch_rows(result)
    if not rows:
        return None
    table = Table(PATCH_HEADERS, rows, text_columns=4,
                  title="Adversarial patch: success % [95% CI] vs a noise control at the same placements",
                  caption=PATCH_NOTES)
    links = tuple((f"{p['model']} / {p['attack']} at {100 * p['eps']:g}%", str(p["artifact"]))
                  for p in patch_images(result) if p.get("artifact"))
    return Section("Adversarial patch", notes=PATCH_NOTES, table=table, links=links, links_intro=LINKS_INTRO,
                   images=(Image("patch_curve", "success vs patch size"), Image("patch_images", "patches")))


def physical_rows(result: ResultMatrix) -> tuple[tuple[str, ...], ...]:
    """One row per model × attack; each transform's cell: destruction rate % (counted images)."""
    block = physical_block(result)
    names = [t["name"] for t in block.get("transforms", [])]
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for r in block.get("rows", []):
        table.setdefault((r["model"], r["attack"]), {"n_adversarial": r.get("n_adversarial")})[r["transform"]] = r
    out = []
    for (model, attack), cells in table.items():
        row = [model, attack, str(cells["n_adversarial"])]
        for name in names:
            r = cells.get(name)
            row.append(DASH if r is None or not r.get("n") else f"{format_percent(r['rate'])} ({r['n']})")
        out.append(tuple(row))
    return tuple(out)


def _survivors(block: dict[str, Any]) -> str:
    """One line naming, per attack, the mean destruction rate: which perturbations would survive."""
    rates: dict[tuple[str, str], list[float]] = {}
    for r in block.get("rows", []):
        if r.get("n"):
            rates.setdefault((r["model"], r["attack"]), []).append(r["rate"])
    if not rates:
        return ""
    parts = [f"{a} on {m}: {100 * sum(v) / len(v):.0f}%" for (m, a), v in rates.items()]
    return "Mean destruction over the transforms (lower survives the physical world better): " + ", ".join(parts) + "."


def physical_notes(result: ResultMatrix) -> list[str]:
    block = physical_block(result)
    if not block.get("rows"):
        return []
    notes = [
        (f"Destruction rate % (Kurakin et al. 2016) of each attack's adversarial examples at eps={block.get('eps'):g} "
         f"({block.get('norm')}) on {block.get('n_samples')} test samples: of the images classified correctly both "
         "clean and clean-after-the-transform and misclassified adversarially (the count in parentheses), the share "
         "the transform turns back into correct predictions. Near 0: the perturbation survives; near 100: it does not."),
    ]
    survive = _survivors(block)
    if survive:
        notes.append(survive)
    harsh = sorted({r["transform"] for r in block["rows"]
                    if isinstance(r.get("clean_kept"), float) and r["clean_kept"] < 0.9})
    if harsh:
        notes.append(f"Harsh on clean images (keeps < 90% of them correct): {', '.join(harsh)}; judge those columns "
                     "with care.")
    notes.append("Transforms: " + "; ".join(f"{t['name']}: {t['description']}" for t in block.get("transforms", [])))
    return notes


def physical_section(result: ResultMatrix) -> Section | None:
    """``## Physical-world proxies``: notes and the destruction-rate table (the terminal shows the first
    three notes under it)."""
    rows = physical_rows(result)
    if not rows:
        return None
    notes = tuple(physical_notes(result))
    headers = ("model", "attack", "adversarial", *[t["name"] for t in physical_block(result).get("transforms", [])])
    table = Table(headers, rows, title="Physical-world proxies: destruction rate % (counted images)",
                  caption=notes[:3])
    return Section("Physical-world proxies", notes=notes, table=table)
