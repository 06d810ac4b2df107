"""A cohort of K members is K trials: the equivalence test is its license.

Tolerances: a cohort computes with batched matmuls (one ``bmm`` for K members) where a trial
uses one ``mm``; both are float32 but round differently (different blocking and summation
order), and Hoyer-Square runs as plain autograd ops rather than the trial's fused backward.
So parameters after the first regularized epoch agree to float32 rounding accumulated over a
few steps (measured: ≤ 3e-6 absolute, weights of order 0.1, at batch 128 on digits), and the
final metrics agree where rounding cannot change a discrete outcome: accuracies and nonzero
fractions were identical in every measured run (a weight would have to sit within ~1e-6 of a
threshold to flip), losses to ~1e-7.  The test allows accuracies to differ by at most one
sample and losses by 1e-5 relative, so it fails on any real difference (a wrong learning rate,
regularizer, mask or batch order moves them by orders of magnitude more).
"""

from __future__ import annotations

import math

import pytest
import torch

from trainables.branching import prune_now_proxy, refine_under, select_thresholds, threshold_grid
from trainables.cohort import (
    COHORT_SIZE_KEY,
    StackedOptimizer,
    member_memory,
    plan_cohort,
    run_cohort,
    run_cohort_branches,
)
from trainables.config import ConfigError, TrialConfig, check_cohort
from trainables.contract import STOPPED_AT_KEY, Status
from trainables.data import load_dataset
from trainables.models import build_model
from trainables.pipeline import dense, load_checkpoint, load_model, regularize, run_trial, start_run
from trainables.regularizers import model_regularization, stacked_regularization

BASE = dict(dataset="digits", epochs=2, finetune_epochs=1, batch_size=128, device="cpu")
MEMBERS = [
    dict(BASE, reg="hs", strength=1e-3, threshold=0.02, seed=0),
    dict(BASE, reg="group_hs", strength=5e-4, threshold=0.05, lr=2e-3, seed=1),
    dict(BASE, reg="l1", strength=1e-4, threshold=0.5, weight_decay=1e-4, seed=0, threshold_mode="std"),
    dict(BASE, reg="hoyer", strength=1e-3, threshold=0.03, seed=2, finetune_lr=5e-4),
]
SAMPLE = 1 / 360  # one validation / test sample of digits
FINAL = ("val_accuracy", "test_accuracy", "nonzero_frac", "flops_frac")


@pytest.fixture(autouse=True)
def deterministic():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(previous)


def close_results(a, b, *, loss_rtol: float = 1e-5, samples: int = 1) -> None:
    assert a.status == b.status
    for key in FINAL:
        assert abs(a.metric(key) - b.metric(key)) <= samples * SAMPLE + 1e-12, (key, a.metric(key), b.metric(key))
    assert a.loss == pytest.approx(b.loss, rel=loss_rtol)
    assert len(a.history) == len(b.history)
    for mine, theirs in zip(a.history, b.history):
        assert mine["phase"] == theirs["phase"] and mine["epoch"] == theirs["epoch"]
        assert mine["val_accuracy"] == pytest.approx(theirs["val_accuracy"], abs=samples * SAMPLE + 1e-12)
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=loss_rtol)
        for key in ("nonzero_frac", "flops_frac", "proxy_val_accuracy", "proxy_nonzero_frac"):
            assert mine.get(key) == pytest.approx(theirs.get(key), abs=SAMPLE + 1e-12), key
    assert [layer["nonzero"] for layer in a.layers] == [layer["nonzero"] for layer in b.layers]


def saved_at_first_epoch(path):
    """A report callback that saves the state after the first regularized epoch."""

    def report(*args):
        metrics, state = args[-2], args[-1]
        if metrics["phase"] == "train" and metrics["phase_epoch"] == 1 and not path.exists():
            state.save(path)

    return report


def test_a_cohort_matches_separate_trials(tmp_path):
    """Parameters after the first regularized epoch and every final metric, member by member."""
    results = run_cohort(MEMBERS, report=saved_at_first_epoch(tmp_path / "cohort.pt"))
    stacked = load_checkpoint(tmp_path / "cohort.pt")["params"]
    for index, config in enumerate(MEMBERS):
        single_path = tmp_path / f"single-{index}.pt"
        single = run_trial(config, report=saved_at_first_epoch(single_path))
        weights = load_checkpoint(single_path)["model"]
        for name, tensor in weights.items():
            torch.testing.assert_close(stacked[name][index], tensor, rtol=0, atol=1e-5)
        close_results(results[index], single)
        assert results[index].extra[COHORT_SIZE_KEY] == len(MEMBERS)
        assert results[index].ok and results[index].val_accuracy > 0.5


def test_stacked_optimizer_matches_torch_optim_member_by_member():
    torch.manual_seed(0)
    shape = (3, 5, 4)
    for kind, make in (
        ("adam", lambda p, lr, wd, _m: torch.optim.Adam([p], lr=lr, weight_decay=wd)),
        ("sgd", lambda p, lr, wd, m: torch.optim.SGD([p], lr=lr, weight_decay=wd, momentum=m)),
    ):
        lrs, wds, moms = [1e-3, 3e-2, 0.1], [0.0, 1e-2, 5e-4], [0.9, 0.0, 0.5]
        start = torch.randn(shape)
        stacked = start.clone().requires_grad_()
        optimizer = StackedOptimizer(kind, torch.tensor(wds), torch.tensor(moms))
        singles = [start[k].clone().requires_grad_() for k in range(3)]
        references = [make(p, lr, wd, m) for p, lr, wd, m in zip(singles, lrs, wds, moms)]
        for _ in range(5):
            grads = torch.randn(shape)
            stacked.grad = grads.clone()
            optimizer.step([stacked], torch.tensor(lrs))
            for k, (param, reference) in enumerate(zip(singles, references)):
                param.grad = grads[k].clone()
                reference.step()
        for k in range(3):
            torch.testing.assert_close(stacked.detach()[k], singles[k].detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("reg", ["l1", "hoyer", "hs", "group_lasso", "group_hs"])
def test_stacked_regularization_is_each_members_regularization(reg):
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(build_model("lenet5", (1, 28, 28), 10))
    names = [name for name, _ in models[0].named_parameters() if name.endswith("weight")]
    stacked = [torch.stack([dict(m.named_parameters())[n].detach() for m in models]) for n in names]
    values = stacked_regularization(stacked, reg)
    for k, model in enumerate(models):
        assert float(values[k]) == pytest.approx(float(model_regularization(model, reg).detach()), rel=1e-5)


def test_a_mixed_cohort_is_refused_naming_the_setting():
    configs = [TrialConfig(**MEMBERS[0]), TrialConfig(**dict(MEMBERS[1], batch_size=64))]
    with pytest.raises(ConfigError, match=r"share batch_size \(differs: 128, 64\)") as raised:
        check_cohort(configs)
    assert "\n" not in str(raised.value)
    with pytest.raises(ConfigError, match="batch_size"):
        run_cohort([c.to_dict() for c in configs])


def test_a_model_with_batch_norm_is_refused():
    with pytest.raises(ConfigError, match="buffers"):
        run_cohort([dict(BASE, model="resnet20", dataset="digits")] * 2)


def test_a_diverging_member_leaves_the_others_unchanged():
    healthy = run_cohort(MEMBERS[:2])
    with_diverging = run_cohort([MEMBERS[0], dict(MEMBERS[2], lr=1e30), MEMBERS[1]])
    diverged = with_diverging[1]
    assert diverged.status == Status.DIVERGED and diverged.diverged_epoch == 1
    assert math.isnan(diverged.val_accuracy) and "non-finite" in diverged.message
    close_results(with_diverging[0], healthy[0])
    close_results(with_diverging[2], healthy[1])


def test_an_interrupted_cohort_resumes_to_the_same_results(tmp_path):
    """A checkpoint taken mid-regularization, a 'crash', then resume: the same results as one go."""
    configs = [dict(m, epochs=3) for m in MEMBERS[:3]]
    whole = run_cohort(configs)
    checkpoint = tmp_path / "cohort.pt"

    class Crash(Exception):
        pass

    def report(member, metrics, state):
        if metrics["phase"] == "train" and metrics["phase_epoch"] == 2 and member == 2:
            state.save(checkpoint)
            raise Crash

    with pytest.raises(Crash):
        run_cohort(configs, report=report)
    moved = [dict(c, pretrain_cache_dir=str(tmp_path / "elsewhere")) for c in configs]  # where, not what
    resumed = run_cohort(moved, resume_from=checkpoint)
    for mine, theirs in zip(resumed, whole):
        close_results(mine, theirs, loss_rtol=1e-6)
        assert mine.resumed_from_epoch == 2
    with pytest.raises(ConfigError, match="other configurations"):
        run_cohort([dict(c, strength=0.5) for c in configs], resume_from=checkpoint)


def test_a_member_ranked_out_leaves_as_pruned_and_the_others_go_on(tmp_path):
    """Its result is final at once (``on_end`` before the others' next epoch), a checkpoint written at
    that epoch holds the decision, and the others' results are those of a cohort without it."""

    def stop(member, metrics):
        return member == 1 and metrics["phase_epoch"] == 1

    events = []
    checkpoint = tmp_path / "cohort.pt"

    def report(member, metrics, state):
        events.append(("epoch", member, metrics["epoch"]))
        if metrics["epoch"] == 1 and member == 2:
            state.save(checkpoint)

    alone = run_cohort([MEMBERS[0], MEMBERS[2]])
    results = run_cohort(MEMBERS[:3], report=report, stop=stop, on_end=lambda m, r: events.append(("end", m, r.status)))
    assert results[1].status == Status.PRUNED and results[1].extra[STOPPED_AT_KEY] == 1
    assert "proxy_val_accuracy" in results[1].extra and len(results[1].history) == 1
    assert events.index(("end", 1, Status.PRUNED)) < events.index(("epoch", 0, 2))
    close_results(results[0], alone[0])
    close_results(results[2], alone[1])
    asked = []
    resumed = run_cohort(MEMBERS[:3], resume_from=checkpoint, stop=lambda m, metrics: asked.append(m) or False)
    assert resumed[1].status == Status.PRUNED and 1 not in asked
    close_results(resumed[0], results[0], loss_rtol=1e-6)


def test_memory_plan_splits_a_cohort_that_would_not_fit_and_refuses_one_that_never_fits(tmp_path):
    config = TrialConfig(**MEMBERS[0])
    data = load_dataset("digits", None, val_fraction=config.val_fraction, split_seed=0, device=torch.device("cpu"))
    per_member = member_memory(config, data)
    assert 4 * 266_000 < per_member < 50 * 2**20  # weights, optimizer state and a batch of activations
    assert plan_cohort([config] * 4, data, free_bytes=10 * per_member) == [[0, 1, 2, 3]]
    assert plan_cohort([config] * 4, data, free_bytes=int(2.2 * per_member)) == [[0], [1], [2], [3]]
    assert plan_cohort([config] * 5, data, free_bytes=int(3 * per_member)) == [[0, 1], [2, 3], [4]]
    with pytest.raises(ConfigError, match="MiB"):
        plan_cohort([config], data, free_bytes=per_member // 2)
    paths = [tmp_path / f"m{k}.pt" for k in range(3)]
    split = run_cohort(MEMBERS[:3], model_paths=paths, free_bytes=3 * per_member)
    assert [r.extra["cohort_size"] for r in split] == [2, 2, 1]
    for mine, theirs in zip(split, run_cohort(MEMBERS[:3])):
        close_results(mine, theirs)
    model, payload = load_model(paths[2])
    assert payload["config"]["threshold"] == MEMBERS[2]["threshold"]
    for saved in torch.load(paths[0], weights_only=True)["masks"].values():  # a row's own mask, not the stack's
        assert saved.untyped_storage().nbytes() == saved.numel() * saved.element_size()
    zeros = sum(int((p == 0).sum()) for n, p in model.named_parameters() if n.endswith("weight"))
    total = sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight"))
    assert zeros == pytest.approx(total * (1 - split[2].nonzero_frac), abs=1)


def test_each_member_branches_at_its_branch_point_like_separate_trials(tmp_path):
    """Members regularize once each, then every branch prunes and fine-tunes as its own trial would;
    a resume from a checkpoint taken inside the branches gives the same results."""
    configs = [MEMBERS[0], MEMBERS[2]]
    branches = [[{}, {"threshold": 0.05, "finetune_lr": 3e-4}], [{"threshold": 0.2}, {}, {"threshold": 1.0}]]
    checkpoint = tmp_path / "cohort.pt"
    seen = []

    def report(member, metrics, state):
        seen.append((member, metrics["branch"], metrics["phase"]))
        if metrics["phase"] == "finetune" and member == 1 and metrics["branch"] == 2:
            state.save(checkpoint)

    results = run_cohort_branches(configs, branches, report=report)
    assert "shared" in {b for _, b, p in seen if p == "train"}
    assert {b for _, b, p in seen if p == "finetune"} == {0, 1, 2}
    assert [len(r) for r in results] == [2, 3]
    for member, (config, member_branches) in enumerate(zip(configs, branches)):
        for branch, settings in enumerate(member_branches):
            close_results(results[member][branch], run_trial({**config, **settings}))
    resumed = run_cohort_branches(configs, branches, resume_from=checkpoint)
    for mine, theirs in zip(sum(resumed, []), sum(results, [])):
        close_results(mine, theirs, loss_rtol=1e-6)
    with pytest.raises(ConfigError, match="may set only"):
        run_cohort_branches(configs, [[{"strength": 1.0}], [{}]])


def test_branches_pruning_gradually_match_their_separate_trials_and_resume_inside_the_ramp(tmp_path):
    """Rows may differ in ``prune_ramp_epochs``: each tightens its own masks as its trial would.

    A ramp step keeps the n largest magnitudes among ~10⁵ small weights, whose spacing is below the
    ~1e-6 that stacked and single matmuls round apart, so a ramped row may keep a different weight
    of a near-tie than its trial (seen once in CI, with another thread count: loss 3e-5 apart).
    Counts are exact by construction, so every fine-tune epoch's nonzero fraction and each layer's
    final count are still compared exactly; accuracies within two samples and the loss within 1e-3.
    """
    configs = [dict(MEMBERS[0], finetune_epochs=4, threshold=0.05), dict(MEMBERS[2], finetune_epochs=4)]
    branches = [[{}, {"prune_ramp_epochs": 3}], [{"prune_ramp_epochs": 4}, {"threshold": 1.0, "prune_ramp_epochs": 2}]]
    checkpoint = tmp_path / "cohort.pt"

    def report(member, metrics, state):
        if metrics["phase"] == "finetune" and metrics["phase_epoch"] == 2 and not checkpoint.exists():
            state.save(checkpoint)

    results = run_cohort_branches(configs, branches, report=report)
    for member, (config, member_branches) in enumerate(zip(configs, branches)):
        for branch, settings in enumerate(member_branches):
            single = run_trial({**config, **settings})
            ramped = settings.get("prune_ramp_epochs", 0) > 1
            close_results(results[member][branch], single, **({"loss_rtol": 1e-3, "samples": 2} if ramped else {}))
            assert results[member][branch].val_accuracy_after_prune == pytest.approx(
                single.val_accuracy_after_prune, abs=(2 if ramped else 1) * SAMPLE + 1e-12
            )
            assert [e["nonzero_frac"] for e in results[member][branch].history if e["phase"] == "finetune"] == [
                e["nonzero_frac"] for e in single.history if e["phase"] == "finetune"
            ]
    resumed = run_cohort_branches(configs, branches, resume_from=checkpoint)
    for mine, theirs in zip(sum(resumed, []), sum(results, [])):
        close_results(mine, theirs, loss_rtol=1e-6)


def test_a_convolutional_cohort_matches_separate_trials():
    """LeNet-5: vmapped convolutions, Group-HS over filters and channels, FLOPs per output position."""
    configs = [
        dict(BASE, model="lenet5", epochs=1, reg="group_hs", strength=1e-3, threshold=0.02, seed=0),
        dict(BASE, model="lenet5", epochs=1, reg="hs", strength=3e-4, threshold=0.05, seed=1),
    ]
    for mine, config in zip(run_cohort(configs), configs):
        theirs = run_trial(config)
        close_results(mine, theirs)
        assert mine.flops_frac == theirs.flops_frac and mine.flops_frac != mine.nonzero_frac


def test_members_choose_their_branches_from_their_prune_now_front():
    """``choose`` sees each member's proxy points over the grid at the branch point; the branches it
    returns end as their own trials would (pre-prune sparsity of a chosen branch: NaN, not tracked)."""
    seen, picked = {}, {}

    def choose(member, points):
        seen[member] = points
        picked[member] = [t for t in select_thresholds(points, 3) if t != MEMBERS[member]["threshold"]][:2]
        return [{"threshold": t} for t in picked[member]]

    grid = threshold_grid(0.005, 0.2, 8)
    results = run_cohort_branches(MEMBERS[:2], None, choose=choose, grid=grid, chosen_per_member=2)
    assert sorted(seen) == [0, 1] and [p.threshold for p in seen[0]] == pytest.approx(grid)
    assert seen[0][0].nonzero_frac > seen[0][-1].nonzero_frac  # sparser at higher thresholds
    for member, config in enumerate(MEMBERS[:2]):
        assert len(results[member]) == 3  # its own threshold, then the two chosen
        close_results(results[member][0], run_trial(config))
        for threshold, chosen in zip(picked[member], results[member][1:]):
            single = run_trial({**config, "threshold": threshold})
            for key in FINAL:
                assert abs(chosen.metric(key) - single.metric(key)) <= SAMPLE + 1e-12, key
            assert math.isnan(chosen.history[0]["nonzero_frac"])
            assert chosen.history[-1]["nonzero_frac"] == pytest.approx(single.history[-1]["nonzero_frac"])


def test_members_refine_a_point_under_each_wanted_fraction_as_a_single_run_does():
    """With ``refine_under``, ``choose`` also sees the point bisected right under each fraction between
    grid points: the threshold, sparsity and proxy accuracy ``branching.refine_under`` finds for the run."""
    config = MEMBERS[0]
    run = start_run(TrialConfig(**config))
    assert dense(run) and regularize(run)
    grid = threshold_grid(0.005, 0.2, 8)
    points = prune_now_proxy(run, grid)
    fraction = (points[3].nonzero_frac + points[4].nonzero_frac) / 2
    (single,) = refine_under(run, points, [fraction])
    seen = {}

    def choose(member, member_points):
        seen[member] = member_points
        return []

    run_cohort_branches([config, MEMBERS[2]], None, choose=choose, grid=grid, refine_under=[fraction, 2.0])
    cohort_grid, refined = seen[0][: len(grid)], seen[0][len(grid) :]
    assert [p.nonzero_frac for p in cohort_grid] == pytest.approx([p.nonzero_frac for p in points], abs=1e-6)
    assert len(refined) == 1 and refined[0].threshold == pytest.approx(single.threshold, rel=1e-6)
    assert points[3].threshold < refined[0].threshold < points[4].threshold
    assert refined[0].nonzero_frac <= fraction
    assert refined[0].nonzero_frac == pytest.approx(single.nonzero_frac, abs=1e-6)
    assert refined[0].val_accuracy == pytest.approx(single.val_accuracy, abs=SAMPLE + 1e-12)


def test_a_cohort_marks_the_masks_that_cut_the_input_off_as_a_single_run_does():
    """The vmapped proxy's ``connected`` flags equal the single run's over a grid that reaches past a layer's
    largest weight; ``choose`` gets no cut-off point from ``select_thresholds``."""
    seen = {}

    def choose(member, points):
        seen[member] = points
        return [{"threshold": t} for t in select_thresholds(points, 1)]

    grid = threshold_grid(0.005, 0.5, 12)
    run_cohort_branches(MEMBERS[:1], None, choose=choose, grid=grid, chosen_per_member=1)
    run = start_run(TrialConfig(**MEMBERS[0]))
    assert dense(run) and regularize(run)
    single = prune_now_proxy(run, grid)
    assert [p.connected for p in seen[0]] == [p.connected for p in single]
    assert any(p.connected for p in single) and any(not p.connected and p.nonzero_frac > 0 for p in single)
    for mine, theirs in zip(seen[0], single):
        assert abs(mine.val_accuracy - theirs.val_accuracy) <= SAMPLE + 1e-12


def test_dense_pretraining_in_a_cohort_and_from_the_pretrain_cache(tmp_path):
    """Members pretrain stacked (each its own dense run, cached under its own key); a second cohort takes
    them from the cache — one member cached, one not — and both equal separate trials."""
    cache = str(tmp_path / "cache")
    configs = [dict(m, pretrain_epochs=1, pretrain_cache_dir=cache) for m in (MEMBERS[0], MEMBERS[1])]
    first = run_cohort(configs)
    assert len(list((tmp_path / "cache").glob("dense-*.pt"))) == 2
    for mine, config in zip(first, configs):
        close_results(mine, run_trial({**config, "pretrain_cache_dir": None}))
    mixed = [configs[0], dict(configs[1], seed=5)]  # the first is cached, the second pretrains
    cached, pretrained = run_cohort(mixed)
    assert [e["phase"] for e in cached.history][0] == "train"  # dense weights from the cache, as a trial's
    close_results(cached, run_trial(mixed[0]))
    assert [e["phase"] for e in pretrained.history][0] == "pretrain"
    close_results(pretrained, run_trial({**mixed[1], "pretrain_cache_dir": None}))
