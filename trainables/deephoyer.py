"""Compatibility re-exports: the trial pipeline lives in ``trainables.pipeline``.

``run_trial`` now returns a ``trainables.contract.TrialResult`` (not a dict); import from
``trainables`` or ``trainables.pipeline`` in new code.
"""

from __future__ import annotations

from trainables.pipeline import (
    AUGMENTERS,
    PHASES,
    ReportFn,
    TrialState,
    augmenter,
    load_checkpoint,
    pretrain_cache_key,
    resolve_device,
    run_trial,
)

__all__ = [
    "AUGMENTERS",
    "PHASES",
    "ReportFn",
    "TrialState",
    "augmenter",
    "load_checkpoint",
    "pretrain_cache_key",
    "resolve_device",
    "run_trial",
]
