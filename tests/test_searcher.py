"""The searcher's rules on a real Optuna sqlite study, driven through Ray Tune's Searcher interface (no Ray runtime)."""

from __future__ import annotations

import json
import math

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from ray.tune.search import Searcher

from sweeps.searcher import (
    MEMBERS_KEY,
    OptunaSearcher,
    build_sampler,
    config_key,
    derive_seed,
    members_of,
    own_trials,
    space_size,
)
from sweeps.spec import DEFAULT_STARTUP_TRIALS, SamplerSpec
from sweeps.study import StartupDesign, startup_design, value_at
from trainables.contract import (
    DUPLICATE_ATTR,
    STARTUP_POINT_ATTR,
    TRIAL_NUMBER_KEY,
    WARM_START_ATTR,
    Constraint,
    Status,
)

SMALL_SPACE = {"reg": CategoricalDistribution(["hs", "l1"]), "threshold": CategoricalDistribution([0.01, 0.05])}
FLOAT_SPACE = {"strength": FloatDistribution(1e-5, 1e-2, log=True), "reg": CategoricalDistribution(["hs", "l1"])}


def make_study(tmp_path, sampler: str = "random", seed: int | None = 0, name: str = "s", **sampler_settings):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    optuna.create_study(storage=storage, study_name=name, directions=["maximize", "minimize"], load_if_exists=True)
    trials = len(optuna.load_study(study_name=name, storage=storage).trials)
    spec = SamplerSpec(type=sampler, seed=seed, **sampler_settings)
    study = optuna.load_study(study_name=name, storage=storage, sampler=build_sampler(spec, derive_seed(seed, trials)))
    return study, storage


def searcher_for(study, storage, space=FLOAT_SPACE, budget: int = 6, **kwargs) -> OptunaSearcher:
    constraints = [Constraint("val_accuracy", min=0.5)]
    return OptunaSearcher(study, storage, space, ["val_accuracy", "nonzero_frac"], constraints, budget=budget, **kwargs)


def final(number: int, accuracy: float = 0.9, nonzero: float = 0.1, status: str = "ok") -> dict:
    return {
        TRIAL_NUMBER_KEY: number,
        "final": True,
        "status": status,
        "val_accuracy": accuracy,
        "nonzero_frac": nonzero,
    }


def run_all(searcher: OptunaSearcher, limit: int = 100) -> list[dict]:
    """Suggest and finish Ray trials until the searcher says FINISHED; the members handed out, in order."""
    handed = []
    for index in range(limit):
        config = searcher.suggest(f"ray-{index}")
        if config == Searcher.FINISHED:
            return handed
        for member in members_of(config):
            handed.append({"number": member.number, **member.params})
            searcher.on_trial_result(f"ray-{index}", final(member.number, 0.5 + 0.01 * member.number))
        searcher.on_trial_complete(f"ray-{index}")
    raise AssertionError("the searcher never finished")


def test_space_size_and_config_key():
    assert space_size(SMALL_SPACE) == 4 and space_size(FLOAT_SPACE) is None
    assert config_key({"a": 1, "b": "x"}) == config_key({"b": "x", "a": 1})
    assert config_key({"a": 1}) != config_key({"a": 1.0}) != config_key({"a": True})


def test_derive_seed_keeps_a_fresh_study_reproducible_and_moves_on_afterwards():
    assert derive_seed(7, 0) == 7 and derive_seed(None, 5) is None
    assert derive_seed(7, 3) == derive_seed(7, 3) != derive_seed(7, 4) != 7


def test_a_categorical_space_is_trained_once_per_configuration_then_exhausted(tmp_path):
    study, storage = make_study(tmp_path, "nsga2", population_size=2)
    searcher = searcher_for(study, storage, SMALL_SPACE, budget=10)
    handed = run_all(searcher)
    configs = [config_key({k: v for k, v in h.items() if k != "number"}) for h in handed]
    assert len(configs) == 4 and len(set(configs)) == 4
    assert searcher.exhausted and "4 configurations" in searcher.exhausted_reason
    own = own_trials(study)
    assert len(own) == 4 and all(t.state == TrialState.COMPLETE for t in own)
    duplicates = [t for t in study.trials if DUPLICATE_ATTR in t.user_attrs]
    assert len(duplicates) == searcher.duplicates
    # A duplicate of a complete trial carries the original's values, so the sampler learns the point is known.
    for trial in duplicates:
        original = study.trials[trial.user_attrs[DUPLICATE_ATTR]]
        assert trial.params == original.params
        assert trial.values == original.values or trial.state == TrialState.FAIL


def test_many_duplicates_in_a_row_end_a_continuous_search(tmp_path):
    study, storage = make_study(tmp_path)
    space = {"strength": FloatDistribution(1e-3, 1e-3)}  # continuous (no finite size), yet one point only
    searcher = searcher_for(study, storage, space, budget=5, max_duplicate_asks=3)
    handed = run_all(searcher)
    assert len(handed) == 1 and searcher.exhausted and "3 proposals in a row" in searcher.exhausted_reason
    assert searcher.duplicates == 3 and len(own_trials(study)) == 1


def test_budget_counts_results_and_members_share_a_ray_trial(tmp_path):
    study, storage = make_study(tmp_path)
    searcher = searcher_for(study, storage, budget=7, members_per_trial=3)
    config = searcher.suggest("a")
    assert len(config[MEMBERS_KEY]) == 3
    numbers = [m.number for m in members_of(config)]
    searcher.on_trial_result("a", final(numbers[0]))
    searcher.on_trial_result("a", final(numbers[1], status="diverged", accuracy=float("nan")))
    searcher.on_trial_complete("a", error=True)  # the third member never reported: failed with the trial
    states = {t.number: t.state for t in study.trials}
    assert [states[n] for n in numbers] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL]
    assert study.trials[numbers[1]].user_attrs["status"] == Status.DIVERGED
    assert study.trials[numbers[0]].constraints == {"val_accuracy_min": pytest.approx(-0.4)}
    rest = run_all(searcher)
    assert len(rest) == 4  # 7 results in all: 3 + 3 + 1
    assert len(own_trials(study, [TrialState.COMPLETE, TrialState.FAIL])) == 7


def test_an_interrupted_trial_is_continued_under_its_own_number_before_anything_new(tmp_path):
    study, storage = make_study(tmp_path)
    first = searcher_for(study, storage, budget=4, resume_checkpoints={})
    config = first.suggest("a")
    interrupted = members_of(config)[0]
    first.on_trial_complete("a")  # stopped without a final report (Ctrl-C): stays RUNNING
    assert study.trials[interrupted.number].state == TrialState.RUNNING

    study, storage = make_study(tmp_path)  # a new driver: the sampler seed moves on
    second = searcher_for(study, storage, budget=4, resume_checkpoints={interrupted.number: "/ckpt/state.pt"})
    adopted = members_of(second.suggest("b"))[0]
    assert (adopted.number, adopted.params, adopted.resume_checkpoint) == (
        interrupted.number,
        interrupted.params,
        "/ckpt/state.pt",
    )
    second.on_trial_result("b", final(adopted.number))
    assert study.trials[adopted.number].state == TrialState.COMPLETE
    handed = run_all(second)
    assert len(handed) == 3 and len(own_trials(study)) == 4
    assert (
        len({config_key({k: v for k, v in h.items() if k != "number"}) for h in handed} | {config_key(adopted.params)})
        == 4
    )


def test_a_trial_enqueued_but_never_asked_before_a_kill_is_continued_and_told(tmp_path):
    """A kill between ``enqueue_trial`` and ``ask`` (a design point, a chosen branch) leaves a WAITING
    trial without parameters; the next driver asks it, hands it out first with its enqueued
    parameters and can tell its result (Optuna refuses to tell a WAITING trial)."""
    study, storage = make_study(tmp_path)
    enqueued = {"strength": 1e-3, "reg": "l1"}
    study.enqueue_trial(enqueued)
    assert study.trials[0].state == TrialState.WAITING

    study, storage = make_study(tmp_path)
    searcher = searcher_for(study, storage, budget=3, resume_checkpoints={})
    continued = members_of(searcher.suggest("a"))[0]
    assert (continued.number, continued.params) == (0, enqueued)
    searcher.on_trial_result("a", final(continued.number))
    assert study.trials[0].state == TrialState.COMPLETE
    assert len(run_all(searcher)) == 2 and len(own_trials(study, [TrialState.COMPLETE])) == 3


def test_the_same_seed_on_a_fresh_study_proposes_the_same_sequence(tmp_path):
    sequences = []
    for run in ("one", "two"):
        (tmp_path / run).mkdir()
        study, storage = make_study(tmp_path / run, "tpe", n_startup_trials=3)
        sequences.append([{k: v for k, v in h.items()} for h in run_all(searcher_for(study, storage, budget=6))])
    assert sequences[0] == sequences[1]


def test_warm_start_copies_are_never_proposed_again(tmp_path):
    study, storage = make_study(tmp_path)
    for reg in ("hs", "l1"):
        for threshold in (0.01,):
            study.add_trial(
                optuna.trial.create_trial(
                    params={"reg": reg, "threshold": threshold},
                    distributions=SMALL_SPACE,
                    values=[0.9, 0.1],
                    user_attrs={WARM_START_ATTR: "earlier"},
                )
            )
    study, storage = make_study(tmp_path)
    handed = run_all(searcher_for(study, storage, SMALL_SPACE, budget=4))
    assert sorted((h["reg"], h["threshold"]) for h in handed) == [("hs", 0.05), ("l1", 0.05)]


def test_a_pruned_member_keeps_its_proxies(tmp_path):
    study, storage = make_study(tmp_path)
    searcher = searcher_for(study, storage)
    number = members_of(searcher.suggest("a"))[0].number
    searcher.tell_pruned(number, {"val_accuracy": 0.42, "nonzero_frac": 0.3}, "stopped at rung 1")
    trial = study.trials[number]
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs["proxy_val_accuracy"] == 0.42 and trial.user_attrs["status"] == "pruned"
    searcher.on_trial_complete("a")  # nothing left to tell
    assert study.trials[number].state == TrialState.PRUNED


BRANCH_SPACE = {
    "strength": FloatDistribution(1e-5, 1e-2, log=True),
    "threshold": FloatDistribution(1e-3, 0.1, log=True),
}


def split_threshold(params):
    return {k: v for k, v in params.items() if k != "threshold"}, {k: v for k, v in params.items() if k == "threshold"}


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_optuna_branching_asks_every_branch_with_the_shared_part_fixed(tmp_path, sampler):
    from sweeps.searcher import Branching

    study, storage = make_study(tmp_path, sampler)
    branching = Branching(per_run=4, mode="optuna", split=split_threshold)
    searcher = searcher_for(study, storage, BRANCH_SPACE, budget=10, branching=branching)
    handed_per_run = []
    for index in range(5):
        config = searcher.suggest(f"r{index}")
        if config == Searcher.FINISHED:
            break
        members = members_of(config)
        handed_per_run.append(members)
        for member in members:
            searcher.on_trial_result(f"r{index}", final(member.number))
        searcher.on_trial_complete(f"r{index}")
    assert [len(run) for run in handed_per_run] == [4, 4, 2]  # 10 results: the budget counts branches
    for run in handed_per_run:
        assert len({m.params["strength"] for m in run}) == 1  # one regularized run
        assert len({m.params["threshold"] for m in run}) == len(run)  # distinct branches
    assert len(own_trials(study, [TrialState.COMPLETE])) == 10


def test_proxy_branching_records_the_branches_a_run_chose(tmp_path):
    from sweeps.searcher import BRANCH_INDEX_KEY, BRANCH_PLAN_KEY, BRANCH_SLOTS_KEY, Branching

    study, storage = make_study(tmp_path)
    branching = Branching(per_run=3, mode="proxy", split=split_threshold)
    searcher = searcher_for(study, storage, BRANCH_SPACE, budget=4, branching=branching)
    config = searcher.suggest("a")
    (first,) = members_of(config)
    assert config[BRANCH_SLOTS_KEY] == 2 and searcher.remaining == 1
    plan = [{"threshold": 0.002}, {"threshold": first.params["threshold"]}]  # the second repeats the first
    searcher.on_trial_result("a", {"epoch": 3, TRIAL_NUMBER_KEY: first.number, BRANCH_PLAN_KEY: json.dumps(plan)})
    members = searcher.members("a")
    assert len(members) == 2 and members[1].params == {**first.params, "threshold": 0.002}
    assert searcher.remaining == 2  # the repeated branch's slot went back to the budget
    for index in range(2):
        searcher.on_trial_result("a", {**final(-1), TRIAL_NUMBER_KEY: None, BRANCH_INDEX_KEY: index})
    searcher.on_trial_complete("a")
    assert [t.state for t in own_trials(study)] == [TrialState.COMPLETE] * 2
    assert study.trials[members[1].number].params["threshold"] == 0.002


def test_proxy_runs_with_equal_shared_settings_pass_over_each_others_picks(tmp_path):
    """λ = 0 with one seed: every run trains the same model, so the n-th skips the picks of the n before it."""
    from sweeps.searcher import Branching, branch_slots
    from sweeps.study import RUN_REPEAT_ATTR

    threshold_only = {"threshold": BRANCH_SPACE["threshold"]}
    study, storage = make_study(tmp_path)
    branching = Branching(per_run=3, mode="proxy", split=split_threshold)
    searcher = searcher_for(study, storage, threshold_only, budget=12, branching=branching)
    configs = [searcher.suggest(name) for name in ("a", "b")]
    assert [branch_slots(c) for c in configs] == [{0: (2, 0)}, {1: (2, 3)}]
    assert [study.trials[n].user_attrs[RUN_REPEAT_ATTR] for n in (0, 1)] == [0, 1]

    study, storage = make_study(tmp_path)  # a new driver counts the runs the study holds
    again = searcher_for(study, storage, threshold_only, budget=12, branching=branching)
    adopted = again.suggest("c")  # the interrupted runs, continued as one (equal shared settings): no slots
    assert [m.number for m in members_of(adopted)] == [0, 1] and branch_slots(adopted) == {0: (0, 0)}
    assert list(branch_slots(again.suggest("d")).values()) == [(2, 6)]

    # a branching cohort of such runs: each run of the stack its own skip
    study, storage = make_study(tmp_path, name="cohort")
    cohort = searcher_for(study, storage, threshold_only, budget=9, branching=branching, members_per_trial=2)
    assert sorted(branch_slots(cohort.suggest("f")).values()) == [(2, 0), (2, 3)]
    # runs whose shared settings differ train different models: nothing to pass over
    study, storage = make_study(tmp_path, name="strengths")
    varied = searcher_for(study, storage, BRANCH_SPACE, budget=9, branching=branching)
    assert [next(iter(branch_slots(varied.suggest(n)).values())) for n in ("g", "h")] == [(2, 0), (2, 0)]


def test_an_interrupted_cohort_is_handed_out_together_and_alone(tmp_path):
    """Members of one interrupted cohort (one checkpoint) continue as one Ray trial, without new members;
    interrupted members without a checkpoint start a cohort topped up with new asks."""
    study, storage = make_study(tmp_path)
    first = searcher_for(study, storage, budget=14, members_per_trial=4)
    a, b, c = ([m.number for m in members_of(first.suggest(name))] for name in ("a", "b", "c"))
    first.on_trial_result("a", final(a[0]))  # told before the kill
    first.on_trial_result("c", final(c[0]))
    checkpoints = {n: "/ray/a/state.pt" for n in a} | {n: "/ray/b/state.pt" for n in b}  # c never checkpointed

    study, storage = make_study(tmp_path)  # a new driver
    second = searcher_for(study, storage, budget=14, members_per_trial=4, resume_checkpoints=checkpoints)
    d, e, f, g = (members_of(second.suggest(name)) for name in ("d", "e", "f", "g"))
    assert [m.number for m in d] == a[1:] and {m.resume_checkpoint for m in d} == {"/ray/a/state.pt"}
    assert [m.number for m in e] == b and {m.resume_checkpoint for m in e} == {"/ray/b/state.pt"}
    assert [m.number for m in f][:3] == c[1:] and len(f) == 4 and f[3].number not in a + b + c
    assert len(g) == 1 and g[0].resume_checkpoint is None  # 14 = 2 told + 3 + 4 + 4 + 1
    assert second.suggest("h") == Searcher.FINISHED


def log_quantile(value: float, distribution: FloatDistribution = BRANCH_SPACE["strength"]) -> float:
    """Where ``value`` lies in a log-scale distribution's range, from 0 (low) to 1 (high)."""
    return math.log(value / distribution.low) / math.log(distribution.high / distribution.low)


def test_a_space_filling_start_up_spreads_the_first_asks_then_hands_over_to_the_sampler(tmp_path):
    study, storage = make_study(tmp_path, "tpe", n_startup_trials=4)
    searcher = searcher_for(study, storage, BRANCH_SPACE, budget=7, startup=StartupDesign(trials=4, seed=0))
    handed = run_all(searcher)
    design = [h for h in handed if STARTUP_POINT_ATTR in study.trials[h["number"]].user_attrs]
    assert [study.trials[h["number"]].user_attrs[STARTUP_POINT_ATTR] for h in design] == [0, 1, 2, 3]
    assert len(handed) == 7 and len(design) == 4  # the last 3, after 4 finished trials, are TPE's own
    for name in BRANCH_SPACE:  # one Sobol point per quarter of each parameter's (log) range
        quarters = {int(4 * log_quantile(h[name], BRANCH_SPACE[name])) for h in design}
        assert quarters == {0, 1, 2, 3}


def test_without_a_design_seed_zero_draws_cluster_which_is_why_the_design_exists(tmp_path):
    study, storage = make_study(tmp_path, "tpe", n_startup_trials=4)
    first_two = members_of(searcher_for(study, storage, BRANCH_SPACE, members_per_trial=2).suggest("a"))
    quantiles = sorted(log_quantile(m.params["strength"]) for m in first_two)
    assert quantiles[1] - quantiles[0] < 0.1  # optuna's uniform start-up: 0.55 and 0.60 of the range

    (tmp_path / "design").mkdir()
    study, storage = make_study(tmp_path / "design", "tpe", n_startup_trials=4)
    searcher = searcher_for(study, storage, BRANCH_SPACE, members_per_trial=2, startup=StartupDesign(4, 0))
    quantiles = sorted(log_quantile(m.params["strength"]) for m in members_of(searcher.suggest("a")))
    assert quantiles[0] < 0.5 <= quantiles[1]  # Sobol's first two points: one in each half


def test_a_resumed_sweep_continues_the_design_where_it_stopped(tmp_path):
    design = StartupDesign(trials=6, seed=3)
    study, storage = make_study(tmp_path, "tpe", seed=3, n_startup_trials=6)
    first = members_of(searcher_for(study, storage, BRANCH_SPACE, startup=design).suggest("a"))[0]
    study, storage = make_study(tmp_path, "tpe", seed=3, n_startup_trials=6)  # a new driver: derived seed
    searcher = searcher_for(study, storage, BRANCH_SPACE, startup=design)
    assert members_of(searcher.suggest("a"))[0].number == first.number  # the interrupted trial first
    after = members_of(searcher.suggest("b"))[0]
    assert study.trials[after.number].user_attrs[STARTUP_POINT_ATTR] == 1
    assert after.params == pytest.approx(design.point(BRANCH_SPACE, 1))
    assert first.params == pytest.approx(design.point(BRANCH_SPACE, 0))


def test_design_values_respect_each_distribution():
    assert value_at(FloatDistribution(1e-4, 1e-2, log=True), 0.5) == pytest.approx(1e-3)
    assert value_at(FloatDistribution(0.0, 1.0, step=0.25), 0.4) == 0.5
    assert value_at(IntDistribution(2, 10, step=2), 0.99) == 10
    assert value_at(IntDistribution(1, 1000, log=True), 0.0) == 1
    assert value_at(CategoricalDistribution(["a", "b", "c"]), 0.999) == "c"
    assert value_at(CategoricalDistribution(["a", "b", "c"]), 0.0) == "a"


def test_the_spec_turns_the_design_on_for_model_based_samplers_only():
    assert startup_design(SamplerSpec()) == StartupDesign(DEFAULT_STARTUP_TRIALS, 0)
    assert startup_design(SamplerSpec(type="gp", n_startup_trials=5, seed=2)) == StartupDesign(5, 2)
    assert startup_design(SamplerSpec(startup="random")) is None
    unseeded = startup_design(SamplerSpec(seed=None))
    assert unseeded is not None and isinstance(unseeded.seed, int)  # one scramble for the whole sweep
    assert startup_design(SamplerSpec(type="random")) is None and startup_design(SamplerSpec(type="nsga2")) is None
    with pytest.raises(ValueError, match="startup is a tpe/gp setting"):
        SamplerSpec(type="random", startup="sobol")
