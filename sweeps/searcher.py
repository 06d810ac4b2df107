"""Optuna as Ray Tune's searcher: ``sweeps.study.StudyProposer`` behind Ray Tune's ``Searcher`` interface.

The rules (members, budget, no replays, branching, cohorts, stopped early) and the Ray-free
pieces (search space, sampler, seeds, telling) live in ``sweeps.study`` so that the Ray-free
driver ``sweeps.asktell`` uses the very same code; this module only maps Tune's calls onto
them: ``suggest`` → ``hand_out``, ``on_trial_result`` → ``on_report``, ``on_trial_complete``
→ ``release``.  The names below are re-exported for the driver, the trainable and the tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher

from sweeps.study import (
    BRANCH_INDEX_KEY,
    BRANCH_PLAN_KEY,
    BRANCH_SLOTS_KEY,
    EXTRA_ATTRS,
    FINISHED_STATES,
    GROUP_SLOTS_KEY,
    MAX_DUPLICATE_ASKS,
    MEMBERS_KEY,
    PROXY_ATTR_PREFIX,
    RESULT_ATTRS,
    RESUME_KEY,
    Branching,
    Member,
    StudyProposer,
    branch_slots,
    build_sampler,
    config_key,
    derive_seed,
    distributions,
    is_own,
    members_of,
    own_trials,
    result_from_attrs,
    search_settings,
    space_size,
    tell,
)

__all__ = [
    "BRANCH_INDEX_KEY",
    "BRANCH_PLAN_KEY",
    "BRANCH_SLOTS_KEY",
    "EXTRA_ATTRS",
    "FINISHED_STATES",
    "GROUP_SLOTS_KEY",
    "MAX_DUPLICATE_ASKS",
    "MEMBERS_KEY",
    "PROXY_ATTR_PREFIX",
    "RESULT_ATTRS",
    "RESUME_KEY",
    "Branching",
    "Member",
    "OptunaSearcher",
    "branch_slots",
    "build_sampler",
    "config_key",
    "derive_seed",
    "distributions",
    "is_own",
    "members_of",
    "own_trials",
    "result_from_attrs",
    "search_settings",
    "space_size",
    "tell",
]


class OptunaSearcher(StudyProposer, Searcher):
    """A Ray Tune searcher over one Optuna study (the rules: ``sweeps.study``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """``StudyProposer``'s arguments (the study, its storage, space, objectives, budget, …)."""
        Searcher.__init__(self, metric=None, mode=None)  # multi-objective: Tune's single metric is unused
        StudyProposer.__init__(self, *args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its searcher with the experiment; the ``on_member`` hook (the driver's recorder) stays out."""
        return {**self.__dict__, "_on_member": None}

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # the space and objectives come from the sweep spec, not from Tune

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        config = self.hand_out(trial_id)
        return Searcher.FINISHED if config is None else config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.on_report(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """A Ray trial ended: members it did not report are failed (on error) or left to resume."""
        self.release(trial_id, result, error)

    def save(self, checkpoint_path: str) -> None:
        """Tune's experiment snapshot: the state lives in the Optuna storage, so only its name is written."""
        Path(checkpoint_path).write_text(json.dumps({"study_name": self.study.study_name}))

    def restore(self, checkpoint_path: str) -> None:
        """Nothing to restore: a new searcher reads everything from the Optuna storage."""
