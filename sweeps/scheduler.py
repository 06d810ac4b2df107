"""MO-ASHA: asynchronous successive halving ranked by Pareto rank, for multi-objective sweeps.

Ray Tune's schedulers are single-metric: stopping on accuracy alone kills exactly the sparse
trials a pruning sweep looks for.  ``MOASHA`` (after Schmucker et al., 2021, and Syne Tune's
``MOASHA``; written here, not imported) places rungs in the *regularized* phase — at epochs
``grace · η^k`` up to ``max_epochs`` — where each trial reports what it would be if pruned now
(``proxy_val_accuracy``, ``proxy_nonzero_frac``, ``proxy_flops_frac``).  At a rung, a trial
continues when it is on the (feasible) proxy front of the trials recorded there so far — whole
front, Pareto-safe — or among their best ``⌈n / η⌉``, ranked by non-dominated sorting of the proxies
in the spec's objective directions, crowding distance within a layer, then trial number
(deterministic).  A proxy whose accuracy is below the spec's
floor by more than ``margin`` ranks after every feasible one.

The scheduler owns its rung state (as Syne Tune's does) and keeps it in the sweep folder
(``scheduler.json``), so a resumed sweep ranks against every earlier decision; a trial recorded
again at a rung (it restarted before it) replaces its own entry and is never counted twice.  A
stopped trial is not a failure: ``on_stop`` tells the searcher (PRUNED, proxies kept) and the
recorder (status ``pruned``, the rung in its run) before Tune ends it.

The rung state and the decision are ``Rungs`` (``sweeps.rungs``, Ray-free: the Ray-free driver
``sweeps.asktell`` asks it in-process); ``MOASHA`` is the Tune scheduler around it.  A
Tune scheduler can only stop a whole Ray trial, and with ``budget.cohort_size`` > 1 a Ray trial
trains a cohort of several trials, so such sweeps give Tune no scheduler: the driver starts
``Rungs`` as a Ray actor on its own node (``start_rung_channel``) and every cohort member consults
it at its rungs through ``RungChannel`` (``trainables.cohort.run_cohort(stop=...)``).  A member
ranked out leaves its cohort as ``pruned`` (its rung and proxies in its result) while the others
go on; its final report reaches the searcher and recorder like any result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from sweeps.rungs import RungEntry, Rungs, proxies_in, rung_of
from trainables.contract import TRIAL_NUMBER_KEY

StopFn = Callable[[str, int, dict[str, float]], None]


class MOASHA(FIFOScheduler):
    """Asynchronous successive halving over prune-now proxies, ranked by Pareto rank (see the module docstring).

    The Tune scheduler of sweeps whose Ray trials train one trial each: it stops the whole Ray
    trial.  The rung state and the decision are ``Rungs``'.
    """

    def __init__(self, rungs: Rungs, on_stop: StopFn | None = None) -> None:
        super().__init__()
        self.state = rungs
        self.on_stop = on_stop
        self.stopped: dict[str, tuple[int, dict[str, float]]] = {}  # Ray trial id → (rung, proxies)

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its scheduler with the experiment; the ``on_stop`` hook (the driver's records) stays out."""
        return {**self.__dict__, "on_stop": None}

    @property
    def rungs(self) -> list[int]:
        return self.state.rungs

    @property
    def recorded(self) -> dict[int, dict[int, RungEntry]]:
        return self.state.recorded

    def decide(self, rung: int, key: int, proxies: Mapping[str, float]) -> bool:
        """Record ``key``'s proxies at ``rung``; True to continue, False to stop (``Rungs.decide``)."""
        return self.state.decide(rung, key, proxies)

    # --- Ray Tune's TrialScheduler interface ---------------------------------------------------

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return True  # ranks the spec's objectives, not Tune's single metric

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        stop = self.state.decide_report(result)
        if stop is None:
            return TrialScheduler.CONTINUE
        self.stopped[trial.trial_id] = stop
        if self.on_stop is not None:
            self.on_stop(trial.trial_id, *stop)
        return TrialScheduler.STOP

    def debug_string(self) -> str:
        return f"MOASHA: {self.state.describe()}"


# --- the decision channel of cohorts ---------------------------------------------------------


def start_rung_channel(rungs_kwargs: Mapping[str, Any]) -> RungChannel:
    """Start ``Rungs(**rungs_kwargs)`` as a Ray actor on this (the driver's) node; the channel to it.

    Pinned to the driver's node (its ``state_path`` is in the driver's sweep folder) and asking
    for no CPU (it must never wait behind the trials that consult it).  Its calls run one at a
    time, so ``scheduler.json`` is written by one process in decision order.  Needs Ray running;
    the actor lives as long as the channel's handle (``ray.kill(channel.keeper)`` ends it).
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    keeper = (
        ray.remote(Rungs)
        .options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node, soft=False))
        .remote(**rungs_kwargs)
    )
    rungs, proxies = ray.get(keeper.plan.remote())
    return RungChannel(keeper, tuple(rungs), tuple(proxies))


@dataclass(frozen=True)
class RungChannel:
    """How a cohort member asks the driver's ``Rungs`` actor whether it continues (``run_cohort(stop=...)``).

    A Ray scheduler can only stop a whole Ray trial, and a cohort is one Ray trial of several
    trials; so each member consults the actor itself, at rung epochs only (regularized phase,
    ``phase_epoch`` in ``rungs``), and one that is ranked out leaves the stack as ``pruned`` while
    its cohort-mates go on.  Picklable: it travels to the workers with the trainable's parameters.
    """

    keeper: Any  # the Ray actor handle (start_rung_channel)
    rungs: tuple[int, ...]
    proxies: tuple[str, ...]

    def stops(self, number: int, metrics: Mapping[str, Any]) -> bool:
        """True when member ``number`` (its Optuna trial number) is ranked out at this report's rung."""
        rung = rung_of({**metrics, TRIAL_NUMBER_KEY: number}, self.rungs)
        if rung is None:
            return False
        import ray

        return not ray.get(self.keeper.decide.remote(rung, number, proxies_in(metrics, self.proxies)))
