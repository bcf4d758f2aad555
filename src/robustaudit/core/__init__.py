"""The shared vocabulary of robustaudit: threat models, tasks, norms, keyed randomness, errors.

Nothing in ``core`` imports any other part of the package; every other subpackage may import it.
This ``__init__`` stays free of torch so that light front doors (the pytest plugin) can use it.
"""

from robustaudit.core.errors import UserError
from robustaudit.core.threat import NORMS, ThreatModel

__all__ = ["NORMS", "ThreatModel", "UserError"]
