"""``--robust-compare`` / ``--robust-compare-fail``: this run against a saved session, row by row.

A row is one ``(model, attack, eps)`` cell of one audit of one test (the n-th ``robustness.audit()``
call of test ``nodeid`` is matched with the n-th call of the same test in the baseline). Gates:

- ``robust_accuracy:0.02`` — absolute drop: fail when ``baseline - now > 0.02`` (2 points);
- ``robust_accuracy:5%`` — relative drop: fail when ``(baseline - now) / baseline > 5%``;
- ``robust_accuracy:significant`` — a drop beyond what the sample explains, from paired per-sample
  outcomes on the samples both runs audited: ``b`` = samples robust in the baseline and broken now
  (regressions), ``c`` = the reverse (improvements). Under "no change" each of the ``b + c``
  discordant samples is a regression with probability 1/2 (exact McNemar test), so
  ``p = P(X >= b), X ~ Binomial(b + c, 1/2)``; fail when ``p < 0.05``.

``clean_accuracy`` and ``ci_low`` take the absolute and relative forms too.

A baseline row that a test which ran no longer produces is *missing*: with any gate it fails the test,
since a regression gate that matches nothing would pass whatever the figures did (a model wrapped in
``nn.Sequential`` is named ``Sequential`` and its rows would all be new). Standard library only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustaudit.core.errors import UserError, suggest
from robustaudit.evaluate.metrics import binomial_tail
from robustaudit.plugin.tables import eps_text, pct, row_key, text_table, useful_records

SESSION_FORMAT = "robustaudit-pytest-session"
SESSION_VERSION = 1
#: Fields a compare gate may watch; ``significant`` needs per-sample ids, which only robust accuracy has.
FIELDS: tuple[str, ...] = ("robust_accuracy", "clean_accuracy", "ci_low")
ALPHA = 0.05
#: The status of a baseline row this run lacks, and the "gate" it fails when any gate is given.
MISSING = "missing"
_TOL = 1e-12  # a drop exactly at the threshold passes; float noise must not turn it into a failure


@dataclass(frozen=True)
class CompareGate:
    """One ``--robust-compare-fail`` expression, parsed."""

    field: str
    kind: str  # "absolute" | "relative" | "significant"
    threshold: float  # a drop in accuracy units, a fraction of the baseline, or the test's alpha
    text: str

    def describe(self) -> str:
        if self.kind == "absolute":
            return f"{self.text} (absolute drop of {self.field} > {100 * self.threshold:.4g} points)"
        if self.kind == "relative":
            return f"{self.text} (relative drop of {self.field} > {100 * self.threshold:.4g}% of the baseline)"
        return (f"{self.text} (paired exact one-sided binomial test of regressions vs improvements, "
                f"p < {self.threshold:g})")

    def fails(self, row: Mapping[str, Any]) -> bool:
        """Whether ``row`` (a comparison row, see :func:`compare_test`) breaks this gate."""
        if self.kind == "significant":
            return row.get("p") is not None and row["p"] < self.threshold
        base, now = row["baseline"].get(self.field), row["now"].get(self.field)
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (base, now)):
            return False
        drop = base - now
        if self.kind == "absolute":
            return drop > self.threshold + _TOL
        return base > 0 and drop / base > self.threshold + _TOL


def parse_gate(text: str) -> CompareGate:
    """Parse ``FIELD:DROP``, ``FIELD:PCT%`` or ``FIELD:significant`` (see the module docstring)."""
    field, sep, value = text.strip().partition(":")
    field, value = field.strip(), value.strip()
    if not sep or not value:
        raise UserError(
            f"--robust-compare-fail: cannot parse {text!r}; expected FIELD:DROP such as "
            "'robust_accuracy:0.02', 'robust_accuracy:5%' or 'robust_accuracy:significant'"
        )
    if field not in FIELDS:
        raise UserError(
            f"--robust-compare-fail: unknown field '{field}'{suggest(field, FIELDS)}; valid: {', '.join(FIELDS)}"
        )
    if value.lower() == "significant":
        if field != "robust_accuracy":
            raise UserError("--robust-compare-fail: 'significant' needs per-sample outcomes, "
                            "which only robust_accuracy has")
        return CompareGate(field, "significant", ALPHA, f"{field}:significant")
    relative = value.endswith("%")
    try:
        number = float(value[:-1] if relative else value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number < 0 or (not relative and number > 1):
        raise UserError(
            f"--robust-compare-fail: {text!r}: the drop is an accuracy difference in [0, 1] (0.02 = 2 points), "
            "a percentage of the baseline such as '5%', or 'significant'"
        )
    if relative:
        return CompareGate(field, "relative", number / 100, f"{field}:{value}")
    return CompareGate(field, "absolute", number, f"{field}:{value}")


def load_session(path: str | Path) -> dict[str, Any]:
    """Read a ``--robust-save`` file; :class:`UserError` when it is not one."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--robust-compare: no such file '{p}'") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"--robust-compare: cannot read '{p}': {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != SESSION_FORMAT:
        raise UserError(f"--robust-compare: '{p}' is not a robustaudit session file (written by --robust-save)")
    if doc.get("version") != SESSION_VERSION:
        raise UserError(f"--robust-compare: '{p}' has version {doc.get('version')!r}; this robustaudit reads "
                        f"{SESSION_VERSION}")
    return doc


def _ids_by_key(audit: Mapping[str, Any]) -> dict[tuple[str, str, float], set[int]]:
    return {row_key(r): {int(i) for i in r.get("ids", [])} for r in audit.get("robust_ids", [])}


def compare_test(baseline_test: Mapping[str, Any] | None, audits: Sequence[Mapping[str, Any]],
                 gates: Sequence[CompareGate]) -> dict[str, Any]:
    """Compare one test's audits with its baseline entry.

    Returns ``{"status": "compared" | "new", "rows": [...], "failed": bool}``; each row has ``audit``,
    ``model``, ``attack``, ``eps``, ``baseline`` and ``now`` (``n`` and the :data:`FIELDS`; empty on the
    side that lacks the row), the paired counts ``b`` (regressions) and ``c`` (improvements) with the
    one-sided ``p`` (``None`` when either side lacks per-sample ids), ``status`` and ``failed`` (the gates
    it breaks). ``status`` is ``"compared"``, ``"new"`` (not in the baseline; never fails) or
    ``"missing"`` (in the baseline, not in this run: ``failed`` is ``["missing"]`` when any gate is
    given). Each audit's rows come first, then the baseline rows it lacks.
    """
    if baseline_test is None:
        return {"status": "new", "rows": [], "failed": False}
    base_audits = list(baseline_test.get("audits", []))
    rows: list[dict[str, Any]] = []
    for i in range(max(len(audits), len(base_audits))):
        base = base_audits[i] if i < len(base_audits) else {}
        now = audits[i] if i < len(audits) else {}
        rows.extend(_audit_rows(i, base, now, gates))
        # an audit() call the test no longer makes loses all its rows
        now_keys = {row_key(r) for r in now.get("records", [])}
        rows.extend(_missing_row(i, old, gates) for old in useful_records(base.get("records", []))
                    if row_key(old) not in now_keys)
    return {"status": "compared", "rows": rows, "failed": any(r["failed"] for r in rows)}


def _audit_rows(i: int, base: Mapping[str, Any], audit: Mapping[str, Any],
                gates: Sequence[CompareGate]) -> list[dict[str, Any]]:
    """The rows of audit ``i`` of this run, each matched with its baseline record when there is one."""
    base_records = {row_key(r): r for r in base.get("records", [])}
    base_ids, now_ids = _ids_by_key(base), _ids_by_key(audit)
    rows = []
    for rec in useful_records(audit.get("records", [])):
        key = row_key(rec)
        row: dict[str, Any] = {"audit": i, "model": key[0], "attack": key[1], "eps": float(rec["eps"]),
                               "now": _figures(rec), "baseline": {}, "b": None, "c": None, "p": None,
                               "status": "new", "failed": []}
        old = base_records.get(key)
        if old is not None:
            row["status"] = "compared"
            row["baseline"] = _figures(old)
            if key in base_ids and key in now_ids:
                # ids are positions 0..n-1 of the audited subset: pair on the samples both audited
                common = min(int(old.get("n") or 0), int(rec.get("n") or 0))
                was = {j for j in base_ids[key] if j < common}
                now = {j for j in now_ids[key] if j < common}
                row["b"], row["c"] = len(was - now), len(now - was)
                row["p"] = binomial_tail(row["b"], row["c"])
            row["failed"] = [g.text for g in gates if g.fails(row)]
        rows.append(row)
    return rows


def _missing_row(i: int, old: Mapping[str, Any], gates: Sequence[CompareGate]) -> dict[str, Any]:
    key = row_key(old)
    return {"audit": i, "model": key[0], "attack": key[1], "eps": float(old["eps"]), "now": {},
            "baseline": _figures(old), "b": None, "c": None, "p": None, "status": MISSING,
            "failed": [MISSING] if gates else []}


def _figures(record: Mapping[str, Any]) -> dict[str, Any]:
    return {"n": record.get("n"), **{f: record.get(f) for f in FIELDS}}


def _change(row: Mapping[str, Any]) -> str:
    base, now = row["baseline"].get("robust_accuracy"), row["now"].get("robust_accuracy")
    if not all(isinstance(v, (int, float)) for v in (base, now)):
        return "-"
    return f"{100 * (now - base):+.1f} pts"


_VERDICTS = {"new": "new", MISSING: MISSING}


def comparison_rows(rows: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """Text cells: model, attack, eps, baseline, now, change, regressions/improvements, p, verdict."""
    out = []
    for r in rows:
        paired = "-" if r.get("b") is None else f"{r['b']}/{r['c']}"
        p = "-" if r.get("p") is None else f"{r['p']:.3g}"
        verdict = "FAIL " + ", ".join(r["failed"]) if r.get("failed") else _VERDICTS.get(str(r.get("status")), "ok")
        out.append([str(r["model"]), str(r["attack"]), eps_text(r["eps"]),
                    pct(r["baseline"].get("robust_accuracy")), pct(r["now"].get("robust_accuracy")),
                    _change(r), paired, p, verdict])
    return out


COMPARISON_HEADERS: tuple[str, ...] = ("model", "attack", "eps", "baseline", "now", "change",
                                       "lost/gained", "p", "verdict")


def regression_message(result: Mapping[str, Any], baseline: str, gates: Sequence[CompareGate]) -> str:
    """The failure text of a test that broke a ``--robust-compare-fail`` gate: its rows that regressed, and
    the baseline rows it lacks (:func:`missing_reason` says why and how to fix it)."""
    rows = [r for r in result["rows"] if r.get("status") != MISSING]
    failing = [r for r in rows if r.get("failed")]
    missing = [r for r in result["rows"] if r.get("status") == MISSING]
    head = (f"robustness regression against baseline {baseline}" if failing
            else f"baseline rows missing from this run (baseline {baseline})")
    lines = [head, "gates: " + "; ".join(g.describe() for g in gates)]
    if failing:
        lines += [(f"{len(failing)} of {len(rows)} compared rows failed "
                   "(lost/gained: samples robust in the baseline and broken now / the reverse; "
                   "p: one-sided exact binomial test of lost vs gained):"),
                  text_table(COMPARISON_HEADERS, comparison_rows(failing))]
    if missing:
        lines += [missing_reason(result["rows"]), text_table(COMPARISON_HEADERS, comparison_rows(missing))]
    return "\n".join(lines)


def _names(models: Sequence[str]) -> str:
    return ", ".join(f"'{m}'" for m in models)


def missing_reason(rows: Sequence[Mapping[str, Any]]) -> str:
    """One line on a test's missing rows (see :func:`compare_test`): which baseline rows this run lacks,
    the likely cause (a renamed model when a baseline model is gone) and the fix."""
    missing = [r for r in rows if r.get("status") == MISSING]
    head = f"{len(missing)} baseline row(s) missing from this run (no current row has their model, attack and eps)"
    present = {str(r["model"]) for r in rows if r.get("status") != MISSING}
    in_baseline = {str(r["model"]) for r in rows if r.get("status") in ("compared", MISSING)}
    gone = sorted({str(r["model"]) for r in missing} - present)
    appeared = sorted(present - in_baseline)
    resave = "re-save the baseline (--robust-save) to accept the change"
    if gone and appeared:
        # the usual cause: a module is named after its class, and a wrapper brings its own class
        return (f"{head}: model {_names(gone)} of the baseline is not in this run, which has {_names(appeared)}: "
                "the model was renamed (a module is named after its class, so wrapping it in nn.Sequential or "
                f"a normalization layer renames it); name it explicitly, robustness.audit({{'{gone[0]}': model}}, "
                f"data), or {resave}")
    if gone:
        return (f"{head}: model {_names(gone)} of the baseline is not in this run: if it was renamed, name it "
                f"explicitly, robustness.audit({{'{gone[0]}': model}}, data); if it is no longer audited, {resave}")
    return (f"{head}: an attack, an eps or an audit() call of the baseline is gone; restore it or {resave}")
