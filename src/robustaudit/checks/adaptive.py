"""The adaptive evaluation that answers each failing check (``--checks full``), in one table.

A failing verdict says the audit's figure is probably too high; the answer is an attack that does not
share the failure (Athalye, Carlini & Wagner 2018; Tramer et al. 2020). :data:`ADAPTIVE` maps each check
id to the families of attacks that answer it; :func:`plan_adaptive` turns the failing verdicts of one model
into attack columns, which the caller runs over the whole audit and merges into the worst case, and
records, per verdict, the columns that answered it (``Verdict.answered_by``).

Families:

* ``margin`` — the audit's iterative attack with the C&W margin loss (Carlini & Wagner 2017), else
  APGD with the DLR loss (Croce & Hein 2020). Under sign (Linf) or normalised (L2) steps the margin's
  scale does not matter, so logits scaled by 100 or 1e4 cannot saturate it as they saturate cross-entropy.
* ``bpda`` — the audit's gradient attacks through BPDA (Athalye et al. 2018): the forward pass runs the
  model's ``preprocess`` module, the backward pass the identity. Needs the module; a randomized model
  gets EOT around it.
* ``square`` — Square (Andriushchenko et al. 2020), a score-based attack that needs no gradient.
* ``eot`` — the audit's gradient attacks (and the margin attack when it also runs) against the mean of
  :data:`EOT_K` forward passes (Expectation over Transformation, Athalye et al. 2018).
* ``blackbox`` — the black-box result joins the worst case: the audit's own black-box columns already do;
  else ``square`` over the whole audit.
* ``more-steps`` / ``more-restarts`` — the audit's iterative attack with the doubled budget the check
  showed to break more samples (Carlini et al. 2019, convergence).

An attack already in the audit that belongs to a family (a margin- or DLR-loss attack, Square, a
black-box attack) answers without running again. A family that cannot run on a model (BPDA without a
``preprocess`` module, a gradient attack on a model without gradients) adds nothing; a verdict none of
whose families ran stays unanswered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace


from robustaudit.attacks.base import Attack, AttackKind
from robustaudit.checks.probes import Probe
from robustaudit.checks.variants import iterative_attack, variant
from robustaudit.checks.verdict import Verdict
from robustaudit.evaluate.result import WORST_CASE, ResultMatrix
from robustaudit.evaluate.runner import AttackEntry

#: check id -> the attack families that answer its failure (see the module docstring and docs/checks.md)
ADAPTIVE: dict[str, tuple[str, ...]] = {
    "logits-output": ("margin",),
    "deterministic": ("eot",),
    "eps-zero": ("eot",),
    "no-autograd-in-forward": ("bpda", "square"),
    "input-gradients": ("margin", "bpda", "square"),
    "finite-differences": ("bpda", "square"),
    "robust-le-clean": ("margin",),
    "monotone-eps": ("margin", "square"),
    "large-eps": ("margin", "bpda", "square"),
    "unbounded": ("margin", "bpda", "square"),
    "iterative-vs-single-step": ("margin",),
    "more-steps": ("more-steps",),
    "more-restarts": ("more-restarts",),
    "loss-gap": ("margin",),
    "random-noise": ("margin", "bpda", "square"),
    "blackbox-vs-whitebox": ("blackbox",),
}
#: Forward passes averaged per gradient by the ``eot`` family.
EOT_K = 10
#: Draws of the final prediction per sample under the ``eot`` family: robust only if correct in all of them;
#: the spread over draws goes to ``provenance["verdict_spread"]`` (Athalye et al. 2018 judge a randomized
#: defense over repeated draws as well).
EOT_JUDGE = 5
#: Queries per sample of the ``square`` family (Square's own default, as the check's is 1000).
SQUARE_QUERIES = 5000

_GRADIENT = (AttackKind.FIXED_EPS, AttackKind.MINIMAL_NORM)
_BLACK_BOX = (AttackKind.SCORE_BASED, AttackKind.DECISION_BASED, AttackKind.TRANSFER)


@dataclass
class Plan:
    """One model's adaptive evaluation: the columns to run and, per failing verdict, its answer.

    ``answers[i]``: the column names that answer ``verdicts[i]`` (existing columns of the audit included).
    """

    run: list[AttackEntry] = field(default_factory=list)
    answers: dict[int, list[str]] = field(default_factory=dict)


def plan_adaptive(verdicts: Sequence[Verdict], probe: Probe, attacks: Sequence[AttackEntry],
                  columns: Sequence[str]) -> Plan:
    """The adaptive columns for one model's failing ``verdicts``.

    Args:
        verdicts: the model's verdicts (only ``fail`` ones with an :data:`ADAPTIVE` entry are answered).
        probe: the model's probe flags (randomized, differentiable, dead gradients, and whether BPDA's
            identity can stand in for its ``preprocess``).
        attacks: the audit's attack columns; ``columns``: the columns the matrix holds for this model
            (the runner's ``square`` in place of skipped gradient attacks included).
    """
    families = _Families(probe, attacks, columns)
    plan = Plan()
    for i, v in enumerate(verdicts):
        if v.status != "fail" or v.id not in ADAPTIVE:
            continue
        names: list[str] = []
        for family in ADAPTIVE[v.id]:
            for entry in families.get(family, v):
                if entry.name not in columns and entry.name not in (e.name for e in plan.run):
                    plan.run.append(entry)
                names.append(entry.name)
        if names:
            plan.answers[i] = list(dict.fromkeys(names))
    return plan


def answered(verdicts: Sequence[Verdict], plan: Plan, ran: set[str]) -> list[Verdict]:
    """``verdicts`` with ``answered_by`` set from ``plan`` to the columns that are in the matrix (``ran``)."""
    out = list(verdicts)
    for i, names in plan.answers.items():
        done = tuple(n for n in names if n in ran)
        if done:
            out[i] = replace(out[i], answered_by=done)
    return out


class _Families:
    """Builds each family's columns for one model, once."""

    def __init__(self, probe: Probe, attacks: Sequence[AttackEntry], columns: Sequence[str]) -> None:
        self.probe, self.attacks, self.columns = probe, list(attacks), list(columns)
        # BPDA with the identity backward: only where the preprocess keeps the shape (Square answers otherwise)
        self.preprocess = probe.bpda_identity
        self.gradient = [a for a in attacks if a.attack.kind in _GRADIENT]
        self._cache: dict[str, list[AttackEntry]] = {}

    @property
    def gradients_useless(self) -> bool:
        return self.probe.dead_gradients or not self.probe.differentiable

    def get(self, family: str, verdict: Verdict) -> list[AttackEntry]:
        if family not in self._cache:
            self._cache[family] = getattr(self, "_" + family.replace("-", "_"))()
        return self._cache[family]

    # ------------------------------------------------------------------ wrapping
    def _adapt(self, entries: list[AttackEntry]) -> list[AttackEntry]:
        """Gradient columns as they can run on this model: through BPDA when its gradients are useless
        (nothing without a shape-keeping ``preprocess`` module), averaged by EOT when it is randomized."""
        from robustaudit.attacks.wrappers import BPDA, EOT

        if self.gradients_useless:
            if not self.preprocess:
                return []
            entries = [AttackEntry(f"bpda({e.name})", BPDA(e.attack)) for e in entries]
        if self.probe.randomized:
            entries = [AttackEntry(f"eot({e.name})", EOT(e.attack, k=EOT_K, judge=EOT_JUDGE)) for e in entries]
        return entries

    def _existing(self, test: object) -> list[AttackEntry]:
        return [a for a in self.attacks if a.name in self.columns and test(a.attack)]  # type: ignore[operator]

    # ------------------------------------------------------------------ families
    def _margin(self) -> list[AttackEntry]:
        have = self._existing(lambda a: a.kind in _GRADIENT and a.settings().get("loss") in ("margin", "dlr"))
        if have and not self.gradients_useless and not self.probe.randomized:
            return have
        iterative = iterative_attack(self.gradient)
        margin = None if iterative is None else variant(iterative.attack, loss="margin")
        if iterative is not None and margin is not None:
            entry = AttackEntry(_with(iterative.name, "loss=margin"), margin)
        else:
            from robustaudit.attacks.apgd import APGD

            entry = AttackEntry("apgd:loss=dlr", APGD(loss="dlr"))
        return self._adapt([entry])

    def _bpda(self) -> list[AttackEntry]:
        if not self.gradients_useless or not self.preprocess:
            return []
        return self._adapt(self.gradient)

    def _eot(self) -> list[AttackEntry]:
        if not self.probe.randomized:
            return []
        return self._adapt(self.gradient)

    def _square(self) -> list[AttackEntry]:
        have = [a for a in self.attacks if a.attack.kind is AttackKind.SCORE_BASED and a.name in self.columns]
        # a "square" column already there (the runner's stand-in for gradient attacks the model cannot
        # take) answers as it is: plan_adaptive does not run a column the matrix holds
        return have or [AttackEntry("square", _square())]

    def _blackbox(self) -> list[AttackEntry]:
        have = [a for a in self.attacks if a.attack.kind in _BLACK_BOX and a.name in self.columns]
        return have or self._square()

    def _more(self, setting: str) -> list[AttackEntry]:
        iterative = iterative_attack(self.gradient)
        if iterative is None:
            return []
        value = iterative.attack.settings().get(setting)
        if not isinstance(value, int):
            return []
        stronger = variant(iterative.attack, **{setting: 2 * value})
        if stronger is None:
            return []
        return self._adapt([AttackEntry(_with(iterative.name, f"{setting}={2 * value}"), stronger)])

    def _more_steps(self) -> list[AttackEntry]:
        return self._more("steps")

    def _more_restarts(self) -> list[AttackEntry]:
        return self._more("restarts")


def _with(name: str, setting: str) -> str:
    """A column name with one more ``key=value``: ``pgd:steps=5`` -> ``pgd:steps=5,loss=margin``."""
    key = setting.split("=")[0]
    if ":" not in name:
        return f"{name}:{setting}"
    head, tail = name.split(":", 1)
    kept = [p for p in tail.split(",") if p.split("=")[0] != key]
    return f"{head}:{','.join([*kept, setting])}"


def _square() -> Attack:
    from robustaudit.attacks.square import Square

    return Square(queries=SQUARE_QUERIES)


def passes_per_sample(attack: Attack) -> int:
    """A rough upper bound on the model passes (forward + backward) ``attack`` spends on one sample that
    stays robust at one eps: steps × restarts × 2 for gradient attacks, queries × restarts for Square,
    times ``k`` under EOT."""
    s = attack.settings()
    inner = s.get("attack")
    if isinstance(inner, Attack):
        return int(s.get("k", 1)) * passes_per_sample(inner)
    restarts = int(s.get("restarts", 1) or 1)
    if "queries" in s:
        return int(s["queries"]) * restarts
    return 2 * int(s.get("steps", 1) or 1) * restarts


def cheapest_first(entries: Sequence[AttackEntry]) -> list[AttackEntry]:
    """``entries`` by :func:`passes_per_sample`, cheapest first (stable): under the cascade across columns the
    costly ones (Square, EOT) then attack only what the cheap ones left standing."""
    return sorted(entries, key=lambda e: passes_per_sample(e.attack))


def estimate_passes(extra: Sequence[AttackEntry], result: ResultMatrix, model: str, grid: Sequence[float]) -> int:
    """Model passes the adaptive columns ``extra`` may spend on ``model``: every sample robust at the first
    eps of the audit's worst case, attacked at every eps (an upper bound: larger eps attack survivors)."""
    key = (model, WORST_CASE, float(grid[0])) if grid else None
    survivors = len(result.robust_ids.get(key, ())) if key else 0
    return sum(passes_per_sample(a.attack) for a in extra) * survivors * max(1, len(grid))
