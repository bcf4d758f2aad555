"""The ``robustness`` fixture: audits from a test, robustness gates, and what the test report carries.

Imported only when a test uses the fixture (it imports pandas here and torch on the first audit).

Example::

    @pytest.mark.robustness(attack="pgd", eps=0.1, min_accuracy=0.6)
    def test_classifier_is_robust(robustness, my_model, my_data):
        robustness.audit(my_model, my_data).assert_robust()

A gate has two halves: the threshold on the selected rows, and the audit's sanity checks. A ``fail``
verdict means the measured robust accuracy is probably too high (probabilities instead of logits, masked
gradients, ...), so a test must not pass on it; ``allow_failed_checks=True`` accepts such figures once
the user has read the verdicts. ``warn`` verdicts never fail a gate; the summary and reports show them.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from robustaudit.core.errors import UserError
from robustaudit.evaluate.result import ResultMatrix
from robustaudit.plugin.settings import (
    SessionOptions,
    Settings,
    check_bound,
    resolve,
    validate,
)
from robustaudit.plugin.tables import (
    MATRIX_HEADERS,
    check_line,
    matrix_rows,
    pct,
    row_key,
    text_table,
    useful_records,
)

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


@dataclass
class ItemRecord:
    """What one test did with the fixture, kept on ``item.stash`` until its report is made."""

    marker: dict[str, Any]
    audits: list[RobustResult] = field(default_factory=list)
    gates: list[dict[str, Any]] = field(default_factory=list)

    def payload(self) -> dict[str, Any]:
        """Plain JSON-able data for the test report (it crosses the xdist channel and lands in the
        ``--robust-save`` file): every audit's records and robust ids, and every gate evaluated."""
        return {"audits": [audit_doc(r) for r in self.audits], "gates": list(self.gates)}


def audit_doc(result: ResultMatrix) -> dict[str, Any]:
    """``ResultMatrix.to_dict()`` without example images (not JSON), plus the plugin's settings."""
    doc = result.to_dict()
    doc.pop("examples", None)
    doc["settings"] = dict(getattr(result, "settings", {}) or {})
    return doc


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
    failed_checks = [
        {k: c.get(k) for k in ("id", "model", "message", "doc")}
        for c in result.checks
        if c.get("status") == "fail" and (model is None or c.get("model") in (None, model))
    ]
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
    head = (f"sanity checks failed{level}: the robust accuracy{whose} is probably too high; "
            f"{len(failed)} failing check(s)")
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


_N_CAP_WARNING = re.compile(r".* has only \d+ samples; using all of them")


class Robustness:
    """The ``robustness`` fixture: run audits with the test's defaults and gate them.

    Defaults come from ``@pytest.mark.robustness(...)``, then from ``--robust-profile`` /
    ``--robust-device`` / ``--robust-gate`` / ``--robust-checks`` (and their ini keys). ``settings``
    shows them.
    """

    def __init__(self, options: SessionOptions, record: ItemRecord,
                 add_property: Callable[[str, object], None]) -> None:
        self._options = options
        self._record = record
        self._add_property = add_property

    @property
    def settings(self) -> Settings:
        """The defaults an ``audit()`` without keyword arguments runs with."""
        return resolve(self._options, self._record.marker, {})

    @property
    def results(self) -> list[RobustResult]:
        """Every audit this test ran, in order."""
        return list(self._record.audits)

    def __repr__(self) -> str:
        return f"<robustness fixture: {describe_settings(self.settings.plain())}, {len(self._record.audits)} audit(s)>"

    def audit(
        self,
        model: Any,
        data: Any,
        *,
        attacks: str | Any | Sequence[str | Any] | None = None,
        eps: float | Sequence[float] | None = None,
        norm: str | None = None,
        n: int | str | None = None,
        steps: int | None = None,
        restarts: int | None = None,
        seed: int | None = None,
        device: str | None = None,
        batch_size: int | None = None,
        min_accuracy: float | None = None,
        bound: str | None = None,
        checks: str | None = None,
        progress: Any = None,
    ) -> RobustResult:
        """Audit ``model`` on ``data`` (anything :func:`robustaudit.audit` accepts: an ``(x, y)`` pair of
        tensors with ``x`` ``(N, C, H, W)`` in [0, 1], a ``Dataset`` or a ``DataLoader``).

        Keyword arguments left ``None`` come from the marker, then the profile and options.
        ``n="all"`` audits every sample whatever the profile. ``steps`` / ``restarts`` apply to the
        attacks given by bare name; ``min_accuracy`` / ``bound`` become the defaults of the returned
        object's ``assert_robust()``. ``checks`` (``off``, ``basic``, ``full``) is the level of the
        sanity checks that follow the matrix (default: the profile's, ``--robust-checks``); their verdicts
        land in ``result.checks``, and a ``fail`` fails ``assert_robust()``.

        Returns:
            a :class:`RobustResult` (a ResultMatrix with ``assert_robust``).
        """
        from robustaudit.evaluate.api import audit as run_audit  # torch: only now

        call = validate(
            {"attacks": attacks, "eps": eps, "norm": norm, "n": n, "steps": steps, "restarts": restarts,
             "seed": seed, "device": device, "batch_size": batch_size, "min_accuracy": min_accuracy,
             "bound": bound, "checks": checks},
            where="robustness.audit",
        )
        s = resolve(self._options, self._record.marker, call)
        kwargs: dict[str, Any] = {"norm": s.norm, "n": s.n, "batch_size": s.batch_size, "device": s.device,
                                  "seed": s.seed, "progress": progress, "attacks": attack_list(s),
                                  "checks": s.checks}
        if s.eps is not None:
            kwargs["eps"] = list(s.eps)
        n_explicit = "n" in call or "n" in self._record.marker
        with warnings.catch_warnings():
            if not n_explicit:  # the profile's n is a cap: a smaller data set is not worth a warning
                warnings.filterwarnings("ignore", message=_N_CAP_WARNING.pattern)
            raw = run_audit(model, data, **kwargs)
        result = RobustResult.wrap(raw, settings=s.plain(), on_gate=self._on_gate)
        self._record.audits.append(result)
        self._properties(result, len(self._record.audits) - 1)
        return result

    def assert_robust(
        self,
        min_accuracy: float | None = None,
        *,
        bound: str | None = None,
        model: str | None = None,
        attack: str | None = None,
        eps: float | None = None,
        allow_failed_checks: bool | None = None,
    ) -> None:
        """:meth:`RobustResult.assert_robust` over every audit of this test (thresholds and sanity
        checks); one failure lists all."""
        __tracebackhide__ = True
        if not self._record.audits:
            raise UserError("robustness.assert_robust: no audit yet; call robustness.audit(model, data) first")
        messages = []
        for i, result in enumerate(self._record.audits):
            gate = evaluate_gate(result, min_accuracy, bound=bound, model=model, attack=attack, eps=eps,
                                 allow_failed_checks=allow_failed_checks)
            self._on_gate(result, gate)
            if not gate["passed"]:
                head = f"audit {i + 1} of {len(self._record.audits)}: " if len(self._record.audits) > 1 else ""
                messages.append(head + gate_message(result, gate))
        if messages:
            raise RobustnessFailure("\n\n".join(messages))

    # ------------------------------------------------------------------ internals
    def _on_gate(self, result: RobustResult, gate: dict[str, Any]) -> None:
        index = next((i for i, r in enumerate(self._record.audits) if r is result), None)
        self._record.gates.append({"audit": index, **gate})

    def _properties(self, result: RobustResult, index: int) -> None:
        """JUnit XML properties (``record_property``): one per shown row, plus clean accuracy per model."""
        prefix = f"{index + 1}:" if index else ""
        records = result.records.to_dict(orient="records")
        for model in dict.fromkeys(r["model"] for r in records):
            first = next(r for r in records if r["model"] == model)
            self._add_property(f"clean_accuracy[{prefix}{model}]", round(float(first["clean_accuracy"]), 6))
        for r in useful_records(records):
            value = r["robust_accuracy"]
            self._add_property(f"robust_accuracy[{prefix}{r['model']}/{r['attack']}/{float(r['eps']):g}]",
                               None if value is None else round(float(value), 6))


def attack_list(s: Settings) -> list[Any]:
    """The attacks to run: bare names get the profile's (or the marker's) steps and restarts where the
    attack has those settings; inline specs and Attack objects are used as given.

    A bare name keeps its bare label in the matrix ("pgd", not "pgd:steps=10"), so baselines made
    under one profile compare with runs under another.
    """
    from robustaudit.attacks.registry import (
        attack_class,
        get,
        parse_spec,
        valid_settings,
    )
    from robustaudit.evaluate.plan import DEFAULT_ATTACKS

    items = list(s.attacks) if s.attacks is not None else list(DEFAULT_ATTACKS)
    out: list[Any] = []
    used = {"steps": False, "restarts": False}
    for item in items:
        if not isinstance(item, str):
            out.append(item)
            continue
        name, inline = parse_spec(item)
        if inline:
            out.append(item)
            continue
        valid = valid_settings(attack_class(name))
        extra = {k: getattr(s, k) for k in ("steps", "restarts") if k in valid}
        used.update({k: True for k in extra})
        if not extra:
            out.append(name)
            continue
        attack = get(name, **extra)
        out.append(attack if attack.name == name else f"{name}:" + ",".join(f"{k}={v}" for k, v in extra.items()))
    for key, explicit in (("steps", s.steps_explicit), ("restarts", s.restarts_explicit)):
        if explicit and not used[key]:
            raise UserError(f"robustness: {key}= applies to attacks given by bare name that have a '{key}' "
                            f"setting; none of {', '.join(map(str, items))} has one")
    return out
