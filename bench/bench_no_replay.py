"""Budget waste: how many trained trials repeat a configuration that was already finished.

Three scenarios on digits, each a real sweep (local Ray, Optuna and MLflow sqlite):

- ``interrupt``: ``hoyersweep run`` in a subprocess, SIGINT (Ctrl-C) once a few trials are done,
  then ``hoyersweep resume``;
- ``warm_rerun``: the same spec run twice in one storage folder (the second warm-starts);
- ``nsga2_small``: NSGA-II with a population of 2 on a categorical space of 6 configurations and a
  budget of 12 (more than the space holds).

For each: trials trained, trained trials whose configuration had already been finished (in the
same sweep, or in the sweep a re-run warm-starts from), proposals the searcher rejected as
repeats, and whether the sweep ended early on an exhausted space.  Goal: 0 wasted.

Usage: ``python bench/bench_no_replay.py --quick`` (~2 min) or without ``--quick`` (more trials).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sweeps.searcher import config_key  # noqa: E402
from trainables.contract import DUPLICATE_ATTR, RESULTS_FILE, STATE_FILE, read_ledger  # noqa: E402

CLI_ROOT = ROOT  # the checkout whose ``hoyersweep`` runs (``--cli-root``: e.g. an older version, side by side)


def hoyersweep(*args: str) -> list[str]:
    return [sys.executable, "-m", "sweeps.cli", *args]


def trained_keys(sweep_dir: Path) -> list[str]:
    """One configuration key per trained trial (ledger rows), in the order they finished."""
    rows = read_ledger(sweep_dir / RESULTS_FILE)
    return [config_key({k[6:]: v for k, v in row.items() if k.startswith("param.")}) for row in rows]


def rejected(sweep_dir: Path) -> int:
    state = json.loads((sweep_dir / STATE_FILE).read_text())
    study = optuna.load_study(study_name=state["study_name"], storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    return sum(DUPLICATE_ATTR in t.user_attrs for t in study.trials)


def waste(keys: list[str], known: set[str]) -> int:
    """Trained trials whose configuration was known (finished) before they were trained."""
    seen, wasted = set(known), 0
    for key in keys:
        wasted += key in seen
        seen.add(key)
    return wasted


def run(args: list[str], timeout: float = 600) -> None:
    done = subprocess.run(hoyersweep(*args), capture_output=True, text=True, timeout=timeout, cwd=CLI_ROOT)
    if done.returncode not in (0, 1):
        raise SystemExit(f"hoyersweep {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")


def common(samples: int, epochs: int) -> list[str]:
    return ["--num-samples", str(samples), "--num-cpus", "2", "--set", f"trial.epochs={epochs}"]


def interrupt(workdir: Path, samples: int, epochs: int) -> dict:
    args = ["run", "sweeps/digits_quick.yaml", "--storage", str(workdir), *common(samples, epochs)]
    args += ["--set", "trial.finetune_epochs=2", "--set", "checkpoint_interval_s=0.5"]
    driver = subprocess.Popen(
        hoyersweep(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=CLI_ROOT, start_new_session=True
    )
    results = workdir / "digits_quick" / RESULTS_FILE
    deadline = time.time() + 300
    while time.time() < deadline and driver.poll() is None:
        if results.exists() and len(results.read_text().splitlines()) >= samples // 3:
            break
        time.sleep(0.2)
    driver.send_signal(signal.SIGINT)
    try:
        driver.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    before = len(read_ledger(results))
    run(["resume", str(workdir / "digits_quick"), "--num-cpus", "2"])
    sweep = workdir / "digits_quick"
    keys = trained_keys(sweep)
    return {
        "trained": len(keys),
        "wasted": waste(keys, set()),
        "rejected": rejected(sweep),
        "note": f"{before} done before Ctrl-C",
    }


def warm_rerun(workdir: Path, samples: int, epochs: int) -> dict:
    args = ["run", "sweeps/digits_quick.yaml", "--storage", str(workdir), *common(samples, epochs)]
    args += ["--set", "trial.finetune_epochs=1"]
    run(args)
    run(args)
    first, second = workdir / "digits_quick", workdir / "digits_quick-2"
    keys = trained_keys(second)
    return {
        "trained": len(keys),
        "wasted": waste(keys, set(trained_keys(first))),
        "rejected": rejected(second),
        "note": f"re-run of a {len(trained_keys(first))}-trial sweep",
    }


def nsga2_small(workdir: Path, samples: int, epochs: int) -> dict:
    spec = workdir / "small.yaml"
    spec.write_text(
        "name: small\nsearch:\n"
        "  reg: {type: categorical, choices: [hs, l1]}\n"
        "  threshold: {type: categorical, choices: [0.01, 0.03, 0.1]}\n"
        "sampler: {type: nsga2, seed: 0, population_size: 2}\n"
        f"trial: {{epochs: {epochs}, finetune_epochs: 1, batch_size: 256}}\n"
    )
    run(["run", str(spec), "--storage", str(workdir), "--num-samples", "12", "--num-cpus", "2"])
    sweep = workdir / "small"
    keys = trained_keys(sweep)
    state = json.loads((sweep / STATE_FILE).read_text())
    return {
        "trained": len(keys),
        "wasted": waste(keys, set()),
        "rejected": rejected(sweep),
        "note": f"budget 12, space 6; ended early: {bool(state.get('exhausted'))}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8 trials of 4 epochs per sweep")
    parser.add_argument(
        "--cli-root", type=Path, default=ROOT, help="checkout to run hoyersweep from (default: this one)"
    )
    args = parser.parse_args()
    global CLI_ROOT
    CLI_ROOT = args.cli_root.resolve()
    samples, epochs = (8, 4) if args.quick else (16, 8)
    rows = {}
    for name, scenario in (("interrupt", interrupt), ("warm_rerun", warm_rerun), ("nsga2_small", nsga2_small)):
        with tempfile.TemporaryDirectory() as workdir:
            began = time.perf_counter()
            rows[name] = {**scenario(Path(workdir), samples, epochs), "seconds": time.perf_counter() - began}
    print("| scenario | trained | wasted (config already finished) | fraction | rejected proposals | note |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for name, row in rows.items():
        fraction = row["wasted"] / max(row["trained"], 1)
        print(f"| {name} | {row['trained']} | {row['wasted']} | {fraction:.2f} | {row['rejected']} | {row['note']} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
