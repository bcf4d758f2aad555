"""The ``robustness`` fixture: audits from a test, robustness gates, and what the test report carries.

Imported only when a test uses the fixture (it imports pandas here and torch on the first audit). Its
gates (``assert_robust``) live in :mod:`.gates`; their names are re-exported here.

Example::

    @pytest.mark.robustness(attack="pgd", eps=0.1, min_accuracy=0.6)
    def test_classifier_is_robust(robustness, my_model, my_data):
        robustness.audit(my_model, my_data).assert_robust()
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from robustaudit.core.errors import UserError
from robustaudit.evaluate.result import ResultMatrix
from robustaudit.plugin.gates import (
    BOUND_TEXT,
    CHECKS_ADVICE,
    RobustnessFailure,
    RobustResult,
    checks_message,
    describe_settings,
    evaluate_gate,
    gate_checks_failed,
    gate_message,
)
from robustaudit.plugin.settings import SessionOptions, Settings, resolve, validate
from robustaudit.plugin.tables import useful_records

if TYPE_CHECKING:
    from robustaudit.evaluate.entries import Progress  # torch: annotations only

__all__ = ["BOUND_TEXT", "CHECKS_ADVICE", "ItemRecord", "RobustResult", "Robustness", "RobustnessFailure",
           "attack_list", "audit_doc", "checks_message", "describe_settings", "evaluate_gate",
           "gate_checks_failed", "gate_message"]


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
        class_map: str | Mapping[str, int] | None = None,
        progress: bool | Progress | None = None,
    ) -> RobustResult:
        """Audit ``model`` on ``data`` (anything :func:`robustaudit.audit` accepts: an ``(x, y)`` pair of
        tensors with ``x`` ``(N, C, H, W)`` in [0, 1], a ``Dataset`` or a ``DataLoader``).

        Keyword arguments left ``None`` come from the marker, then the profile and options.
        ``n="all"`` audits every sample whatever the profile. ``steps`` / ``restarts`` apply to the
        attacks given by bare name; ``min_accuracy`` / ``bound`` become the defaults of the returned
        object's ``assert_robust()``. ``checks`` (``off``, ``basic``, ``full``) is the level of the
        sanity checks that follow the matrix (default: the profile's, ``--robust-checks``); their verdicts
        land in ``result.checks``, and a ``fail`` fails ``assert_robust()``. ``class_map``
        (``{"cat": 281, "dog": 207}`` or ``"cat=281,dog=207"``) audits a model with more outputs than the
        data's classes on those outputs (see :func:`robustaudit.audit`). ``progress`` is that function's:
        ``True`` shows the progress on stderr (pytest captures it), ``False`` / ``None`` nothing.

        Returns:
            a :class:`RobustResult` (a ResultMatrix with ``assert_robust``).
        """
        from robustaudit.evaluate.api import audit as run_audit  # torch: only now

        call = validate(
            {"attacks": attacks, "eps": eps, "norm": norm, "n": n, "steps": steps, "restarts": restarts,
             "seed": seed, "device": device, "batch_size": batch_size, "min_accuracy": min_accuracy,
             "bound": bound, "checks": checks, "class_map": class_map},
            where="robustness.audit",
        )
        s = resolve(self._options, self._record.marker, call)
        kwargs = {**_audit_kwargs(s), "progress": progress}
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


def _audit_kwargs(s: Settings) -> dict[str, Any]:
    """The keyword arguments of :func:`robustaudit.audit` that the resolved settings give."""
    kwargs: dict[str, Any] = {"norm": s.norm, "n": s.n, "batch_size": s.batch_size, "device": s.device,
                              "seed": s.seed, "attacks": attack_list(s), "checks": s.checks}
    if s.eps is not None:
        kwargs["eps"] = list(s.eps)
    if s.class_map is not None:
        kwargs["class_map"] = dict(s.class_map)
    return kwargs


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
        if inline and s.attacks is not None:
            out.append(item)
            continue
        if inline:  # a default attack with inline settings (pgd:loss=margin): the profile's budget joins them
            valid = valid_settings(attack_class(name))
            extra = {k: getattr(s, k) for k in ("steps", "restarts") if k in valid and k not in inline}
            used.update({k: True for k in extra})
            defaults = get(name, **inline).settings()
            extra = {k: v for k, v in extra.items() if defaults.get(k) != v}  # the ci profile keeps the bare label
            out.append(item + "".join(f",{k}={v}" for k, v in extra.items()))
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
