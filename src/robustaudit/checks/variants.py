"""The attack the checks vary, and its variants: one definition for the paired checks
(:mod:`robustaudit.checks.attacks`) and the adaptive answers (:mod:`robustaudit.checks.adaptive`)."""

from __future__ import annotations

from collections.abc import Iterable

from robustaudit.attacks.base import Attack, AttackKind
from robustaudit.core.errors import UserError
from robustaudit.evaluate.runner import AttackEntry

__all__ = ["iterative_attack", "variant"]


def iterative_attack(entries: Iterable[AttackEntry]) -> AttackEntry | None:
    """The first fixed-eps attack with a ``steps`` setting that is not single-step FGSM: the one the checks
    vary (more steps, another loss)."""
    for a in entries:
        if (a.attack.kind is AttackKind.FIXED_EPS and "steps" in a.attack.settings()
                and type(a.attack).__name__ != "FGSM"):
            return a
    return None


def variant(attack: Attack, **changes: object) -> Attack | None:
    """``attack``'s class with some settings changed; ``None`` when the class cannot take them."""
    settings = attack.settings()
    if any(k not in settings for k in changes):
        return None
    try:
        return type(attack)(**{**settings, **changes})
    except TypeError:  # wrappers take the wrapped attack positionally
        return None
    except UserError:  # a doubled budget beyond its declared cap (attacks/settings.py)
        return None
