#!/usr/bin/env bash
# LeNet-5 on MNIST on a GPU machine that has torch but neither Ray, Optuna nor MLflow:
# the ask/tell driver (python -m sweeps.asktell) trains cohorts on the GPU; the results come back
# under $OUT and become a sweep here with `hoyersweep import <folder>/asktell`.
#
# Prepared here (README, "Without Ray (GPU machine)"): the Optuna and pydantic wheels for the GPU
# machine's Python in wheels/ (git-ignored), the MNIST IDX gz files in data/mnist (git-ignored).
# Run there from the repository root:
#   NUM_SAMPLES=16 COHORT_SIZE=16 bash bench/gpu_asktell.sh
# Rerunning the same command continues an interrupted run (same OUT) without repeating a result.
#
# Settings (environment):
#   OUT              where results go (default: results/gpu_asktell); the folder is $OUT/asktell
#   SPEC             sweep spec (default: sweeps/mnist_lenet5.yaml)
#   DATA_DIR         MNIST IDX gz files (default: data/mnist)
#   DEVICE           cuda (default), cuda:1, cpu
#   NUM_SAMPLES      results to train (default: 16)
#   COHORT_SIZE      trials trained at once as one stack (default: 16)
#   PRETRAIN_EPOCHS  dense pretraining, shared by all trials (default: the spec's)
#   EPOCHS           regularized epochs (default: the spec's)
#   FINETUNE_EPOCHS  fine-tuning epochs after the prune (default: the spec's)
#   EXTRA_SET        more spec overrides, space-separated key=value (e.g. "trial.augment=none")
#   WHEELS           the carried wheels (default: wheels)
#   VENV             venv made with the system's site packages (torch) plus the wheels (default: .venv-asktell)
#   SKIP_INSTALL=1   use $PYTHON as it is (it already has optuna and pydantic): the CPU check of this script
#   PYTHON           the interpreter (default: python3)
set -euo pipefail

OUT=${OUT:-results/gpu_asktell}
SPEC=${SPEC:-sweeps/mnist_lenet5.yaml}
DATA_DIR=${DATA_DIR:-data/mnist}
DEVICE=${DEVICE:-cuda}
NUM_SAMPLES=${NUM_SAMPLES:-16}
COHORT_SIZE=${COHORT_SIZE:-16}
WHEELS=${WHEELS:-wheels}
VENV=${VENV:-.venv-asktell}
PYTHON=${PYTHON:-python3}

if [ "${SKIP_INSTALL:-0}" = 1 ]; then
  PY=$PYTHON
else
  # --system-site-packages: torch, numpy, pandas, PyYAML of the machine; only what is missing comes from the wheels
  "$PYTHON" -m venv --system-site-packages "$VENV"
  "$VENV/bin/python" -m pip install --quiet --no-index --find-links "$WHEELS" optuna pydantic
  PY=$VENV/bin/python
fi

"$PY" - <<'EOF'
import optuna, pydantic, torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
print(f"torch {torch.__version__} ({gpu}), optuna {optuna.__version__}, pydantic {pydantic.__version__}", flush=True)
EOF

overrides=()
[ -n "${PRETRAIN_EPOCHS:-}" ] && overrides+=("trial.pretrain_epochs=$PRETRAIN_EPOCHS")
[ -n "${EPOCHS:-}" ] && overrides+=("trial.epochs=$EPOCHS")
[ -n "${FINETUNE_EPOCHS:-}" ] && overrides+=("trial.finetune_epochs=$FINETUNE_EPOCHS")
# shellcheck disable=SC2206 # EXTRA_SET is a space-separated list on purpose
[ -n "${EXTRA_SET:-}" ] && overrides+=(${EXTRA_SET})
set_flags=()
[ ${#overrides[@]} -gt 0 ] && set_flags=(--set "${overrides[@]}")

mkdir -p "$OUT"
started=$(date +%s)
"$PY" -m sweeps.asktell "$SPEC" --out "$OUT/asktell" --data-dir "$DATA_DIR" --device "$DEVICE" \
  --cohort-size "$COHORT_SIZE" --num-samples "$NUM_SAMPLES" "${set_flags[@]}" 2>&1 | tee -a "$OUT/asktell.log"
echo "wall time $(( $(date +%s) - started )) s; import here with: hoyersweep import $OUT/asktell" | tee -a "$OUT/asktell.log"
