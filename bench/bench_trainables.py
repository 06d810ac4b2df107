"""Benchmark the trainable core: HS regularizer overhead per step, and the data path.

Usage (from the repository root)::

    python bench/bench_trainables.py [--quick] [--repeats 7] [--threads 1] [--data-dir DIR]

Three measurements, each variant interleaved with the others inside every repeat (the order
rotates from repeat to repeat) so that drift and noise from other work on the machine hit all
variants alike; every number reported is the MEDIAN over the repeats:

1. One training step of LeNet-300-100 on MNIST batches (forward, cross-entropy, backward, Adam
   step; batch 64 and 256): without a regularizer, with λ·Σ HS over the weights as
   ``trainables.regularizers.model_regularization`` computes it, and with the same HS written
   in plain autograd ops (the reference definition).  Overhead = t_hs / t_plain − 1, from the
   wall time and from the process CPU time of the same steps.  Goal: ≤ 5 %; judged on CPU time
   with one thread (the step then runs wholly in this thread, so other processes on a shared
   machine cannot inflate it), on wall time otherwise.
2. Samples/s of an epoch-style training pass: our data path (the split held whole as tensors,
   ``iterate_batches`` indexing) against a DataLoader over a per-sample Dataset written the
   usual torchvision way (uint8 28×28 image → float in [0, 1] → normalise, i.e. ToTensor +
   Normalize done by hand, since torchvision is not installed), batch 64, shuffle, with
   num_workers 0 and 2; same model/optimizer step.  Goal: ours ≥ 5× the DataLoader loop.
3. For context, samples/s of complete ``run_trial`` runs on MNIST (training + fine-tuning
   samples / ``wall_time_s``, which includes the per-epoch validation and sparsity reports).

Prints a markdown table and one JSON line.  ``--quick`` finishes in about a minute.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from trainables import data as tdata  # noqa: E402
from trainables import regularizers, run_trial  # noqa: E402
from trainables.contract import TrialResult  # noqa: E402
from trainables.models import build_model  # noqa: E402

DEFAULT_DATA_DIR = (REPO_ROOT / ".." / "shared" / "data" / "mnist").resolve()
STRENGTH = 2e-4  # the TrialConfig default λ
STEP_GOAL_PCT = 5.0
DATA_GOAL_X = 5.0
MODEL = "lenet300_100"


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def rotations(names: list[str], repeat: int) -> list[str]:
    """``names`` rotated by ``repeat``: each variant takes every position equally often."""
    k = repeat % len(names)
    return names[k:] + names[:k]


def median(values: list[float]) -> float:
    return statistics.median(values)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def make_trainer(base: torch.nn.Module, reg: Callable[[torch.nn.Module], torch.Tensor] | None):
    """A fresh copy of ``base`` with its own Adam, and its step(xb, yb) exactly as ``train_epoch`` does it."""
    model = copy.deepcopy(base)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(xb: torch.Tensor, yb: torch.Tensor) -> None:
        loss = F.cross_entropy(model(xb), yb)
        if reg is not None:
            loss = loss + STRENGTH * reg(model)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def hs_library(model: torch.nn.Module) -> torch.Tensor:
    return regularizers.model_regularization(model, "hs")


def hs_reference(model: torch.nn.Module) -> torch.Tensor:
    """The same Σ HS written in plain autograd ops (the definition; what the library did before)."""
    total = None
    for _, module, name in regularizers.prunable_weights(model):
        value = regularizers._hoyer_square_reference(getattr(module, name))
        total = value if total is None else total + value
    return total


# --------------------------------------------------------------------------------------------
# 1. one training step, with and without HS
# --------------------------------------------------------------------------------------------

STEP_VARIANTS = {"plain": None, "hs": hs_library, "hs_autograd_ref": hs_reference}


def bench_step(
    data: tdata.DatasetSplits, batch_size: int, steps: int, warmup: int, repeats: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and process-CPU seconds per step, one list per variant (one entry per repeat)."""
    torch.manual_seed(0)
    base = build_model(MODEL, data.input_shape, data.num_classes)
    trainers = {name: make_trainer(base, reg) for name, reg in STEP_VARIANTS.items()}
    generator = torch.Generator().manual_seed(0)
    pool = list(iterate_batches_n(data, batch_size, 16, generator))  # real MNIST batches, cycled
    for name in STEP_VARIANTS:  # warm-up (allocator, Adam state, lazy init)
        for i in range(warmup):
            trainers[name](*pool[i % len(pool)])
    times: dict[str, list[float]] = {name: [] for name in STEP_VARIANTS}
    cpu: dict[str, list[float]] = {name: [] for name in STEP_VARIANTS}
    for repeat in range(repeats):
        for name in rotations(list(STEP_VARIANTS), repeat):
            step = trainers[name]
            start, start_cpu = time.perf_counter(), time.process_time()
            for i in range(steps):
                step(*pool[i % len(pool)])
            times[name].append((time.perf_counter() - start) / steps)
            cpu[name].append((time.process_time() - start_cpu) / steps)
    return times, cpu


def iterate_batches_n(data: tdata.DatasetSplits, batch_size: int, count: int, generator: torch.Generator):
    for i, batch in enumerate(tdata.iterate_batches(data.train_x, data.train_y, batch_size, generator=generator)):
        if i == count:
            return
        if batch[0].shape[0] == batch_size:
            yield batch


# --------------------------------------------------------------------------------------------
# 2. data path: whole tensors + iterate_batches vs a per-sample DataLoader
# --------------------------------------------------------------------------------------------


class PerSampleMNIST(torch.utils.data.Dataset):
    """MNIST the usual torchvision way: uint8 28×28 numpy images, ToTensor + Normalize per sample."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean: float, std: float) -> None:
        self.images = images  # (N, 28, 28) uint8
        self.labels = labels  # (N,) int64
        self.mean = (mean,)
        self.std = (std,)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self.images[index]
        # ToTensor: HxW uint8 -> 1xHxW float in [0, 1]
        x = torch.from_numpy(img[:, :, None]).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
        # Normalize: (x - mean) / std per channel
        mean = torch.as_tensor(self.mean, dtype=x.dtype)
        std = torch.as_tensor(self.std, dtype=x.dtype)
        x = x.sub_(mean[:, None, None]).div_(std[:, None, None])
        return x, int(self.labels[index])


def raw_train_split(data_dir: Path, n: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    """The uint8 images/labels of the same training split ``load_dataset`` builds, first ``n``."""
    images = tdata.read_idx(data_dir / "train-images-idx3-ubyte.gz", expected_magic=tdata.IDX_IMAGES_MAGIC)
    labels = tdata.read_idx(data_dir / "train-labels-idx1-ubyte.gz", expected_magic=tdata.IDX_LABELS_MAGIC)
    train_idx, _ = tdata._val_split(len(labels), 0.1, 0)  # load_dataset's defaults
    images, labels = images[train_idx], labels[train_idx].astype(np.int64)
    scaled = images.astype(np.float64) / 255.0
    mean, std = float(scaled.mean()), float(scaled.std())
    return np.ascontiguousarray(images[:n]), np.ascontiguousarray(labels[:n]), mean, std


def bench_data(
    data: tdata.DatasetSplits, data_dir: Path, n: int, repeats: int, batch_size: int = 64
) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Samples/s of one pass over ``n`` training samples, per variant (one entry per repeat)."""
    x, y = data.train_x[:n], data.train_y[:n]
    images, labels, mean, std = raw_train_split(data_dir, n)
    dataset = PerSampleMNIST(images, labels, mean, std)
    torch.manual_seed(0)
    base = build_model(MODEL, data.input_shape, data.num_classes)

    def ours(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return tdata.iterate_batches(x, y, batch_size, generator=torch.Generator().manual_seed(epoch))

    def loader(workers: int) -> Callable[[int], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
        def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            torch.manual_seed(epoch)  # DataLoader's shuffle draws from the global generator
            return iter(torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers))

        return batches

    sources = {"ours": ours, "dataloader_w0": loader(0), "dataloader_w2": loader(2)}
    skipped: dict[str, str] = {}
    for name in list(sources):  # drop a loader that does not work here (e.g. no fork / shared memory)
        try:
            next(sources[name](0))
        except Exception as error:
            skipped[name] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            del sources[name]
    trainers = {name: make_trainer(base, None) for name in sources}
    warm_x, warm_y = x[:640], y[:640]
    for step in trainers.values():  # warm-up of every model copy
        for xb, yb in tdata.iterate_batches(warm_x, warm_y, batch_size, shuffle=False):
            step(xb, yb)

    def with_step(name: str) -> Callable[[int], None]:
        def run(epoch: int) -> None:
            step = trainers[name]
            for xb, yb in sources[name](epoch):
                step(xb, yb)

        return run

    def data_only(name: str) -> Callable[[int], None]:
        def run(epoch: int) -> None:
            for _ in sources[name](epoch):
                pass

        return run

    variants = {name: with_step(name) for name in sources}
    variants.update({f"{name}_data_only": data_only(name) for name in sources})
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for repeat in range(repeats):
        for name in rotations(list(variants), repeat):
            start = time.perf_counter()
            variants[name](repeat)
            rates[name].append(n / (time.perf_counter() - start))
    return rates, skipped


# --------------------------------------------------------------------------------------------
# 3. whole trials
# --------------------------------------------------------------------------------------------


def bench_trial(
    data_dir: Path, epochs: int, finetune_epochs: int, threads: int, repeats: int, n_train: int
) -> tuple[list[float], list[TrialResult]]:
    rates, results = [], []
    for _ in range(repeats):
        result = run_trial(
            dict(
                dataset="mnist",
                data_dir=str(data_dir),
                model=MODEL,
                reg="hs",
                epochs=epochs,
                finetune_epochs=finetune_epochs,
                batch_size=64,
                device="cpu",
                num_threads=threads,
            )
        )
        rates.append((epochs + finetune_epochs) * n_train / result.wall_time_s)
        results.append(result)
    return rates, results


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer steps, a 12 800-sample pass, one short trial (~1 min)"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=DEFAULT_DATA_DIR, help=f"MNIST IDX files (default {DEFAULT_DATA_DIR})"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="repeats of the epoch passes (default 7, quick 5); the step timing uses 3x as many",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch.set_num_threads (default 1: one Ray trial per core)"
    )
    parser.add_argument(
        "--trial-epochs", type=int, default=None, help="HS epochs of each run_trial (default 3, quick 1)"
    )
    args = parser.parse_args(argv)

    quick = args.quick
    repeats = args.repeats or (5 if quick else 7)
    steps, warmup = (30, 30) if quick else (100, 60)
    step_repeats = 3 * repeats  # short, many, interleaved: drift and noise average out
    data_n = 12_800 if quick else None
    trial_epochs = args.trial_epochs if args.trial_epochs is not None else (1 if quick else 3)
    trial_finetune = 1
    trial_repeats = 1 if quick else 3

    torch.set_num_threads(args.threads)
    data_dir = args.data_dir.resolve()
    data = tdata.load_dataset("mnist", data_dir)
    n_train = data.sizes["train"]
    data_n = data_n or n_train

    t0 = time.perf_counter()
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    step_wall, step_cpu = {}, {}
    for bs in (64, 256):
        step_wall[bs], step_cpu[bs] = bench_step(data, bs, steps, warmup, step_repeats)
    data_rates, skipped = bench_data(data, data_dir, data_n, repeats)
    trial_rates, trial_results = bench_trial(
        data_dir, trial_epochs, trial_finetune, args.threads, trial_repeats, n_train
    )
    torch.set_num_threads(args.threads)  # run_trial set it too; keep the statement true
    elapsed = time.perf_counter() - t0
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    # ---- summary numbers -------------------------------------------------------------------
    def ms(times: dict[str, list[float]]) -> dict[str, float]:
        return {k: median(v) * 1e3 for k, v in times.items()}

    def pct(a: float, b: float) -> float:
        return (a / b - 1) * 100

    step_ms = {bs: ms(t) for bs, t in step_wall.items()}
    cpu_ms = {bs: ms(t) for bs, t in step_cpu.items()}
    overhead = {bs: {k: pct(m[k], m["plain"]) for k in ("hs", "hs_autograd_ref")} for bs, m in step_ms.items()}
    cpu_overhead = {bs: {k: pct(m[k], m["plain"]) for k in ("hs", "hs_autograd_ref")} for bs, m in cpu_ms.items()}
    paired = {  # median of the per-repeat ratios: a check that drift did not bias the ratio of medians
        bs: pct(median([h / p for h, p in zip(t["hs"], t["plain"])]), 1.0) for bs, t in step_wall.items()
    }
    rate = {k: median(v) for k, v in data_rates.items()}
    loaders = [k for k in ("dataloader_w0", "dataloader_w2") if k in rate]
    speedup = {k: rate["ours"] / rate[k] for k in loaders}
    speedup_data_only = {k: rate["ours_data_only"] / rate[f"{k}_data_only"] for k in loaders}
    trial_rate = median(trial_rates)
    # The verdict: with one thread the whole step runs in this process's thread, so its CPU time
    # is the step's own cost, untouched by other processes' time slices on a shared machine; it is
    # also the larger (more conservative) of the two here.  With more threads, wall time.
    verdict = cpu_overhead if args.threads == 1 else overhead
    verdict_basis = "CPU time" if args.threads == 1 else "wall time"

    # ---- markdown ----------------------------------------------------------------------------
    def goal(ok: bool) -> str:
        return "met" if ok else "**missed**"

    print(
        f"torch {torch.__version__}, torch.set_num_threads({args.threads}), CPU: {cpu_model()} "
        f"({os.cpu_count()} logical CPUs), repeats={repeats} (step: {step_repeats} × {steps} steps)"
        f"{' (quick)' if quick else ''}, "
        f"load average {load0:.1f} -> {load1:.1f}, wall {elapsed:.0f} s\n"
    )
    print("| measurement | median | ratio | goal |")
    print("|---|---:|---|---|")
    for bs in (64, 256):
        m = step_ms[bs]
        print(f"| step, batch {bs}, no regularizer | {m['plain']:.3f} ms | 1 | |")
        print(
            f"| step, batch {bs}, + λ·ΣHS (library) | {m['hs']:.3f} ms | {overhead[bs]['hs']:+.1f} % "
            f"(paired {paired[bs]:+.1f} %, CPU time {cpu_overhead[bs]['hs']:+.1f} %) | "
            f"≤ {STEP_GOAL_PCT:g} % ({verdict_basis}): {goal(verdict[bs]['hs'] <= STEP_GOAL_PCT)} |"
        )
        print(
            f"| step, batch {bs}, + λ·ΣHS (plain-autograd reference) | {m['hs_autograd_ref']:.3f} ms | "
            f"{overhead[bs]['hs_autograd_ref']:+.1f} % (CPU time {cpu_overhead[bs]['hs_autograd_ref']:+.1f} %) | |"
        )
    print(
        f"| epoch pass + step, ours (tensors + iterate_batches), {data_n} samples "
        f"| {rate['ours']:,.0f} samples/s | 1 | |"
    )
    for k in ("dataloader_w0", "dataloader_w2"):
        label = f"epoch pass + step, per-sample Dataset + DataLoader(num_workers={k[-1]})"
        if k in rate:
            print(
                f"| {label} | {rate[k]:,.0f} samples/s | ours {speedup[k]:.2f}× | "
                f"≥ {DATA_GOAL_X:g}×: {goal(speedup[k] >= DATA_GOAL_X)} |"
            )
        else:
            print(f"| {label} | n/a ({skipped[k]}) | | |")
    print(f"| data only (no step), ours | {rate['ours_data_only']:,.0f} samples/s | 1 | |")
    for k in loaders:
        print(
            f"| data only (no step), DataLoader(num_workers={k[-1]}) | {rate[f'{k}_data_only']:,.0f} samples/s | "
            f"ours {speedup_data_only[k]:.1f}× | |"
        )
    last = trial_results[-1]
    print(
        f"| run_trial MNIST, {trial_epochs} HS + {trial_finetune} fine-tune epochs (×{trial_repeats}) | "
        f"{trial_rate:,.0f} samples/s | {median([r.wall_time_s for r in trial_results]):.1f} s wall, "
        f"test acc {last.test_accuracy:.4f}, nonzero {last.nonzero_frac:.3f} | (context) |"
    )
    print()

    summary = {
        "bench": "trainables",
        "quick": quick,
        "torch": torch.__version__,
        "threads": args.threads,
        "cpu": cpu_model(),
        "repeats": repeats,
        "step_repeats": step_repeats,
        "steps_per_repeat": steps,
        "loadavg": [round(load0, 2), round(load1, 2)],
        "step_ms": {str(bs): {k: round(v, 4) for k, v in m.items()} for bs, m in step_ms.items()},
        "step_cpu_ms": {str(bs): {k: round(v, 4) for k, v in m.items()} for bs, m in cpu_ms.items()},
        "hs_overhead_pct": {str(bs): round(o["hs"], 2) for bs, o in overhead.items()},
        "hs_overhead_paired_pct": {str(bs): round(v, 2) for bs, v in paired.items()},
        "hs_overhead_cpu_pct": {str(bs): round(o["hs"], 2) for bs, o in cpu_overhead.items()},
        "hs_autograd_ref_overhead_pct": {str(bs): round(o["hs_autograd_ref"], 2) for bs, o in overhead.items()},
        "data_samples": data_n,
        "data_samples_per_s": {k: round(v, 1) for k, v in rate.items()},
        "data_speedup": {k: round(v, 3) for k, v in speedup.items()},
        "data_only_speedup": {k: round(v, 2) for k, v in speedup_data_only.items()},
        "data_skipped": skipped,
        "trial_samples_per_s": round(trial_rate, 1),
        "trial_epochs": [trial_epochs, trial_finetune],
        "goal_step_overhead_basis": verdict_basis,
        "goal_step_overhead_met": {str(bs): o["hs"] <= STEP_GOAL_PCT for bs, o in verdict.items()},
        "goal_data_speedup_met": {k: v >= DATA_GOAL_X for k, v in speedup.items()},
        "wall_s": round(elapsed, 1),
    }
    print(json.dumps(summary, separators=(",", ":"), ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
