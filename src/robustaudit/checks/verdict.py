"""A sanity verdict, and the tolerance that keeps honest noise from raising one.

Every check yields :class:`Verdict` objects: ``pass``, ``warn`` or ``fail``, one line, and a link to
the check's section of ``docs/checks.md`` (what the user should do). Comparisons between attacks are
paired and per sample: "how many samples did the attack that should be stronger miss, of those the
other one broke?". :func:`tolerance` turns the sample count into the number of such misses that a
randomized but honest attack still produces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

STATUSES: tuple[str, ...] = ("pass", "warn", "fail")
DOC = "docs/checks.md"

#: The share of samples on which two honest runs of randomized attacks may disagree by chance.
NOISE_RATE = 0.02
#: How unlikely honest noise must be before a check warns (one-sided binomial tail).
ALPHA = 0.01
#: Beyond this share of the compared samples a paired discrepancy is a failure, not a warning.
FAIL_SHARE = 0.10


@dataclass(frozen=True)
class Verdict:
    """One check's outcome for one model (``model=None``: about the whole audit).

    ``answered_by``: the attack columns of the adaptive evaluation that ``--checks full`` ran over the whole
    audit and merged into the worst case in answer to this (failing) verdict; empty when none was.
    """

    id: str
    model: str | None
    status: str
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)
    answered_by: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")

    def to_dict(self) -> dict[str, Any]:
        """The ``results.json`` form: ``id``, ``model``, ``status``, ``message``, ``doc``, ``evidence``, and
        ``answered_by`` (a list of attack column names) only when non-empty, so older files read the same."""
        out = {"id": self.id, "model": self.model, "status": self.status, "message": self.message,
               "doc": f"{DOC}#{self.id}", "evidence": dict(self.evidence)}
        if self.answered_by:
            out["answered_by"] = list(self.answered_by)
        return out


def tolerance(n: int, rate: float = NOISE_RATE, alpha: float = ALPHA) -> int:
    """The largest count of paired disagreements that honest noise explains among ``n`` samples.

    The smallest ``t`` with ``P(Binomial(n, rate) > t) <= alpha``: with n = 32 that is 3, with n = 359
    it is 14, so a check's threshold grows with the sample as chance disagreements do.
    """
    if n <= 0:
        return 0
    cdf, term = 0.0, (1 - rate) ** n
    for t in range(n + 1):
        cdf += term
        if 1 - cdf <= alpha:
            return t
        term *= (n - t) / (t + 1) * rate / (1 - rate)
    return n


def paired_status(misses: int, n: int) -> str:
    """``pass`` within :func:`tolerance`, ``fail`` beyond it and above :data:`FAIL_SHARE` of ``n``."""
    if misses <= tolerance(n):
        return "pass"
    return "fail" if misses > FAIL_SHARE * n else "warn"


def share(k: int, n: int) -> str:
    """``"3/32 (9.4%)"``."""
    return f"{k}/{n} ({100 * k / n:.1f}%)" if n else f"{k}/0"
