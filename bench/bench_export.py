"""Benchmark compact export: a Group-HS LeNet-5 and an HS LeNet-300-100 trained on digits, exported.

Usage (from the repository root)::

    python bench/bench_export.py [--quick] [--repeats 20] [--format pt2|onnx] [--threads N]

Each model is trained with ``trainables.pipeline`` (dense → regularize → prune → finetune,
run phase by phase so the pruned model is at hand), then ``trainables.export.export`` compacts
it, writes the file, reloads it and checks it on the digits test split.  Latency: the dense
(masked) model, the compact module and the loaded export, interleaved inside every repeat,
median of ``--repeats``, at batch 1 and 256, in this one process.

Goal (Group-HS LeNet-5): compact ≥ 3× faster than dense at batch 256 (batch 1 on CPU is
overhead-bound: reported, not judged), the file ≥ 5× smaller than the dense model's
weights-only state_dict, identical predictions, and the file loads without this package.
Prints a markdown table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainables.export import export  # noqa: E402
from trainables.pipeline import Status, dense, finish, regularize, start_run  # noqa: E402

CASES = {
    "lenet5 group_hs": {"model": "lenet5", "reg": "group_hs", "strength": 0.1, "threshold": 0.05, "lr": 2e-3},
    "lenet300_100 hs": {"model": "lenet300_100", "reg": "hs", "strength": 1e-3, "threshold": 0.02, "lr": 2e-3},
}


def train(settings: dict, epochs: int, finetune_epochs: int) -> torch.nn.Module:
    """The pruned, fine-tuned model of one trial (phases run here, so ``run.model`` is at hand)."""
    config = {
        "dataset": "digits",
        "epochs": epochs,
        "finetune_epochs": finetune_epochs,
        "batch_size": 64,
        "device": "cpu",
        "seed": 0,
        **settings,
    }
    run = start_run(config)
    if not (dense(run) and regularize(run)) or finish(run).status != Status.OK:
        raise SystemExit(f"training diverged: {settings}")
    return run.model.eval()


def loads_clean(path: str) -> bool:
    """Whether ``torch.export.load(path).module()`` runs in a fresh interpreter that cannot import this package."""
    script = (
        "import sys, torch; m = torch.export.load(sys.argv[1]).module(); m(torch.zeros(3, 1, 8, 8)); "
        "assert 'trainables' not in sys.modules"
    )
    with tempfile.TemporaryDirectory() as cwd:
        return subprocess.run([sys.executable, "-I", "-c", script, path], cwd=cwd, capture_output=True).returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs and repeats (about a minute)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--format", default="pt2", choices=("pt2", "onnx"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    epochs, finetune_epochs = (15, 3) if args.quick else (40, 10)
    repeats = args.repeats or (20 if args.quick else 50)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, settings in CASES.items():
            model = train(settings, epochs, finetune_epochs)
            from trainables.data import load_dataset

            data = load_dataset("digits")
            path = Path(folder) / f"{settings['model']}.{args.format}"
            report = export(model, data.test_x, data.test_y, path, args.format, repeats=repeats)
            clean = loads_clean(str(path)) if args.format == "pt2" else None
            lat = report.latency_s
            rows.append(
                {
                    "case": name,
                    "params_dense": report.params_dense,
                    "params_dense_nonzero": report.params_dense_nonzero,
                    "params_compact": report.params_compact,
                    "bytes_dense_state_dict": report.bytes_dense_state_dict,
                    "bytes_file": report.bytes_file,
                    "size_ratio": report.bytes_dense_state_dict / report.bytes_file,
                    "ms_dense_1": lat["dense"]["1"] * 1e3,
                    "ms_compact_1": lat["compact"]["1"] * 1e3,
                    "ms_exported_1": lat["exported"]["1"] * 1e3,
                    "ms_dense_256": lat["dense"]["256"] * 1e3,
                    "ms_compact_256": lat["compact"]["256"] * 1e3,
                    "ms_exported_256": lat["exported"]["256"] * 1e3,
                    "speedup_256": lat["dense"]["256"] / lat["compact"]["256"],
                    "speedup_256_exported": lat["dense"]["256"] / lat["exported"]["256"],
                    "speedup_1": lat["dense"]["1"] / lat["compact"]["1"],
                    "max_abs_logit_diff": report.check["max_abs_logit_diff"],
                    "acc_dense": report.check["dense_accuracy"],
                    "acc_compact": report.check["compact_accuracy"],
                    "same_predictions": report.check["same_predictions"],
                    "loads_without_package": clean,
                    "units": {k: v for k, v in report.units.items() if k != "layers"},
                    "layers": [
                        (lay["name"], lay["shape_dense"], lay["shape_compact"]) for lay in report.units["layers"]
                    ],
                }
            )
    print(f"threads {torch.get_num_threads()}, repeats {repeats}, format {args.format} (medians, interleaved)\n")
    print("| case | params dense (nonzero) → compact | state_dict → file (×) | ms b1 dense/compact/export "
          "| ms b256 dense/compact/export | speedup b256 | max Δlogit | acc dense/compact | same preds |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['case']} | {r['params_dense']} ({r['params_dense_nonzero']}) → {r['params_compact']} "
            f"| {r['bytes_dense_state_dict']} → {r['bytes_file']} ({r['size_ratio']:.1f}×) "
            f"| {r['ms_dense_1']:.3f} / {r['ms_compact_1']:.3f} / {r['ms_exported_1']:.3f} "
            f"| {r['ms_dense_256']:.3f} / {r['ms_compact_256']:.3f} / {r['ms_exported_256']:.3f} "
            f"| {r['speedup_256']:.1f}× | {r['max_abs_logit_diff']:.2g} "
            f"| {r['acc_dense']:.4f} / {r['acc_compact']:.4f} "
            f"| {r['same_predictions']:.4f} |"
        )
    for r in rows:
        print(f"{r['case']}: {r['layers']} {r['units']}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
