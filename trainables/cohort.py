"""Fused cohorts: K trial configurations of one model and dataset trained as one stacked model.

A small trial leaves a GPU idle: it is bound by kernel launches and Python, not by arithmetic.
A cohort trains K members as one model whose every parameter carries a leading member
dimension: the forward is ``torch.func.functional_call`` mapped over the members with
``torch.func.vmap`` (batched matmuls, one launch for K members), the optimizer updates every
member's slice at once with per-member hyperparameters as vectors (``StackedOptimizer``), and
one data batch feeds every member that shares its batch order.  HFTA (MLSys'21) showed the idea
for training jobs in general; here it runs the DeepHoyer phases per member:

- each member starts from its own seed (``torch.manual_seed(seed)`` then the model, exactly as
  ``run_trial``) and draws its own batch order from (seed, phase, epoch); members that share a
  seed share each batch (one gather, broadcast), the others gather their own;
- the regularizer is each member's ``reg`` × ``strength`` (members grouped by ``reg``;
  ``trainables.regularizers.stacked_regularization``: Hoyer-Square and Group-HS as one fused
  Function over the member dimension, the others mapped with ``vmap``);
- pruning takes each member's ``threshold`` / ``threshold_mode`` into each member's mask, held
  through fine-tuning (``weight × mask`` in the forward, pruned entries zeroed, as
  ``torch.nn.utils.prune`` does for a single trial);
- every epoch each member reports what ``run_trial`` would report (projected sparsity, the
  prune-now proxy), and its final ``TrialResult`` has its own FLOPs and per-layer sparsity.
- with ``run_cohort_branches`` each member branches at its branch point: its row of the stack
  becomes one row per branch (``BRANCH_SETTINGS``), each pruned and fine-tuned as its own trial
  would be, with the pre-prune history at its own threshold (tracked every epoch).

What members may differ in, and what they must share, is ``trainables.config.COHORT_SETTINGS``
(``check_cohort`` refuses a mixed cohort in one line).  A member whose loss turns non-finite
leaves the stack as ``diverged``; a member the ``stop`` callback ranks out leaves it as
``pruned`` (asked after each regularized epoch, before that epoch's reports); ``on_end`` hears of
each result as soon as it is final; the others go on, unchanged (their slices never mix).  A
``CohortState`` passed to ``report`` saves the whole cohort (weights, optimizer state, masks,
histories, finished results) so ``run_cohort(..., resume_from=path)`` continues it exactly.
Before training, ``plan_cohort`` estimates the memory of one member and splits a cohort that
would not fit the device into chunks trained one after the other (and refuses a member that
alone would not fit), instead of running out of memory mid-sweep.

Equivalence with ``run_trial`` (same seeds, deterministic CPU) is tested to float32 rounding
(``tests/test_cohort.py``): batched matmuls round differently from single ones, so a cohort is
not bit-identical, only as close as two BLAS back ends are.  Models with buffers (batch norm)
are refused: their running statistics would need per-member functional updates.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainables.branching import ProxyPoint, refine_thresholds
from trainables.config import BRANCH_SETTINGS, ConfigError, TrialConfig, check_cohort, same_computation
from trainables.contract import (
    COHORT_INDEX_KEY,
    COHORT_SIZE_KEY,
    FLOPS_FRAC,
    NONZERO_FRAC,
    PROXY_FLOPS_FRAC,
    PROXY_NONZERO_FRAC,
    PROXY_VAL_ACCURACY,
    STOPPED_AT_KEY,
    VAL_ACCURACY,
    Status,
    TrialResult,
)
from trainables.data import DatasetSplits, load_dataset
from trainables.models import build_model
from trainables.pipeline import (
    FINETUNE,
    PRETRAIN,
    TRAIN,
    Cursor,
    _atomic_save,
    _epoch_seed,
    _pretrain_cache_path,
    augmenter,
    build_result,
    load_checkpoint,
    plan_phases,
    resolve_device,
    resource_usage,
    write_model_file,
)
from trainables.pruning import (
    PROBE_SAMPLES,
    Masks,
    SparsityReport,
    compute_masks,
    cut_off,
    output_positions,
    ramp_counts,
    sparsity_report,
)
from trainables.regularizers import prunable_weights, stacked_regularization

COHORT_FORMAT = "hoyersweep-cohort-1"

CohortReportFn = Callable[[int, dict[str, Any], "CohortState"], None]
"""``report(member, metrics, state)``: one epoch of one member (its index in the cohort)."""
ChooseFn = Callable[[int, list["ProxyPoint"]], list[dict[str, Any]]]
"""``choose(member, points)`` at the branch point: more branches for ``member`` from its prune-now front."""
EndFn = Callable[[int, int, TrialResult], None]
"""``on_end(member, branch, result)``: a result is final (as soon as its row leaves the stack)."""
StopFn = Callable[[int, dict[str, Any]], bool]
"""``stop(member, metrics)`` after each regularized epoch: True ranks the member out (``pruned``)."""

ADAM_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, which run_trial uses
ADAM_EPS = 1e-8


# --- the optimizer over stacked members -----------------------------------------------------


def _per_member(vector: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
    """A (K,) vector shaped to broadcast over a (K, ...) tensor."""
    return vector.view(-1, *([1] * (tensor.dim() - 1)))


class StackedOptimizer:
    """Adam or SGD over member-stacked tensors, with each member's learning rate, weight decay and momentum.

    ``torch.optim`` takes one learning rate per parameter group; a group per member would cost
    kernel launches per member and tensor on every step, the very overhead a cohort removes.  So
    the update rules of ``torch.optim.Adam`` (default betas and eps, no amsgrad) and
    ``torch.optim.SGD`` (momentum, no dampening or Nesterov) — the single-tensor forms — are
    written here over (K, ...) tensors with the hyperparameters as (K,) vectors; tested against
    ``torch.optim`` member by member.  ``select`` keeps the state of the members that stay.
    """

    def __init__(self, kind: str, weight_decay: torch.Tensor, momentum: torch.Tensor) -> None:
        self.kind = kind
        self.weight_decay = weight_decay
        self.decay = bool((weight_decay != 0).any())  # decided once: a GPU sync per step otherwise
        self.momentum = momentum
        self.steps = 0
        self.state: list[dict[str, torch.Tensor]] = []

    @torch.no_grad()
    def step(self, params: Sequence[torch.Tensor], lr: torch.Tensor) -> None:
        """One update of every member's slice of ``params`` (gradients in ``.grad``) at learning rates ``lr``.

        Written to touch each (K, ...) tensor as few times as possible and to allocate nothing
        after the first step (a scratch buffer per tensor): on CPU a stacked tensor outgrows the
        caches, and each extra pass or fresh allocation costs more than the arithmetic.
        """
        if not self.state:
            self.state = [{} for _ in params]
        self.steps += 1
        for param, state in zip(params, self.state):
            grad = param.grad
            if grad is None:
                continue
            if self.decay:
                grad.addcmul_(_per_member(self.weight_decay, param), param)
            if self.kind == "adam":
                self._adam(param, grad, state, _per_member(lr, param))
            else:
                self._sgd(param, grad, state, _per_member(lr, param))

    def _adam(self, param: torch.Tensor, grad: torch.Tensor, state: dict[str, torch.Tensor], lr: torch.Tensor) -> None:
        beta1, beta2 = ADAM_BETAS
        exp_avg = state.setdefault("exp_avg", torch.zeros_like(param))
        exp_avg_sq = state.setdefault("exp_avg_sq", torch.zeros_like(param))
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = lr / (1 - beta1**self.steps)
        update = torch.sqrt(exp_avg_sq, out=grad)  # the gradient is spent: its memory holds the update
        update.div_(math.sqrt(1 - beta2**self.steps)).add_(ADAM_EPS)
        torch.div(exp_avg, update, out=update)
        param.sub_(update.mul_(step_size))

    def _sgd(self, param: torch.Tensor, grad: torch.Tensor, state: dict[str, torch.Tensor], lr: torch.Tensor) -> None:
        momentum = _per_member(self.momentum, param)
        buffer = state.get("momentum_buffer")
        if buffer is None:
            buffer = state["momentum_buffer"] = grad.clone()
        else:
            buffer.mul_(momentum).add_(grad)
        param.sub_(grad.copy_(torch.where(momentum != 0, buffer, grad)).mul_(lr))

    def select(self, keep: torch.Tensor) -> None:
        """Keep the state of the members at positions ``keep`` (in that order)."""
        self.weight_decay = self.weight_decay[keep]
        self.decay = bool((self.weight_decay != 0).any())
        self.momentum = self.momentum[keep]
        self.state = [{k: v[keep] for k, v in state.items()} for state in self.state]

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "state": [dict(state) for state in self.state]}

    def load_state_dict(self, payload: dict[str, Any]) -> None:
        self.steps = int(payload["steps"])
        device = self.weight_decay.device
        self.state = [{k: v.to(device) for k, v in state.items()} for state in payload["state"]]


# --- rows of the stack and the cohort's state -----------------------------------------------


def _pair(config: TrialConfig) -> tuple[float, str]:
    return (config.threshold, config.threshold_mode)


TRACKED_METRICS: tuple[str, ...] = (NONZERO_FRAC, FLOPS_FRAC, PROXY_VAL_ACCURACY, PROXY_NONZERO_FRAC, PROXY_FLOPS_FRAC)


def branch_history(row: Row, config: TrialConfig, branch: int) -> list[dict[str, Any]]:
    """Row ``row``'s pre-prune history as branch ``branch`` (``config``) of it would have it.

    Sparsity and proxies at the branch's own (threshold, mode) where the row tracked that pair;
    NaN where it did not (a branch chosen at the branch point, as ``run_branches`` leaves it).
    """
    history = []
    for epoch, tracked in zip(row.history, row.tracked):
        own = tracked.get(_pair(config))
        if own is None:
            own = {key: math.nan for key in TRACKED_METRICS if key in epoch}
        history.append({**epoch, **own, "branch": branch})
    return history


@dataclass
class Row:
    """One row of the stack: a member's regularized run, or after the branch point one of its branches.

    ``member`` is the member's index in the whole cohort; ``branch`` its branch once the row was
    expanded at the branch point (None before, and always without branching).  ``tracked`` holds,
    for every pre-prune epoch, what pruning at each of the member's branches' (threshold, mode)
    would give (projected sparsity; in regularized epochs also the prune-now proxy), so that each
    branch's history is the one its own trial would have.  ``results``: one per branch once the
    row left the stack (one, for an expanded row or a cohort without branching).
    """

    config: TrialConfig
    member: int
    branch: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    tracked: list[dict[tuple[float, str], dict[str, float]]] = field(default_factory=list)
    marks: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    results: list[TrialResult] = field(default_factory=list)
    ramp_final: dict[str, int] | None = None  # a gradual prune's end: the threshold's count per layer

    def to_payload(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "member": self.member,
            "branch": self.branch,
            "history": self.history,
            "tracked": [[[list(pair), values] for pair, values in epoch.items()] for epoch in self.tracked],
            "marks": self.marks,
            "message": self.message,
            "results": [result.to_dict() for result in self.results],
            "ramp_final": self.ramp_final,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Row:
        return cls(
            config=TrialConfig.from_dict(payload["config"]),
            member=int(payload["member"]),
            branch=payload["branch"],
            history=list(payload["history"]),
            tracked=[{(float(t), str(m)): dict(v) for (t, m), v in epoch} for epoch in payload["tracked"]],
            marks=dict(payload["marks"]),
            message=payload["message"],
            results=[TrialResult.from_dict(r) for r in payload["results"]],
            ramp_final=payload.get("ramp_final"),
        )


class CohortState:
    """A cohort between two epochs: ``save(path)`` snapshots everything resuming needs."""

    def __init__(self, cohort: Cohort) -> None:
        self._cohort = cohort
        self.phase = cohort.cursor.phase
        self.phase_epoch = cohort.cursor.phase_epoch
        self.epoch = cohort.phases[self.phase].epoch(self.phase_epoch)

    def save(self, path: str | os.PathLike) -> None:
        _atomic_save(self._cohort.checkpoint(), Path(path))


def _no_buffers(model: nn.Module, name: str) -> None:
    buffers = [n for n, _ in model.named_buffers()]
    if buffers:
        raise ConfigError(
            f"model {name!r} keeps buffers ({', '.join(buffers[:3])}, …: batch norm); "
            "cohorts train models without them (cohort_size 1 trains it)"
        )


ModelPath = Callable[[int, int], "str | os.PathLike | None"]
"""``model_path(member, branch)``: where that branch's final model is saved, or None."""


class Cohort:
    """The members of one cohort (or one chunk of a split cohort) and the stack they train as.

    ``params`` holds every row's weights stacked on dim 0 (the store), ``rows`` says whose they
    are; ``active`` lists the rows still training, in stack order, and ``work`` their slices as
    the leaf tensors the optimizer updates.  ``parked`` rows wait out a phase they skip
    (pretraining, when the pretrain cache already holds their dense weights).  ``branches[i]``:
    member i's branches (``BRANCH_SETTINGS`` over its config); at the prune each row expands
    into one row per branch.
    """

    def __init__(
        self,
        configs: Sequence[TrialConfig],
        data: DatasetSplits,
        report: CohortReportFn | None = None,
        stop: StopFn | None = None,
        indices: Sequence[int] | None = None,
        branches: Sequence[Sequence[dict[str, Any]]] | None = None,
        on_end: EndFn | None = None,
        choose: ChooseFn | None = None,
        grid: Sequence[float] = (),
        refine_under: Sequence[float] = (),
    ) -> None:
        indices = list(indices) if indices is not None else list(range(len(configs)))
        self.data = data
        self.report = report
        self.stop = stop
        self.on_end = on_end
        self.choose = choose
        self.grid = list(grid)
        self.refine_under = list(refine_under)
        self.branching = branches is not None or choose is not None
        self.branch_configs = {
            member: [
                TrialConfig.from_dict({**config.to_dict(), **branch})
                for branch in (branches or [[{}]] * len(configs))[i]
            ]
            for i, (member, config) in enumerate(zip(indices, configs))
        }
        first = configs[0]
        device = data.train_x.device
        states = []
        for config in configs:
            torch.manual_seed(config.seed)
            model = build_model(config.model, data.input_shape, data.num_classes).to(device)
            states.append(model.state_dict())
        self.template = model.eval()
        _no_buffers(self.template, first.model)
        self.names = [name for name, _ in self.template.named_parameters()]
        self.params = {name: torch.stack([state[name] for state in states]) for name in self.names}
        self.prunable = [f"{m}.{n}" for m, _, n in prunable_weights(self.template, include_bias=first.include_bias)]
        self.positions = output_positions(self.template, data.input_shape)
        self.phases = plan_phases(first)
        self.augment = augmenter(first, data)
        self.shared = first
        self.member_configs = dict(zip(indices, configs))
        self.rows = [Row(config, member) for config, member in zip(configs, indices)]
        self.active = list(range(len(self.rows)))
        self.parked: list[int] = []
        self.masks: dict[str, torch.Tensor] | None = None
        self.cursor = Cursor(PRETRAIN)
        self.work: dict[str, torch.Tensor] = {}
        self.work_masks: dict[str, torch.Tensor] = {}
        self.stale = False  # the working stack has steps the store has not seen
        self.optimizer: StackedOptimizer | None = None
        self.optimizer_state: dict[str, Any] | None = None
        self.earlier: dict[int, list[dict[str, Any]]] = {}  # results of chunks trained before this one
        self.started = time.perf_counter()
        self.elapsed_before = 0.0

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def vector(self, values: Sequence[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32, device=self.data.train_x.device)

    def _index(self, rows: Sequence[int]) -> torch.Tensor:
        return torch.tensor(list(rows), dtype=torch.long, device=self.data.train_x.device)

    def pairs(self, row: int) -> list[tuple[float, str]]:
        """The (threshold, mode) pairs row ``row`` tracks before the prune: its own, then its branches'."""
        record = self.rows[row]
        pairs = [_pair(record.config)]
        if record.branch is None:
            pairs += [_pair(c) for c in self.branch_configs[record.member] if _pair(c) not in pairs]
        return pairs

    # the working stack

    def sync(self) -> None:
        """Write the working stack back into the store (once per optimizer step, however often asked)."""
        if self.work and self.stale:
            index = self._index(self.active)
            with torch.no_grad():
                for name in self.names:
                    self.params[name][index] = self.work[name].detach()
        self.stale = False

    def build_work(self) -> None:
        """The active rows' slices as fresh leaf tensors (and their masks, once pruned)."""
        index = self._index(self.active)
        self.work = {name: self.params[name][index].clone().requires_grad_() for name in self.names}
        self.work_masks = {n: m[index].to(torch.float32) for n, m in self.masks.items()} if self.masks else {}

    def effective_work(self) -> dict[str, torch.Tensor]:
        """The working stack as the forward uses it: × the masks once pruned."""
        return {n: p * self.work_masks[n] if n in self.work_masks else p for n, p in self.work.items()}

    def leave(self, rows: Sequence[int]) -> None:
        """Take ``rows`` off the stack (their weights kept in the store, their optimizer state dropped)."""
        gone = set(rows)
        if not gone:
            return
        self.sync()
        keep = [position for position, row in enumerate(self.active) if row not in gone]
        self.active = [self.active[position] for position in keep]
        if self.optimizer is not None:
            self.optimizer.select(self._index(keep))
        self.build_work()

    def stored(self, rows: Sequence[int], masks: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The store's weights of ``rows`` as the forward uses them: × their held masks, then × ``masks``."""
        index = self._index(rows)
        params = {n: self.params[n][index] for n in self.names}
        for extra in (
            {n: m[index] for n, m in self.masks.items()} if self.masks is not None else None,
            masks,
        ):
            if extra is not None:
                params = {n: p * extra[n] if n in extra else p for n, p in params.items()}
        return params

    def view(self, row: int) -> nn.Module:
        """The template module holding row ``row``'s effective weights from the store (``sync()`` first)."""
        self.template.load_state_dict({n: t[0] for n, t in self.stored([row]).items()})
        return self.template

    # evaluation

    def _forward(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(self.template, params, (x,))

    @torch.no_grad()
    def evaluate(
        self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(accuracy, mean cross-entropy) of every row of a stack over a whole split: two (K,) vectors.

        The rows see the same batches; a batch holds ``eval_batch_size / K`` samples so the
        activations of K rows take what one trial's would.
        """
        count = next(iter(params.values())).shape[0]
        batch = max(1, self.shared.eval_batch_size // count)
        correct = torch.zeros(count, device=x.device)
        loss_sum = torch.zeros(count, device=x.device)
        logits_of = torch.func.vmap(self._forward, in_dims=(0, None))
        for start in range(0, len(y), batch):
            xb, yb = x[start : start + batch], y[start : start + batch]
            logits = logits_of(params, xb)
            loss_sum += F.cross_entropy(logits.flatten(0, 1), yb.repeat(count), reduction="none").view(count, -1).sum(1)
            correct += (logits.argmax(dim=2) == yb).sum(1)
        n = max(len(y), 1)
        return correct.double() / n, loss_sum.double() / n  # as run_trial divides: in double precision

    def validate(self, rows: Sequence[int], masks: dict[str, torch.Tensor] | None = None):
        """Validation (accuracy, loss) vectors of ``rows`` as they stand, or pruned by stacked ``masks``."""
        self.sync()
        return self.evaluate(self.stored(rows, masks), self.data.val_x, self.data.val_y)

    @torch.no_grad()
    def cut_off(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Whether each row of a stack gives one output whatever its input: ``pruning.cut_off`` on a few
        validation inputs, a (K,) bool vector."""
        logits = torch.func.vmap(self._forward, in_dims=(0, None))(params, self.data.val_x[:PROBE_SAMPLES])
        return cut_off(logits)

    def masks_at(self, row: int, pair: tuple[float, str]) -> Masks:
        threshold, mode = pair
        return compute_masks(self.view(row), threshold, mode, include_bias=self.shared.include_bias)

    def sparsity(self, row: int, pair: tuple[float, str] | None = None) -> SparsityReport:
        """The sparsity of the row's held masks, or, before the prune, the projected one (at ``pair``)."""
        masks = self.masks_at(row, pair or _pair(self.rows[row].config)) if self.masks is None else None
        return sparsity_report(self.view(row), self.positions, masks, include_bias=self.shared.include_bias)

    # training

    def begin_phase(self, name: str) -> int:
        """A fresh optimizer for phase ``name`` over the active stack (restored state when resuming inside it)."""
        configs = [self.rows[r].config for r in self.active]
        self.optimizer = StackedOptimizer(
            self.shared.optimizer,
            self.vector([c.weight_decay for c in configs]),
            self.vector([c.momentum for c in configs]),
        )
        if self.cursor.phase != name:
            self.cursor = Cursor(name)
        elif self.optimizer_state is not None:
            self.optimizer.load_state_dict(self.optimizer_state)
        self.optimizer_state = None
        self.build_work()
        return self.cursor.phase_epoch

    def batch_orders(self, phase: str, index: int) -> tuple[torch.Tensor, list[torch.Generator]]:
        """Each active row's shuffled order of the training split (one row when they share a seed) and generators.

        Drawn exactly as ``iterate_batches`` draws a trial's: ``randperm`` on a CPU generator
        seeded from (seed, phase, epoch), then moved to the data's device.
        """
        seeds = [self.rows[r].config.seed for r in self.active]
        distinct = sorted(set(seeds), key=seeds.index)
        generators = [torch.Generator().manual_seed(_epoch_seed(seed, phase, index)) for seed in distinct]
        n = len(self.data.train_y)
        orders = torch.stack([torch.randperm(n, generator=g) for g in generators]).to(self.data.train_x.device)
        if len(distinct) == 1:
            return orders, generators
        return orders[[distinct.index(s) for s in seeds]], [generators[distinct.index(s)] for s in seeds]

    def train_epoch(self, phase: str, index: int, lr: torch.Tensor) -> dict[str, torch.Tensor]:
        """One pass over the training split for every active row; per-row mean losses ((K,) vectors)."""
        configs = [self.rows[r].config for r in self.active]
        count = len(configs)
        regularizing = [phase == TRAIN and c.reg != "none" and c.strength > 0 for c in configs]
        positions_of: dict[str, list[int]] = {}
        for position, config in enumerate(configs):
            if regularizing[position]:
                positions_of.setdefault(config.reg, []).append(position)
        groups = {reg: (self._index(p), len(p) == count) for reg, p in positions_of.items()}
        strength = self.vector([c.strength for c in configs])
        orders, generators = self.batch_orders(phase, index)
        shared = orders.shape[0] == 1
        task_of = torch.func.vmap(self._task_loss, in_dims=(0, None, None) if shared else (0, 0, 0))
        x, y = self.data.train_x, self.data.train_y
        batch_size = self.shared.batch_size
        task_sum = torch.zeros(count, device=x.device)
        reg_sum = torch.zeros(count, device=x.device)
        batches = 0
        for start in range(0, len(y), batch_size):
            if shared:
                idx = orders[0, start : start + batch_size]
                xb, yb = x.index_select(0, idx), y.index_select(0, idx)
                if self.augment is not None:
                    xb = self.augment(xb, generators[0])
            else:
                idx = orders[:, start : start + batch_size]
                xb, yb = x[idx], y[idx]
                if self.augment is not None:
                    xb = torch.stack([self.augment(xb[k], generators[k]) for k in range(count)])
            task = task_of(self.effective_work(), xb, yb)
            loss = task.sum()
            for reg, (where, everyone) in groups.items():
                tensors = [self.work[n] if everyone else self.work[n][where] for n in self.prunable]
                values = stacked_regularization(tensors, reg)
                loss = loss + (strength[where] * values).sum()
                reg_sum[where] += values.detach()
            for tensor in self.work.values():
                tensor.grad = None
            loss.backward()
            self.optimizer.step(list(self.work.values()), lr)
            self.stale = True
            task_sum += task.detach()
            batches += 1
        task_mean = task_sum / max(batches, 1)
        reg_mean = reg_sum / max(batches, 1)
        flags = self.vector([float(r) for r in regularizing])
        return {"task_loss": task_mean, "reg_loss": reg_mean, "loss": task_mean + strength * reg_mean * flags}

    def _task_loss(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self._forward(params, x), y)

    def stacked_masks(self, rows: Sequence[int], pairs: Sequence[tuple[float, str]]) -> dict[str, torch.Tensor]:
        """The masks pruning row ``rows[e]`` at ``pairs[e]`` would give now, for every entry at once.

        ``pruning.threshold_mask`` over the member dimension: |w| ≥ t, or |w| ≥ t·std(w) with
        each row's own (unbiased) standard deviation per tensor.
        """
        stored = self.stored(rows)
        thresholds = self.vector([t for t, _ in pairs])
        relative = torch.tensor([mode == "std" for _, mode in pairs], device=thresholds.device)
        masks = {}
        for name in self.prunable:
            weights = stored[name].detach()
            spread = weights.flatten(1).float().std(dim=1)
            cutoff = torch.where(relative, thresholds * spread, thresholds)
            masks[name] = weights.abs() >= _per_member(cutoff, weights)
        return masks

    def fractions(self, rows: Sequence[int], masks: dict[str, torch.Tensor] | None = None) -> list[tuple[float, float]]:
        """(nonzero_frac, flops_frac) of each row's effective weights, or of those ``masks`` would keep.

        ``pruning.sparsity_report``'s two totals for every row at once (one transfer, not one per
        layer and row): counts of nonzero weights, and MACs weighted by each layer's output positions.
        """
        stored = self.stored(rows)
        nonzero = torch.zeros(len(rows), dtype=torch.long, device=self.data.train_x.device)
        macs = torch.zeros_like(nonzero)
        numel = macs_dense = 0
        for name in self.prunable:
            kept = stored[name].detach() != 0
            if masks is not None:
                kept &= masks[name]
            count = kept.flatten(1).sum(1)
            positions = self.positions.get(name.rpartition(".")[0], 1)
            nonzero += count
            macs += count * positions
            numel += kept[0].numel()
            macs_dense += kept[0].numel() * positions
        return [(n / numel, m / macs_dense) for n, m in zip(nonzero.tolist(), macs.tolist())]

    def track(self, phase: str) -> list[dict[tuple[float, str], dict[str, float]]]:
        """Before the prune: per active row, what pruning now at each of its pairs would give.

        Projected sparsity always; in regularized epochs also the prune-now proxy (validation
        accuracy of the pruned weights: one vmapped pass over every (row, pair) at once).
        """
        entries = [(row, pair) for row in self.active for pair in self.pairs(row)]
        rows = [row for row, _ in entries]
        masks = self.stacked_masks(rows, [pair for _, pair in entries])
        fractions = self.fractions(rows, masks)
        accuracy = self.validate(rows, masks)[0].tolist() if phase == TRAIN else None
        out: list[dict[tuple[float, str], dict[str, float]]] = [{} for _ in self.active]
        position = {row: k for k, row in enumerate(self.active)}
        for k, (row, pair) in enumerate(entries):
            nonzero_frac, flops_frac = fractions[k]
            values = {NONZERO_FRAC: nonzero_frac, FLOPS_FRAC: flops_frac}
            if accuracy is not None:
                values.update(
                    {PROXY_VAL_ACCURACY: accuracy[k], PROXY_NONZERO_FRAC: nonzero_frac, PROXY_FLOPS_FRAC: flops_frac}
                )
            out[position[row]][pair] = values
        return out

    def measure(self, phase: str, phase_epoch: int, lr: torch.Tensor, losses: dict[str, torch.Tensor]) -> list[dict]:
        """Each active row's report of the epoch just trained, as ``pipeline.measure_epoch`` makes a trial's."""
        val_accuracy, val_loss = self.validate(self.active)  # syncs the store
        if self.masks is None:
            tracked = self.track(phase)
            for row, entry in zip(self.active, tracked):
                self.rows[row].tracked.append(entry)
            own = [entry[_pair(self.rows[row].config)] for row, entry in zip(self.active, tracked)]
        else:
            own = [{NONZERO_FRAC: n, FLOPS_FRAC: f} for n, f in self.fractions(self.active)]
        reports = []
        for position, row in enumerate(self.active):
            metrics = {
                "phase": phase,
                "epoch": self.phases[phase].epoch(phase_epoch),
                "phase_epoch": phase_epoch,
                "lr": float(lr[position]),
                **{k: float(v[position]) for k, v in losses.items()},
                VAL_ACCURACY: float(val_accuracy[position]),
                "val_loss": float(val_loss[position]),
                **own[position],
                "time_s": self.elapsed(),
            }
            if self.branching:
                branch = self.rows[row].branch
                metrics["branch"] = "shared" if branch is None else branch
            reports.append(metrics)
        return reports

    def train_phase(self, name: str) -> None:
        """The epochs of phase ``name`` still to do for the active rows; rows leave as they diverge or stop."""
        if self.cursor.after(name) or not self.active:
            return
        phase = self.phases[name]
        schedule = self.shared.lr_schedule
        for index in range(self.begin_phase(name), phase.epochs):
            if name == FINETUNE and index > 0:
                self.ramp_step(index)
            lr = self.vector([plan_phases(self.rows[r].config)[name].lr_at(index, schedule) for r in self.active])
            losses = self.train_epoch(name, index, lr)
            finite = torch.isfinite(losses["loss"]).tolist()
            diverged = [r for r, ok in zip(self.active, finite) if not ok]
            for row in diverged:
                record = self.rows[row]
                record.marks["diverged_epoch"] = phase.epoch(index + 1)
                record.message = f"loss became non-finite in {name} epoch {record.marks['diverged_epoch']}"
            keep = [position for position, ok in enumerate(finite) if ok]
            lr, losses = lr[keep], {k: v[keep] for k, v in losses.items()}
            self.leave(diverged)
            for row in diverged:
                self.end(row, Status.DIVERGED)
            self.cursor = Cursor(name, index + 1)
            if not self.active:
                return
            reports = list(zip(self.active, self.measure(name, index + 1, lr, losses)))
            for row, metrics in reports:
                self.rows[row].history.append(metrics)
            if self.stop is not None and name == TRAIN and self.masks is None:
                # decided before the reports, so that a checkpoint a report writes holds the decisions
                self.rank_out([row for row, metrics in reports if self.stop(self.rows[row].member, metrics)])
            if self.report is not None:
                for row, metrics in reports:
                    self.report(self.rows[row].member, dict(metrics), CohortState(self))
            if not self.active:
                return

    def rank_out(self, rows: Sequence[int]) -> None:
        """Rows the ``stop`` callback ranked out: ``pruned``, with the epoch and their proxies."""
        for row in rows:
            record = self.rows[row]
            epoch = record.history[-1]["phase_epoch"]
            proxies = {k: v for k, v in record.history[-1].items() if k.startswith("proxy_")}
            record.marks.update({STOPPED_AT_KEY: epoch, **proxies})
            record.message = f"stopped early at regularized epoch {epoch}"
        self.leave(rows)
        for row in rows:
            self.end(row, Status.PRUNED)

    # the phases

    def dense(self) -> None:
        """The dense start: ``init_checkpoint``, each member's pretrain cache entry, or stacked pretraining."""
        if self.cursor.after(PRETRAIN):
            return
        if self.cursor == Cursor(PRETRAIN) and not self.parked:
            if self.shared.init_checkpoint:
                state = load_checkpoint(self.shared.init_checkpoint)
                state = state.get("model", state)
                for name in self.names:
                    self.params[name][:] = state[name].to(self.params[name].device)
                self.cursor = Cursor(TRAIN)
                return
            cached = [r for r in self.active if (path := _pretrain_cache_path(self.rows[r].config)) and path.exists()]
            for row in cached:
                state = load_checkpoint(_pretrain_cache_path(self.rows[row].config))["model"]
                for name in self.names:
                    self.params[name][row] = state[name].to(self.params[name].device)
            self.parked = cached
            self.active = [r for r in self.active if r not in cached]
        self.train_phase(PRETRAIN)
        self.sync()
        for row in self.active:
            path = _pretrain_cache_path(self.rows[row].config)
            if path is not None:
                _atomic_save({"model": {n: self.params[n][row].detach().cpu() for n in self.names}}, path)
        self.active, self.parked = sorted(self.active + self.parked), []
        self.work = {}
        self.cursor = Cursor(TRAIN)

    def expand(self) -> None:
        """At the branch point: each active row becomes one row per branch of its member.

        A branch's history is its member's with the sparsity (and proxies) at the branch's own
        (threshold, mode): the history its own trial would have.  With ``choose``, each member
        first adds the branches it picks from its prune-now front over ``grid`` (``proxy_points``).
        """
        self.sync()
        if self.choose is not None:
            for row in self.active:
                member = self.rows[row].member
                base = self.member_configs[member]
                extra = self.choose(member, self.proxy_points(row))
                self.branch_configs[member] += [TrialConfig.from_dict({**base.to_dict(), **b}) for b in extra]
        rows, source = [], []
        for position, record in enumerate(self.rows):
            if position not in self.active:
                rows.append(record)
                source.append(position)
                continue
            for branch, config in enumerate(self.branch_configs[record.member]):
                history = branch_history(record, config, branch)
                rows.append(Row(config, record.member, branch, history, [], dict(record.marks), record.message))
                source.append(position)
        index = self._index(source)
        self.params = {n: p[index] for n, p in self.params.items()}
        self.active = [k for k, row in enumerate(rows) if row.branch is not None]
        self.rows = rows
        self.work = {}

    def proxy_points(self, row: int) -> list[ProxyPoint]:
        """What pruning row ``row`` now at each threshold of ``grid`` (its own mode) would give, plus a
        point refined between grid points right under each fraction of ``refine_under``: as
        ``plan.BranchSettings.proxy_points`` for a single run (``branching.refine_thresholds``)."""
        self.sync()
        mode = self.rows[row].config.threshold_mode
        points = self.measure_thresholds(row, self.grid, mode)
        if not self.refine_under:
            return points

        def nonzero(threshold: float) -> float:
            return self.fractions([row], self.stacked_masks([row], [(threshold, mode)]))[0][0]

        found = refine_thresholds(points, self.refine_under, nonzero)
        return points + (self.measure_thresholds(row, found, mode) if found else [])

    def measure_thresholds(self, row: int, thresholds: Sequence[float], mode: str) -> list[ProxyPoint]:
        """Prune-now proxy points of row ``row`` at ``thresholds``: one vmapped validation pass over them all
        (``branching.prune_now_proxy`` for a cohort row)."""
        pairs = [(threshold, mode) for threshold in thresholds]
        rows = [row] * len(pairs)
        masks = self.stacked_masks(rows, pairs)
        fractions = self.fractions(rows, masks)
        params = self.stored(rows, masks)
        accuracy = self.evaluate(params, self.data.val_x, self.data.val_y)[0].tolist()
        cut = self.cut_off(params).tolist()
        return [ProxyPoint(t, a, n, f, not d) for (t, _), a, (n, f), d in zip(pairs, accuracy, fractions, cut)]

    def prune(self) -> None:
        """Prune each active row at its own threshold into its own mask (once: a no-op when pruned)."""
        if self.masks is not None or not self.active:
            return
        before, _ = self.validate(self.active)
        for row, value in zip(self.active, before.tolist()):
            self.rows[row].marks["val_accuracy_before_prune"] = value
        if self.branching:
            self.expand()
        masks = {r: self.masks_at(r, _pair(self.rows[r].config)) for r in self.active}
        held = {n: torch.ones_like(self.params[n], dtype=torch.bool) for n in self.prunable}
        for row, mask in masks.items():
            if self.rows[row].config.prune_ramp_epochs > 1:  # pruned gradually: ``ramp_step(0)`` takes the first step
                self.rows[row].ramp_final = {name: int(mask[name].sum()) for name in self.prunable}
                continue
            for name in self.prunable:
                held[name][row] = mask[name]
        with torch.no_grad():
            for name in self.prunable:
                self.params[name].mul_(held[name])
        self.masks = held
        self.work, self.work_masks = {}, {}
        self.ramp_step(0)
        after, _ = self.validate(self.active)
        for row, value in zip(self.active, after.tolist()):
            self.rows[row].marks["val_accuracy_after_prune"] = value

    def ramp_step(self, index: int) -> None:
        """Before fine-tune epoch ``index``: the rows pruning gradually tighten their masks to their
        ramp's step ``index`` (``pipeline.TrialRun.ramp_masks`` for every such row at once: each
        layer's largest-magnitude weights among those held, as many as ``ramp_counts`` says)."""
        rows = [
            r
            for r in self.active
            if self.rows[r].ramp_final is not None and index < self.rows[r].config.prune_ramp_epochs
        ]
        if not rows or self.masks is None:
            return
        self.sync()
        index_of = self._index(rows)
        dense = {n: self.params[n][0].numel() for n in self.prunable}
        counts = [
            ramp_counts(dense, self.rows[r].ramp_final, (index + 1) / self.rows[r].config.prune_ramp_epochs)
            for r in rows
        ]
        with torch.no_grad():
            for name in self.prunable:
                held = self.masks[name][index_of]
                scores = (self.params[name][index_of] * held).abs().masked_fill(~held, -1.0).flatten(1)
                order = scores.argsort(dim=1, descending=True, stable=True)
                rank = torch.empty_like(order)
                rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
                keep = torch.tensor([c[name] for c in counts], dtype=rank.dtype, device=rank.device)
                kept = (rank < keep[:, None]).view_as(held)
                self.masks[name][index_of] = kept
                self.params[name][index_of] = self.params[name][index_of] * kept
        if self.work:  # mid-phase: the working stack picks up the new masks, as after ``leave``
            self.build_work()

    def end(self, row: int, status: Status) -> None:
        """Row ``row``'s final results (metrics NaN unless ok): one, or one per branch for a row not yet expanded."""
        record = self.rows[row]
        accuracies = (math.nan, math.nan, math.nan)
        if status is Status.OK:
            params = self.stored([row])
            val_accuracy, val_loss = self.evaluate(params, self.data.val_x, self.data.val_y)
            test_accuracy, _ = self.evaluate(params, self.data.test_x, self.data.test_y)
            accuracies = (float(val_accuracy[0]), float(val_loss[0]), float(test_accuracy[0]))
        resources = resource_usage(self.data, self.elapsed(), len(record.history))
        resources.update({COHORT_SIZE_KEY: len(self.branch_configs), COHORT_INDEX_KEY: record.member})
        configs = (
            [record.config] if record.branch is not None or not self.branching else self.branch_configs[record.member]
        )
        record.results = []
        for branch, config in enumerate(configs):
            history = record.history
            if record.branch is None and self.branching:
                history = branch_history(record, config, branch)
            sparsity = self.sparsity(row, _pair(config) if self.masks is None else None)
            result = build_result(
                status, record.message, accuracies, sparsity, history, record.marks, self.elapsed(), resources
            )
            record.results.append(result)
            if self.on_end is not None:
                self.on_end(record.member, record.branch if record.branch is not None else branch, result)

    def finish(self, model_path: ModelPath | None) -> None:
        """Results of the rows that trained to the end, each model saved (where ``model_path`` says) first."""
        self.sync()
        for row in list(self.active):
            record = self.rows[row]
            path = model_path(record.member, record.branch or 0) if model_path is not None else None
            if path is not None:
                masks = {n: self.masks[n][row] for n in self.prunable} if self.masks is not None else {}
                write_model_file(self.view(row), masks, record.config, self.data, path)
            self.end(row, Status.OK)
        self.active = []

    def results(self) -> dict[int, list[TrialResult]]:
        """Each member's results, one per branch in branch order."""
        out: dict[int, list[TrialResult]] = {}
        for record in self.rows:
            out.setdefault(record.member, []).extend(record.results)
        return out

    # checkpoints

    def checkpoint(self) -> dict[str, Any]:
        self.sync()
        return {
            "format": COHORT_FORMAT,
            "members": {m: [c.to_dict() for c in configs] for m, configs in self.branch_configs.items()},
            "phase": self.cursor.phase,
            "phase_epoch": self.cursor.phase_epoch,
            "params": {n: p.detach().cpu() for n, p in self.params.items()},
            "masks": {n: m.cpu() for n, m in self.masks.items()} if self.masks is not None else None,
            "rows": [row.to_payload() for row in self.rows],
            "active": list(self.active),
            "parked": list(self.parked),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None and self.work else None,
            "earlier": self.earlier,
            "elapsed_s": self.elapsed(),
        }

    def restore(self, payload: dict[str, Any]) -> None:
        device = self.data.train_x.device
        self.params = {n: payload["params"][n].to(device) for n in self.names}
        self.masks = {n: m.to(device) for n, m in payload["masks"].items()} if payload["masks"] is not None else None
        self.branch_configs = {
            int(member): [
                TrialConfig.from_dict({**self.member_configs[int(member)].to_dict(), **_branch_part(c)}) for c in stored
            ]
            for member, stored in payload["members"].items()
        }  # the branches a chooser added before the checkpoint included
        self.rows = [Row.from_payload(row) for row in payload["rows"]]
        for row in self.rows:  # today's data path, cache folder and device (the checkpoint may have moved)
            row.config = (
                self.member_configs[row.member] if row.branch is None else self.branch_configs[row.member][row.branch]
            )
        self.active = list(payload["active"])
        self.parked = list(payload["parked"])
        self.optimizer_state = payload["optimizer"]
        epoch = self.phases[payload["phase"]].epoch(int(payload["phase_epoch"]))
        for row in self.rows:
            row.marks["resumed_from_epoch"] = epoch
        self.earlier = {int(m): list(results) for m, results in payload["earlier"].items()}
        self.elapsed_before = float(payload["elapsed_s"])
        self.cursor = Cursor(payload["phase"], int(payload["phase_epoch"]))


# --- memory ---------------------------------------------------------------------------------


def available_memory(device: torch.device) -> int:
    """Bytes free for a cohort on ``device``: CUDA's free memory, or the host's MemAvailable (Linux)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def member_memory(config: TrialConfig, data: DatasetSplits) -> int:
    """Estimated bytes one member adds to a cohort's peak: weights and their copies, activations of a batch.

    Weights: the store, the working slice, its gradient, the effective (masked) copy, the mask and
    the optimizer state (2 tensors for Adam, 1 for SGD).  Activations: every module's output for
    ``batch_size`` samples, kept for the backward and matched by its gradient, plus the member's
    own gathered batch; measured with forward hooks on one sample.  An estimate, not a bound:
    ``plan_cohort`` keeps a quarter of the free memory in reserve.
    """
    model = build_model(config.model, data.input_shape, data.num_classes)
    weights = sum(p.numel() for p in model.parameters())
    outputs: list[int] = []
    handles = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out.numel())) for m in model.modules()]
    try:
        with torch.no_grad():
            model(torch.zeros((1, *data.input_shape)))
    finally:
        for handle in handles:
            handle.remove()
    states = 2 if config.optimizer == "adam" else 1
    sample = math.prod(data.input_shape)
    activations = (2 * sum(outputs) + sample) * config.batch_size
    return 4 * (weights * (4 + states) + activations) + weights


def plan_cohort(
    configs: Sequence[TrialConfig], data: DatasetSplits, free_bytes: int | None = None, rows_per_member: int = 1
) -> list[list[int]]:
    """The chunks (member indices) a cohort trains in: all at once when they fit three quarters of the free
    memory, else the most that fit, one chunk after the other.  ConfigError when one member alone does not fit.

    ``rows_per_member``: the stack rows a member becomes (its branches, after the branch point).
    """
    free = available_memory(data.train_x.device) if free_bytes is None else free_bytes
    per_member = member_memory(configs[0], data) * rows_per_member
    fits = int(0.75 * free) // per_member
    if fits < 1:
        raise ConfigError(
            f"one cohort member of {configs[0].model} at batch_size {configs[0].batch_size} needs about "
            f"{per_member / 2**20:.0f} MiB; {data.train_x.device} has {free / 2**20:.0f} MiB free"
        )
    indices = list(range(len(configs)))
    return [indices[start : start + fits] for start in range(0, len(indices), fits)]


# --- the entry points -----------------------------------------------------------------------


def run_cohort(
    configs: Sequence[TrialConfig | dict[str, Any]],
    report: CohortReportFn | None = None,
    resume_from: str | os.PathLike | None = None,
    model_paths: Sequence[str | os.PathLike | None] | None = None,
    stop: StopFn | None = None,
    free_bytes: int | None = None,
    on_end: Callable[[int, TrialResult], None] | None = None,
) -> list[TrialResult]:
    """Train ``configs`` as one cohort (or, when memory says so, as consecutive chunks); a result per member, in order.

    ``report(member, metrics, state)`` is called for every member's every epoch (``state.save``
    checkpoints the cohort for ``resume_from``); ``stop(member, metrics)`` may rank a member out
    after a regularized epoch; ``model_paths[member]`` is where an ok member's model is saved.
    ``on_end(member, result)`` is called as soon as a member's result is final (a member that
    diverges or is ranked out ends before its cohort does).  ``free_bytes`` overrides the memory
    the planner sees (tests).  Bad settings or a mixed cohort raise ``ConfigError``; bad data
    raises ``DataError``.
    """
    paths = list(model_paths) if model_paths else None
    results = run_cohort_branches(
        configs,
        None,
        report,
        resume_from,
        (lambda member, _branch: paths[member]) if paths else None,
        stop,
        free_bytes,
        (lambda member, _branch, result: on_end(member, result)) if on_end is not None else None,
    )
    return [member[0] for member in results]


def run_cohort_branches(
    configs: Sequence[TrialConfig | dict[str, Any]],
    branches: Sequence[Sequence[dict[str, Any]]] | None,
    report: CohortReportFn | None = None,
    resume_from: str | os.PathLike | None = None,
    model_path: ModelPath | None = None,
    stop: StopFn | None = None,
    free_bytes: int | None = None,
    on_end: EndFn | None = None,
    choose: ChooseFn | None = None,
    grid: Sequence[float] = (),
    chosen_per_member: int = 0,
    refine_under: Sequence[float] = (),
) -> list[list[TrialResult]]:
    """A cohort whose members each branch at the branch point: member i's results, one per ``branches[i]``.

    ``branches[i]`` lists member i's branches as ``BRANCH_SETTINGS`` over its config (as
    ``trainables.branching.run_branches`` takes them; ``{}`` is the member's own settings).  Each
    branch's result is the one ``run_trial({**configs[i], **branch})`` returns, but for timings;
    reports carry ``branch`` = ``"shared"`` before the branch point, the branch's index after.
    ``branches=None``: no branching (one result per member, reports without ``branch``), unless
    ``choose`` is given: then at the branch point ``choose(member, points)`` — the member's
    prune-now front over the thresholds of ``grid`` (``ProxyPoint``s, as ``branching.ProxyChoice``
    sees them), plus a point refined right under each nonzero fraction of ``refine_under`` — returns
    more branches (at most ``chosen_per_member``, for the memory plan),
    trained after the given ones; their pre-prune histories hold NaN sparsity (not tracked).
    ``model_path(member, branch)``: where each ok branch's model goes.  See ``run_cohort``.
    """
    configs = [c if isinstance(c, TrialConfig) else TrialConfig.from_dict(c) for c in configs]
    for config in configs:
        config.validate()
    check_cohort(configs)
    if branches is not None:
        if len(branches) != len(configs):
            raise ConfigError(f"branches: {len(branches)} lists for {len(configs)} members")
        for member_branches in branches:
            if not member_branches:
                raise ConfigError("branches: every member needs at least one branch")
            for branch in member_branches:
                unknown = sorted(set(branch) - set(BRANCH_SETTINGS))
                if unknown:
                    raise ConfigError(f"branches may set only {', '.join(BRANCH_SETTINGS)}; got {', '.join(unknown)}")
        check_cohort([TrialConfig.from_dict({**c.to_dict(), **b}) for c, bs in zip(configs, branches) for b in bs])
    first = configs[0]
    device = resolve_device(first.device)
    if first.num_threads:
        torch.set_num_threads(first.num_threads)
    data = load_dataset(
        first.dataset, first.data_dir, val_fraction=first.val_fraction, split_seed=first.split_seed, device=device
    )
    member_branches = list(branches) if branches is not None else [[{}] for _ in configs]
    payload = _cohort_checkpoint(resume_from, configs, member_branches) if resume_from else None
    done: dict[int, list[TrialResult]] = {}
    chunks: list[list[int]] = []
    if payload is not None:
        done = {int(m): [TrialResult.from_dict(r) for r in rs] for m, rs in payload["earlier"].items()}
        chunks.append(sorted(int(m) for m in payload["members"]))
    pending = [i for i in range(len(configs)) if i not in done and i not in (chunks[0] if chunks else [])]
    if pending:
        rows = max(len(member_branches[i]) for i in pending) + chosen_per_member
        planned = plan_cohort([configs[i] for i in pending], data, free_bytes, rows)
        chunks += [[pending[position] for position in chunk] for chunk in planned]
    for chunk in chunks:
        cohort = Cohort(
            [configs[i] for i in chunk],
            data,
            report,
            stop,
            indices=chunk,
            branches=[member_branches[i] for i in chunk] if branches is not None else None,
            on_end=on_end,
            choose=choose,
            grid=grid,
            refine_under=refine_under,
        )
        if payload is not None and sorted(int(m) for m in payload["members"]) == chunk:
            cohort.restore(payload)
        cohort.earlier = {m: [r.to_dict() for r in rs] for m, rs in done.items()}
        cohort.dense()
        cohort.train_phase(TRAIN)
        cohort.prune()
        cohort.train_phase(FINETUNE)
        cohort.finish(model_path)
        done.update(cohort.results())
    return [done[i] for i in range(len(configs))]


def _branch_part(config: dict[str, Any]) -> dict[str, Any]:
    return {key: config[key] for key in BRANCH_SETTINGS if key in config}


def _cohort_checkpoint(
    path: str | os.PathLike, configs: Sequence[TrialConfig], branches: Sequence[Sequence[dict[str, Any]]]
) -> dict[str, Any]:
    """A cohort checkpoint, refused in one line unless it was written for these members and branches."""
    payload = load_checkpoint(path)
    if payload.get("format") != COHORT_FORMAT:
        raise ConfigError(f"{path}: not a cohort checkpoint (format {payload.get('format')!r})")
    for member, stored in payload["members"].items():
        member = int(member)
        expected = (
            [TrialConfig.from_dict({**configs[member].to_dict(), **b}) for b in branches[member]]
            if member < len(configs)
            else []
        )
        saved = [TrialConfig.from_dict(c) for c in stored]  # a chooser may have added branches after these
        if len(expected) > len(saved) or not all(same_computation(a, b) for a, b in zip(expected, saved)):
            raise ConfigError(f"{path}: a checkpoint of other configurations than this cohort's")
    return payload
