"""DeepHoyer training in plain PyTorch: regularizers, models, data, pruning and the trial pipeline.

This package knows torch and nothing of Ray, Optuna or MLflow, so a trial runs anywhere torch
does.  Importing the package imports no torch: ``trainables.contract`` and ``trainables.config``
are torch-free (``analysis`` reads results with them), and the torch-using names below load on
first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ConfigError": "trainables.config",
    "TrialConfig": "trainables.config",
    "TrialResult": "trainables.contract",
    "Status": "trainables.contract",
    "TrialState": "trainables.pipeline",
    "run_trial": "trainables.pipeline",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trainables' has no attribute {name!r}")
