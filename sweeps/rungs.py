"""MO-ASHA's rung state and decision, without Ray: ``Rungs`` and the ranking it uses.

At rungs in the *regularized* phase — regularized epochs ``grace · η^k`` up to ``max_epochs`` —
each trial reports what it would be if pruned now (``proxy_val_accuracy``, ``proxy_nonzero_frac``,
``proxy_flops_frac``).  A trial continues when it is on the (feasible) proxy front of the trials
recorded at that rung so far — whole front, Pareto-safe — or among their best ``⌈n / η⌉``, ranked
by non-dominated sorting of the proxies in the spec's objective directions, crowding distance
within a layer, then trial number (deterministic).  A proxy whose accuracy is below the spec's
floor by more than ``margin`` ranks after every feasible one.  The state is kept in the sweep
folder (``scheduler.json``), so a resumed sweep ranks against every earlier decision.

``sweeps.scheduler`` wraps it for Ray Tune (``MOASHA``, and a Ray actor that cohort members
consult); the Ray-free driver (``sweeps.asktell``) asks it in-process.  Torch- and Ray-free.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from analysis.pareto import nondominated_mask
from trainables.contract import PROXY_METRICS, SCHEDULER_FILE, TRIAL_NUMBER_KEY, Constraint

PROXY_OF: dict[str, str] = {final: proxy for proxy, final in PROXY_METRICS.items()}
"""The prune-now proxy a regularized epoch reports for each objective MO-ASHA can rank."""


def rung_epochs(grace: int, reduction_factor: int, max_epochs: int) -> list[int]:
    """``grace, grace·η, grace·η², …`` up to ``max_epochs`` (regularized epochs)."""
    rungs, epoch = [], grace
    while epoch <= max_epochs:
        rungs.append(epoch)
        epoch *= reduction_factor
    return rungs


def crowding(values: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of points in one layer (minimisation form).

    The ends of an objective that varies get +inf; an objective on which all points agree adds
    nothing (identical points are then told apart by trial number alone).
    """
    n, k = values.shape
    distance = np.zeros(n)
    for j in range(k):
        order = np.argsort(values[:, j], kind="stable")
        span = values[order[-1], j] - values[order[0], j]
        if span > 0:
            distance[order[0]] = distance[order[-1]] = np.inf
            distance[order[1:-1]] += (values[order[2:], j] - values[order[:-2], j]) / span
    return distance


def rank_order(values: np.ndarray, keys: Sequence[int], infeasible: Sequence[bool]) -> list[int]:
    """Indices from best to worst: feasible first, then Pareto layer, larger crowding, smaller key.

    ``values`` are in minimisation form (maximised objectives negated); non-finite rows rank last.
    """
    return sorted(range(len(keys)), key=_rank_keys(values, keys, infeasible).__getitem__)


def _rank_keys(values: np.ndarray, keys: Sequence[int], infeasible: Sequence[bool]) -> list[tuple]:
    """Each point's sort key (infeasible, layer, −crowding, trial number): smaller is better."""
    n = len(keys)
    finite = np.isfinite(values).all(axis=1)
    layer = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    spread = np.zeros(n)
    remaining = np.flatnonzero(finite)
    depth = 0
    while remaining.size:
        mask = nondominated_mask(values[remaining])
        current = remaining[mask]
        layer[current] = depth
        spread[current] = crowding(values[current])
        remaining = remaining[~mask]
        depth += 1
    return [(bool(infeasible[i]), int(layer[i]), -spread[i], keys[i]) for i in range(n)]


@dataclass
class RungEntry:
    values: list[float]  # the proxies, minimisation form
    infeasible: bool


def rung_of(result: Mapping[str, Any], rungs: Sequence[int]) -> int | None:
    """The rung a report is at (a regularized epoch that is a rung), else None: the one rule of when to decide."""
    epoch = result.get("phase_epoch")
    if result.get("phase") != "train" or epoch not in rungs or result.get(TRIAL_NUMBER_KEY) is None:
        return None
    return int(epoch)


def proxies_in(result: Mapping[str, Any], names: Sequence[str]) -> dict[str, float]:
    """The prune-now proxies ``names`` a report holds (missing ones are left out and rank last)."""
    return {name: float(result[name]) for name in names if isinstance(result.get(name), (int, float))}


class Rungs:
    """MO-ASHA's rung state and its pure decision (see the module docstring), kept in ``state_path``.

    Used by the Tune scheduler ``MOASHA`` (one trial per Ray trial), as a Ray actor by the
    ``RungChannel`` that cohort members consult (``budget.cohort_size`` > 1), and in-process by
    the Ray-free driver (``sweeps.asktell``).
    """

    def __init__(
        self,
        objectives: Sequence[str],
        modes: Sequence[str],
        *,
        grace_epochs: int,
        reduction_factor: int,
        max_epochs: int,
        constraints: Sequence[Constraint] = (),
        margin: float = 1.0,
        state_path: Path | None = None,
    ) -> None:
        unknown = [o for o in objectives if o not in PROXY_OF]
        if unknown:
            raise ValueError(f"moasha ranks {', '.join(PROXY_OF)}; no prune-now proxy for {', '.join(unknown)}")
        self.proxies = [PROXY_OF[o] for o in objectives]
        self.signs = np.array([-1.0 if mode == "max" else 1.0 for mode in modes])
        self.rungs = rung_epochs(grace_epochs, reduction_factor, max_epochs)
        self.reduction_factor = reduction_factor
        self.floors = [(PROXY_OF[c.metric], c) for c in constraints if c.metric in PROXY_OF and c.min is not None]
        self.margin = margin
        self.state_path = state_path
        self.recorded: dict[int, dict[int, RungEntry]] = {rung: {} for rung in self.rungs}
        self._load()

    # --- the decision, pure -----------------------------------------------------------------

    def infeasible(self, proxies: Mapping[str, float]) -> bool:
        return any(not (proxies.get(name, math.nan) >= c.min - self.margin) for name, c in self.floors)

    def decide(self, rung: int, key: int, proxies: Mapping[str, float]) -> bool:
        """Record ``key``'s proxies at ``rung``; True to continue, False to stop."""
        values = [float(proxies.get(name, math.nan)) * sign for name, sign in zip(self.proxies, self.signs)]
        entries = self.recorded.setdefault(rung, {})
        entries[key] = RungEntry(values, self.infeasible(proxies))
        keys = list(entries)
        ranks = _rank_keys(
            np.array([entries[k].values for k in keys], dtype=float), keys, [entries[k].infeasible for k in keys]
        )
        mine = ranks[keys.index(key)]
        position = sorted(ranks).index(mine)
        self._save()
        on_front = not mine[0] and mine[1] == 0  # a feasible point of the proxy front: Pareto-safe, always kept
        return on_front or position < math.ceil(len(keys) / self.reduction_factor)

    def decide_report(self, result: Mapping[str, Any]) -> tuple[int, dict[str, float]] | None:
        """Decide on a report: None to continue (not at a rung, or ranked in), else (rung, proxies) to stop."""
        rung = rung_of(result, self.rungs)
        if rung is None:
            return None
        proxies = proxies_in(result, self.proxies)
        return None if self.decide(rung, int(result[TRIAL_NUMBER_KEY]), proxies) else (rung, proxies)

    def stops(self, number: int, metrics: Mapping[str, Any]) -> bool:
        """True when trial ``number`` is ranked out at this report's rung (what ``RungChannel.stops`` asks)."""
        return self.decide_report({**metrics, TRIAL_NUMBER_KEY: number}) is not None

    def describe(self) -> str:
        return ", ".join(f"rung {r}: {len(self.recorded.get(r, {}))}" for r in self.rungs)

    def plan(self) -> tuple[list[int], list[str]]:
        """(rung epochs, proxy names): what a ``RungChannel`` needs to know when to ask."""
        return list(self.rungs), list(self.proxies)

    # --- the rung state, kept in the sweep folder ------------------------------------------

    def _save(self) -> None:
        if self.state_path is None:
            return
        body = {
            str(r): {str(k): [e.values, e.infeasible] for k, e in entries.items()}
            for r, entries in self.recorded.items()
        }
        temporary = self.state_path.with_name(f".{self.state_path.name}.tmp")
        temporary.write_text(json.dumps(body))
        temporary.replace(self.state_path)

    def _load(self) -> None:
        if self.state_path is None or not self.state_path.exists():
            return
        body = json.loads(self.state_path.read_text())
        for rung, entries in body.items():
            self.recorded.setdefault(int(rung), {}).update(
                {int(k): RungEntry([float(v) for v in values], bool(flag)) for k, (values, flag) in entries.items()}
            )


def rungs_settings(spec: Any, sweep_dir: Path) -> dict[str, Any]:
    """The arguments of a sweep's ``Rungs`` (a ``sweeps.spec.SweepSpec`` with ``scheduler: moasha``),
    the state kept in ``<sweep>/scheduler.json``."""
    settings = spec.scheduler
    return {
        "objectives": spec.metric_names,
        "modes": spec.modes,
        "grace_epochs": settings.grace_epochs,
        "reduction_factor": settings.reduction_factor,
        "max_epochs": settings.max_epochs or spec.trial_config(spec.example_params()).epochs,
        "constraints": spec.constraint_rules,
        "margin": settings.margin,
        "state_path": sweep_dir / SCHEDULER_FILE,
    }
