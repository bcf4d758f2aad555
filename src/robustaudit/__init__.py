"""robustaudit: adversarial robustness testing for PyTorch models.

``robustaudit.audit(model, data, attacks=..., eps=...)`` returns a :class:`ResultMatrix`. Heavy
modules (torch) are imported on first use, so ``import robustaudit`` stays cheap (the pytest
plugin relies on it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from robustaudit.core.version import __version__
__all__ = ["ResultMatrix", "ThreatModel", "__version__", "audit"]

if TYPE_CHECKING:
    from robustaudit.core.threat import ThreatModel
    from robustaudit.evaluate.api import audit
    from robustaudit.evaluate.result import ResultMatrix


def __getattr__(name: str) -> Any:
    if name == "audit":
        from robustaudit.evaluate.api import audit

        return audit
    if name == "ResultMatrix":
        from robustaudit.evaluate.result import ResultMatrix

        return ResultMatrix
    if name == "ThreatModel":
        from robustaudit.core.threat import ThreatModel

        return ThreatModel
    raise AttributeError(f"module 'robustaudit' has no attribute {name!r}")
