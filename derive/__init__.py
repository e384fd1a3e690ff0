"""mudelta.derive: the engine. Everything it knows about an architecture comes from the graph."""

from .api import Derivation, ParamRule, derive
from .engine import UnsatisfiableError
from .optimizers import OPTIMIZERS, get_optimizer

__all__ = ["Derivation", "ParamRule", "derive", "UnsatisfiableError", "OPTIMIZERS", "get_optimizer"]
