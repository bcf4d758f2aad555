"""Robustness gates: a threshold on the selected rows of an audit, and its sanity checks.

A gate has two halves: the threshold on the selected rows, and the audit's sanity checks. A ``fail``
verdict means the measured robust accuracy is probably too high (probabilities instead of logits, masked
gradients, ...): the figure is only an upper bound, so a test must not pass on it;
``allow_failed_checks=True`` accepts such figures once the user has read the verdicts. A ``fail`` that an
adaptive evaluation of ``checks="full"`` answered (``answered_by``: its columns joined the worst case) no
longer fails the gate (:mod:`robustaudit.evaluate.reliability`, the rule the CLI's ``--fail-under`` uses
too). ``warn`` verdicts never fail a gate; the summary and reports show them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from robustaudit.core.errors import UserError
from robustaudit.evaluate.reliability import detector_bases, unanswered
from robustaudit.evaluate.result import ResultMatrix
from robustaudit.plugin.settings import check_bound, validate
from robustaudit.plugin.tables import MATRIX_HEADERS, check_line, matrix_rows, pct, row_key, text_table, useful_records

__all__ = ["BOUND_TEXT", "CHECKS_ADVICE", "RobustResult", "RobustnessFailure", "checks_message",
           "describe_settings", "evaluate_gate", "gate_checks_failed", "gate_message"]


#: How each bound is described in a gate's failure message.
BOUND_TEXT = {
    "point": ("the point estimate (the measured robust accuracy); bound='lower' or --robust-gate=lower "
              "gates the lower 95% Wilson bound instead"),
    "lower": ("the lower 95% Wilson bound (ci_low), which must reach the threshold: "
              "the point estimate alone is not enough"),
}


#: Appended to a failing-checks message: what to do, and the escape hatch.
CHECKS_ADVICE = ("read the linked sections of docs/checks.md and fix the model or the evaluation; "
                 "allow_failed_checks=True (on assert_robust() or the marker) accepts the figures anyway")


class RobustnessFailure(AssertionError):
    """A robustness gate failed; the message lists the failing rows and the threshold, or the failing
    sanity checks."""


@dataclass(eq=False)
class RobustResult(ResultMatrix):
    """A :class:`ResultMatrix` that knows its test's gate defaults: ``.assert_robust()`` chains on
    ``robustness.audit(...)``. Everything else (``records``, ``robust_ids``, ``to_dict()``) is the
    plain ResultMatrix."""

    settings: dict[str, Any] = field(default_factory=dict, repr=False)
    on_gate: Callable[[RobustResult, dict[str, Any]], None] | None = field(default=None, repr=False)

    @classmethod
    def wrap(cls, result: ResultMatrix, *, settings: dict[str, Any],
             on_gate: Callable[[RobustResult, dict[str, Any]], None] | None = None) -> RobustResult:
        base = {f.name: getattr(result, f.name) for f in fields(ResultMatrix) if f.init}
        return cls(**base, settings=settings, on_gate=on_gate)

    def assert_robust(
        self,
        min_accuracy: float | None = None,
        *,
        bound: str | None = None,
        model: str | None = None,
        attack: str | None = None,
        eps: float | None = None,
        allow_failed_checks: bool | None = None,
    ) -> RobustResult:
        """Fail unless every selected row's robust accuracy reaches ``min_accuracy`` and no sanity check
        of the selected models failed.

        Args:
            min_accuracy: a fraction in [0, 1]; defaults to the marker's ``min_accuracy``.
            bound: ``"point"`` gates the measured robust accuracy, ``"lower"`` its lower 95% Wilson
                bound; defaults to the marker's ``bound``, then ``--robust-gate`` (default ``"point"``).
            model, attack, eps: gate only the rows of this model / attack (``"worst-case"`` for the
                per-sample worst case over attacks) / eps. By default every row is gated. ``model`` also
                narrows the sanity checks to that model's (and the audit-wide ones).
            allow_failed_checks: ``True`` passes despite ``fail`` verdicts of the sanity checks
                (``result.checks``); defaults to the marker's ``allow_failed_checks``, else ``False``.
        Returns:
            ``self``, so calls chain.
        Raises:
            RobustnessFailure: an ``AssertionError`` whose message shows the failing rows, the
                threshold and which bound was gated, and each failing check with its doc link.
        """
        __tracebackhide__ = True
        gate = evaluate_gate(self, min_accuracy, bound=bound, model=model, attack=attack, eps=eps,
                             allow_failed_checks=allow_failed_checks)
        if self.on_gate is not None:
            self.on_gate(self, gate)
        if not gate["passed"]:
            raise RobustnessFailure(gate_message(self, gate))
        return self


def evaluate_gate(result: RobustResult, min_accuracy: float | None, *, bound: str | None = None,
                  model: str | None = None, attack: str | None = None, eps: float | None = None,
                  allow_failed_checks: bool | None = None) -> dict[str, Any]:
    """Check ``result`` against ``min_accuracy`` and its sanity checks; returns the gate as plain data.

    Keys: ``min_accuracy``, ``bound``, ``filters``, ``checked`` and ``failing`` (lists of
    ``[model, attack, eps]``), ``rows_passed``, ``checks`` (the audit's level), ``failed_checks`` (the
    ``fail`` verdicts of the gated models: ``id``, ``model``, ``message``, ``doc``),
    ``allow_failed_checks`` and ``passed`` (rows passed, and no failed check unless allowed).
    """
    settings = result.settings
    if min_accuracy is None:
        min_accuracy = settings.get("min_accuracy")
    if min_accuracy is None:
        raise UserError("assert_robust: no threshold; give assert_robust(min_accuracy=0.6) or "
                        "@pytest.mark.robustness(min_accuracy=0.6)")
    if allow_failed_checks is None:
        allow_failed_checks = bool(settings.get("allow_failed_checks", False))
    checked_kwargs = validate({"min_accuracy": min_accuracy, "allow_failed_checks": allow_failed_checks},
                              where="assert_robust")
    min_accuracy = checked_kwargs["min_accuracy"]
    bound = check_bound(bound if bound is not None else settings.get("bound", "point"), "assert_robust: bound")
    records = result.records
    mask = records["model"].notna()
    filters = {k: v for k, v in (("model", model), ("attack", attack), ("eps", eps)) if v is not None}
    for key, value in filters.items():
        mask &= (records[key] - float(value)).abs() < 1e-9 if key == "eps" else records[key] == value
    rows = records[mask]
    if rows.empty:
        have = ", ".join(f"{m}/{a}/{e:g}" for m, a, e in
                         records[["model", "attack", "eps"]].drop_duplicates().itertuples(index=False))
        raise UserError(f"assert_robust: no row matches {filters}; the audit has {have or 'no rows'}")
    below = result.below(min_accuracy, bound=bound)
    column = "robust_accuracy" if bound == "point" else "ci_low"
    failing_keys = {row_key(r) for r in below.to_dict(orient="records")}
    failing_keys |= {row_key(r) for r in records[records[column].isna()].to_dict(orient="records")}
    checked = [row_key(r) for r in rows.to_dict(orient="records")]
    failing = [k for k in checked if k in failing_keys]
    # checks are per model (or audit-wide, model None), not per attack or eps: a model filter narrows them
    # (a detector row MODEL+DETECTOR to its model's); an answered fail (answered_by) is not an upper bound
    checked_model = None if model is None else detector_bases(result.provenance).get(model, model)
    failed_checks = [{k: c.get(k) for k in ("id", "model", "message", "doc")}
                     for c in unanswered(result.checks, checked_model)]
    allowed = checked_kwargs["allow_failed_checks"]
    return {"min_accuracy": min_accuracy, "bound": bound, "filters": filters,
            "checked": [list(k) for k in checked], "failing": [list(k) for k in failing],
            "rows_passed": not failing, "checks": settings.get("checks", _checks_level(result)),
            "failed_checks": failed_checks, "allow_failed_checks": allowed,
            "passed": not failing and (allowed or not failed_checks)}


def _checks_level(result: ResultMatrix) -> str | None:
    """The sanity-check level the audit ran (from its provenance), for a result made outside the fixture."""
    provenance = result.provenance if isinstance(result.provenance, Mapping) else {}
    level = (provenance.get("checks") or {}).get("level")
    return None if level is None else str(level)


def gate_message(result: RobustResult, gate: Mapping[str, Any]) -> str:
    """The failure text: threshold, which bound was gated, the failing rows; the failing sanity checks
    (unless allowed); the settings."""
    lines = []
    if gate["failing"]:
        failing = {tuple(k) for k in gate["failing"]}
        checked = {tuple(k) for k in gate["checked"]}
        # a model's worst-case rows repeat its only attack's rows: count and show them once
        useful = useful_records(result.records.to_dict(orient="records"))
        shown = [r for r in useful if row_key(r) in failing]
        n_checked = sum(1 for r in useful if row_key(r) in checked)
        column = "robust accuracy" if gate["bound"] == "point" else "lower 95% bound of robust accuracy"
        lines += [
            f"{column} below min_accuracy={pct(gate['min_accuracy'])} in {len(shown)} of {n_checked} gated rows",
            f"gated on {BOUND_TEXT[gate['bound']]}",
            text_table(MATRIX_HEADERS, matrix_rows(shown)),
        ]
    if gate_checks_failed(gate):
        lines.append(checks_message(gate))
    lines.append(f"settings: {describe_settings(result.settings)}")
    return "\n".join(lines)


def gate_checks_failed(gate: Mapping[str, Any]) -> bool:
    """Did this gate fail on sanity checks (a ``fail`` verdict, not allowed)?"""
    return bool(gate.get("failed_checks")) and not gate.get("allow_failed_checks", False)


def checks_message(gate: Mapping[str, Any]) -> str:
    """The failing sanity checks of a gate, one line each with its doc link, then what to do."""
    failed = gate.get("failed_checks", [])
    models = list(dict.fromkeys(str(c.get("model")) for c in failed if c.get("model") is not None))
    whose = f" of {', '.join(models)}" if models else ""
    level = f" (checks={gate['checks']})" if gate.get("checks") else ""
    names = ", ".join(dict.fromkeys(f"{c.get('id')} failed" for c in failed))
    # the reason in one line, naming the failed checks; the details and the way out follow
    head = f"sanity checks failed{level}: the robust accuracy{whose} is an upper bound ({names})"
    lines = [head]
    lines += ["  " + check_line({**c, "status": "fail"}) for c in failed]
    lines.append(CHECKS_ADVICE)
    return "\n".join(lines)


def describe_settings(settings: Mapping[str, Any]) -> str:
    if not settings:
        return "-"
    n = "all" if settings.get("n") is None else settings.get("n")
    return (f"profile {settings.get('profile')}, n={n}, steps={settings.get('steps')}, "
            f"restarts={settings.get('restarts')}, seed={settings.get('seed')}, device={settings.get('device')}, "
            f"checks={settings.get('checks', '-')}")
