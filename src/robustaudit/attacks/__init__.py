"""Attacks: the Attack contract, the registry and the attacks robustaudit ships."""

from robustaudit.attacks.base import Attack, AttackKind
from robustaudit.attacks.registry import from_spec, get, names, register

__all__ = ["Attack", "AttackKind", "from_spec", "get", "names", "register"]
