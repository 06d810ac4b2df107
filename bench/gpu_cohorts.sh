#!/usr/bin/env bash
# The GPU half of bench/bench_cohorts.py (issue 15): one GPU, torch alone (no Ray, Optuna or MLflow).
#
# MNIST must be inside the tree the GPU machine receives.  On the dev machine:
#     mkdir -p data && cp -r ../shared/data/mnist data/      # data/ is ignored by git
# then run this script there with `data/mnist` carried (device tool: carry ["data/mnist"]).
# LeNet-300-100 and LeNet-5, cohorts of K = 16, 64, 256 against the better of 1 and 8 trial
# processes sharing the GPU (16 trials each: their rate), MNIST 1 + 1 epochs at batch 64.
# Writes cohorts_gpu_<model>.{md,json} and gpu.txt to $OUT (or here).  About 4 minutes on an H100.
# DEVICE, MODELS, SIZES, PROCESSES, SEPARATE override the defaults (a dry run on CPU:
# DEVICE=cpu MODELS=lenet300_100 SIZES=2 PROCESSES=1,2 SEPARATE=2 bash bench/gpu_cohorts.sh).
set -euo pipefail
out=${OUT:-.}
python - <<'PY' | tee "$out/gpu.txt"
import torch
gpu = torch.cuda.is_available()
name = torch.cuda.get_device_name(0) if gpu else "no GPU"
memory = f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB" if gpu else ""
print(torch.__version__, name, memory)
PY
for model in ${MODELS:-lenet300_100 lenet5}; do
    timeout "${BENCH_TIMEOUT:-200}" python bench/bench_cohorts.py --device "${DEVICE:-cuda}" --dataset mnist \
        --data-dir data/mnist --models "$model" --processes "${PROCESSES:-1,8}" --sizes "${SIZES:-16,64,256}" \
        --separate-trials "${SEPARATE:-16}" --threads 4 \
        --epochs 1 --finetune-epochs 1 --repeats 1 --json-out "$out/cohorts_gpu_$model.json" \
        | tee "$out/cohorts_gpu_$model.md"
done
