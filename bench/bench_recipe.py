"""Training-recipe ablation: single DeepHoyer trials at one (strength, threshold), one change each.

Answers "is the sweep or the recipe the limit?" for a reproduction target: every variant is the
base trial with one or two settings changed (longer pretraining, lower fine-tune learning rate,
weight decay, batch size, shift augmentation, ...), run with ``run_trial`` (torch only, no Ray)
in ``--workers`` processes of one thread each.  Dense pretraining is shared through a cache per
distinct pretraining setting.  Prints a markdown table (validation accuracy before/after
pruning and final, test accuracy, nonzero fraction) and one JSON line.  Selection remains the
sweep's job: the table only shows where the recipe caps accuracy.

Usage::

    python bench/bench_recipe.py --data-dir ../shared/data/mnist           # LeNet-300-100, ~8 min on 2 cores
    python bench/bench_recipe.py --quick                                   # digits, ~1 min
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The LeNet-300-100 MNIST point near 1.2 % nonzero from the first reproduction sweep.
MNIST_BASE: dict[str, Any] = dict(
    dataset="mnist",
    model="lenet300_100",
    reg="hs",
    strength=1.4e-4,
    threshold=0.0468,
    pretrain_epochs=10,
    epochs=30,
    finetune_epochs=10,
    optimizer="adam",
    lr=1e-3,
    batch_size=128,
    seed=0,
    val_fraction=0.1,
    augment="none",
)
VARIANTS: dict[str, dict[str, Any]] = {
    "dense (pretraining only)": {"reg": "none", "epochs": 0, "finetune_epochs": 0, "threshold": 0.0},
    "base": {},
    "finetune_lr 1e-4": {"finetune_lr": 1e-4},
    "20 fine-tune epochs at lr 3e-4": {"finetune_epochs": 20, "finetune_lr": 3e-4},
    "20 pretraining epochs": {"pretrain_epochs": 20},
    "weight_decay 1e-4": {"weight_decay": 1e-4},
    "batch 64": {"batch_size": 64},
    "batch 64, 20 pretraining epochs": {"pretrain_epochs": 20, "batch_size": 64},
    "shift augmentation, dense": {
        "augment": "shift",
        "reg": "none",
        "epochs": 0,
        "finetune_epochs": 0,
        "threshold": 0.0,
    },
    "shift augmentation": {"augment": "shift"},
    "shift augmentation, strength 2e-4": {"augment": "shift", "strength": 2e-4},
}
QUICK_BASE: dict[str, Any] = dict(
    dataset="digits",
    model="lenet300_100",
    reg="hs",
    strength=3e-4,
    threshold=0.02,
    pretrain_epochs=5,
    epochs=10,
    finetune_epochs=3,
    batch_size=64,
    seed=0,
    val_fraction=0.2,
    augment="none",
)
QUICK_VARIANTS = ("dense (pretraining only)", "base", "finetune_lr 1e-4", "weight_decay 1e-4")


def run_variant(item: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    """One trial in this (worker) process, one thread; returns the table row."""
    from trainables import TrialConfig, run_trial

    name, settings = item
    started = time.perf_counter()
    result = run_trial(TrialConfig.from_dict(settings))
    metrics = (
        "val_accuracy_before_prune",
        "val_accuracy_after_prune",
        "val_accuracy",
        "test_accuracy",
        "nonzero_frac",
    )
    return {
        "variant": name,
        "status": result.status.value,
        **{key: result.metric(key) for key in metrics},
        "wall_s": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"), help="MNIST IDX folder")
    parser.add_argument("--variants", help="comma-separated subset of the variant names (default: all)")
    parser.add_argument("--workers", type=int, default=2, help="trial processes at a time (default 2)")
    parser.add_argument("--quick", action="store_true", help="digits, four variants, ~1 min")
    args = parser.parse_args()

    base = dict(QUICK_BASE) if args.quick else {**MNIST_BASE, "data_dir": str(Path(args.data_dir).resolve())}
    names = list(QUICK_VARIANTS) if args.quick else list(VARIANTS)
    if args.variants:
        names = [n.strip() for n in args.variants.split(",")]
        unknown = sorted(set(names) - set(VARIANTS))
        if unknown:
            parser.error(f"unknown variant(s): {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    with tempfile.TemporaryDirectory() as cache:
        items = [
            (name, {**base, "num_threads": 1, "device": "cpu", "pretrain_cache_dir": cache, **VARIANTS[name]})
            for name in names
        ]
        # Variants that share a pretraining run after the first one filled the cache
        # (the cache lock serialises the rest).
        with ProcessPoolExecutor(args.workers) as pool:
            rows = list(pool.map(run_variant, items))

    print(
        f"\nRecipe ablation: {base['model']} on {base['dataset']}, "
        f"HS strength {base['strength']:g}, threshold {base['threshold']:g} "
        f"({base['pretrain_epochs']}+{base['epochs']}+{base['finetune_epochs']} epochs unless changed):\n"
    )
    print("| variant | val before prune | val after prune | val final | test | nonzero | wall |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['variant']} | {100 * r['val_accuracy_before_prune']:.2f} % "
            f"| {100 * r['val_accuracy_after_prune']:.2f} % "
            f"| {100 * r['val_accuracy']:.2f} % | {100 * r['test_accuracy']:.2f} % "
            f"| {100 * r['nonzero_frac']:.2f} % | {r['wall_s']:.0f} s |"
        )
    print(json.dumps({"base": base, "rows": rows}))


if __name__ == "__main__":
    main()
