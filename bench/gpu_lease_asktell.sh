#!/usr/bin/env bash
# A spec's sweep on a lent GPU machine in ONE time-boxed call: the ask/tell driver (no Ray, no
# MLflow) trains the spec's cohort at the longest schedule that fits the call, and the results come
# back as a few files under $OUT that `hoyersweep import` turns into a sweep here.
#
#   1. installs the carried wheels (Optuna, pydantic and their needs) into /tmp/site;
#   2. probes: the spec's cohort for PROBE_EPOCHS (pretrain,regularized,fine-tune) epochs, models not
#      saved, to measure how long a stacked epoch of each phase takes on this machine;
#   3. sizes the schedule (bench/fit_schedule.py): the spec's epochs if they fit the time left, else
#      regularized and fine-tune epochs cut in the spec's proportion;
#   4. runs the sweep at that schedule (the spec's num_samples, cohort and branching);
#   5. packs the folder for the trip back: asktell.tar.gz (ledger, results, study, spec; no
#      checkpoints), models.tar.gz.partNN (15 MB pieces), probe.tar.gz, fit.json, lease.log, gpu.txt.
#
# Prepared here (README, "Without Ray (GPU machine)"): wheels/ and data/<dataset>, both git-ignored
# and carried. Back here:
#   mkdir -p /tmp/lease && tar xzf asktell.tar.gz -C /tmp/lease && cat models.tar.gz.part* | tar xz -C /tmp/lease
#   hoyersweep import /tmp/lease/asktell --storage /tmp/repro
#
# Settings (environment):
#   SPEC           the sweep spec (default sweeps/mnist_lenet5_paper.yaml)
#   DATA_DIR       the dataset's IDX gz files (default data/mnist)
#   CALL_S         seconds this whole script may take (default 570: a 600 s call with room to spare)
#   PACK_S         seconds kept back for packing (default 25)
#   PROBE_EPOCHS   the probe's pretrain,regularized,fine-tune epochs (default 1,3,2)
#   EXTRA_SET      more spec overrides for both runs, space-separated key=value
#   DEVICE         cuda (default); cpu for a dry run of this script
#   WORK           where the folders are trained (default /tmp/lease; only the packed files go to OUT)
#   SKIP_INSTALL=1 the interpreter already has optuna and pydantic (a dry run here)
set -uo pipefail
started=$(date +%s)
OUT=${OUT:-results/gpu_lease}
SPEC=${SPEC:-sweeps/mnist_lenet5_paper.yaml}
DATA_DIR=${DATA_DIR:-data/mnist}
CALL_S=${CALL_S:-570}
PACK_S=${PACK_S:-25}
PROBE_EPOCHS=${PROBE_EPOCHS:-1,3,2}
DEVICE=${DEVICE:-cuda}
WORK=${WORK:-/tmp/lease}
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$WORK"
log="$OUT/lease.log"
say() { echo "[lease +$(( $(date +%s) - started ))s] $*" | tee -a "$log"; }
export PYTHONUNBUFFERED=1

if [ "${SKIP_INSTALL:-0}" != 1 ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site wheels/*.whl \
    >>"$log" 2>&1 || { say "installing the wheels failed"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
"$PY" - <<'EOF' 2>&1 | tee "$OUT/gpu.txt" | tee -a "$log"
import optuna, pydantic, torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
print(f"torch {torch.__version__} ({gpu}), optuna {optuna.__version__}, pydantic {pydantic.__version__}")
EOF

IFS=, read -r probe_pre probe_reg probe_ft <<<"$PROBE_EPOCHS"
target=$("$PY" -c "
import sys, yaml
t = yaml.safe_load(open(sys.argv[1]))['trial']
print(f\"{t['pretrain_epochs']},{t['epochs']},{t['finetune_epochs']}\")" "$SPEC")
# shellcheck disable=SC2206 # EXTRA_SET is a space-separated list on purpose
extra=(${EXTRA_SET:-})
common=(--data-dir "$DATA_DIR" --device "$DEVICE")

say "probe: $SPEC at $PROBE_EPOCHS epochs (the spec's: $target)"
probe_started=$(date +%s)
"$PY" -m sweeps.asktell "$SPEC" --out "$WORK/probe" "${common[@]}" --quiet --set \
  "trial.pretrain_epochs=$probe_pre" "trial.epochs=$probe_reg" "trial.finetune_epochs=$probe_ft" \
  models=none checkpoint_interval_s=1e9 "${extra[@]}" >>"$log" 2>&1 || { say "the probe failed"; tail -20 "$log"; exit 1; }
probe_wall=$(( $(date +%s) - probe_started ))
tar czf "$OUT/probe.tar.gz" -C "$WORK" --exclude=probe/pretrain_cache probe

left=$(( started + CALL_S - PACK_S - $(date +%s) ))
say "probe took ${probe_wall} s; ${left} s left for the sweep"
sizes=$("$PY" bench/fit_schedule.py "$WORK/probe" --probe-wall-s "$probe_wall" --probe-epochs "$PROBE_EPOCHS" \
  --target-epochs "$target" --seconds "$left" --json-out "$OUT/fit.json" 2>>"$log") || { say "no schedule fits"; exit 1; }
eval "$sizes"
say "sweep: $PRETRAIN_EPOCHS + $EPOCHS + $FINETUNE_EPOCHS epochs ($(tr -d '\n ' <"$OUT/fit.json" | cut -c1-300))"

timeout -s INT -k 10 "$left" "$PY" -m sweeps.asktell "$SPEC" --out "$WORK/asktell" "${common[@]}" --set \
  "trial.pretrain_epochs=$PRETRAIN_EPOCHS" "trial.epochs=$EPOCHS" "trial.finetune_epochs=$FINETUNE_EPOCHS" \
  checkpoint_interval_s=1e9 "${extra[@]}" >>"$log" 2>&1
status=$?
say "sweep ended (exit $status); $(wc -l <"$WORK/asktell/results.jsonl" 2>/dev/null || echo 0) result(s)"

tar czf "$OUT/asktell.tar.gz" -C "$WORK" --exclude=asktell/models --exclude=asktell/checkpoints \
  --exclude=asktell/pretrain_cache asktell
if [ -d "$WORK/asktell/models" ]; then  # in pieces under the 16 MiB a returned file may have
  tar czf "$WORK/models.tar.gz" -C "$WORK" asktell/models && split -b 15M -d "$WORK/models.tar.gz" "$OUT/models.tar.gz.part"
fi
say "packed: $(cd "$OUT" && ls -l --block-size=K | tail -n +2 | awk '{print $NF" "$5}' | tr '\n' ' ')"
exit "$status"
