"""trustworthy-dl: Byzantine-robust and privacy-preserving distributed training.

Public API::

    from trustworthy_dl import DistributedTrainer, TrustManager, load_config, run_experiment
    from trustworthy_dl.models import get_model
    from trustworthy_dl.aggregation import get_aggregator
    from trustworthy_dl.attacks import get_attack, AdversarialAttacker
    from trustworthy_dl.trust import TrustManager

Names are imported lazily so that ``import trustworthy_dl.models`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "trustworthy_dl.config",
    "load_config": "trustworthy_dl.config",
    "run_experiment": "trustworthy_dl.engine.run",
    "ConfigError": "trustworthy_dl.errors",
    "DataError": "trustworthy_dl.errors",
    "TdlError": "trustworthy_dl.errors",
    "DistributedTrainer": "trustworthy_dl.trainer",
    "TrainResult": "trustworthy_dl.trainer",
    "TrustManager": "trustworthy_dl.trust",
}
__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'trustworthy_dl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
