#!/usr/bin/env bash
# The GPU check: everything this repository wants to know the first time it sees a CUDA device,
# in one command that finishes within 8 minutes on an H100-class GPU:
#
#   1. the CUDA-only tests (pytest -m cuda);
#   2. the pseudo-label step per image on CPU and GPU, and whether the GPU's labels are the
#      CPU's (benchmarks/gpu_labels_match.py): at the pseudo-label benchmark's setting (8 images,
#      input 512², masks 128²) and with masks at the 512² input resolution;
#   3. one training step of the paper's network (ResNet-50, 512², batch 2) in fp32 and bf16:
#      step time, peak memory, pseudo-label share (benchmarks/train_step.py);
#   4. 200 iterations of `python -m ray_jobs.train --gpu` (DDP over nccl) on synthetic 512²
#      images at the paper's network size (experiments/base.yaml; random initialisation, since a
#      GPU machine may have no network to fetch ImageNet weights);
#   5. a markdown table of every part: part | device | status | seconds | key numbers.
#
# Without CUDA the same script runs in a minute or so: the CUDA parts are listed as
# "skipped: no CUDA" and the CPU sides still run for real (the CPU half of the label comparison,
# the CPU pseudo-label timing at the benchmark setting, a tiny training step, the training
# command's config and data check, the selection of the CUDA tests), so that CI runs the script
# (tests/test_gpu_check.py) and it cannot rot between GPU loans.
#
#   bash benchmarks/gpu_check.sh
#
# Environment: OUT (folder for results.tsv and one log per part; default a new temporary
# folder), P2M_PYTHON (default .venv/bin/python, else python3), GPU_CHECK_BUDGET_S (the whole
# run's time limit, default 480: each part gets its own limit, cut to what is left).
# Exit status: 0 when every part that ran passed (skipped parts do not fail), 1 otherwise,
# 2 when the Python environment itself is broken.
# Results go to docs/BENCHMARKS.md, "GPU check".
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
if [[ -n "${P2M_PYTHON:-}" ]]; then
    PY=$P2M_PYTHON
elif [[ -x .venv/bin/python ]]; then
    PY=.venv/bin/python
else
    PY=python3
fi
# The benchmarks import this checkout's packages, whatever the environment has installed.
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export RAY_AUTH_MODE=disabled  # an in-process Ray without token auth (see tests/conftest.py)
# Waiting OpenMP threads sleep instead of spinning: on cores shared with other work, spinning
# threads made a tiny training step 50x slower (docs/BENCHMARKS.md, "OpenMP threads on busy
# cores"). An explicit value in the environment wins.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
unset RAY_ADDRESS  # this machine's GPU, in an in-process Ray, not a cluster the shell points at
OUT_DIR=${OUT:-$(mktemp -d -t p2m-gpu-check.XXXXXX)}
mkdir -p "$OUT_DIR/logs"
RESULTS=$OUT_DIR/results.tsv
printf 'part\tdevice\tstatus\tseconds\tnumbers\n' >"$RESULTS"
BUDGET=${GPU_CHECK_BUDGET_S:-480}
DEADLINE=$((SECONDS + BUDGET))
PART_NO=0

if ! CUDA_INFO=$("$PY" -c 'import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else "")' 2>&1); then
    echo "error: $PY cannot import torch: $CUDA_INFO" >&2
    exit 2
fi
CUDA_INFO=$(tail -n 1 <<<"$CUDA_INFO")
if [[ -n "$CUDA_INFO" ]]; then HAVE_CUDA=1; else HAVE_CUDA=0; fi
NO_CUDA="skipped: no CUDA"

# record PART DEVICE STATUS SECONDS NUMBERS: one row of the results file.
record() {
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >>"$RESULTS"
}

# run_part PART DEVICE LIMIT_S OK_STATUS PARSER COMMAND...: runs COMMAND under its own time
# limit (cut to what the whole run has left), its output in a log of its own. A command that
# prints "RESULT<TAB>device<TAB>status<TAB>numbers" lines gives one row per line; otherwise
# PARSER (a function reading the log) gives the numbers of one row, whose status is OK_STATUS
# on success. `timeout` signals the command's whole process group, Ray's processes included.
run_part() {
    local part=$1 device=$2 limit=$3 ok_status=$4 parser=$5
    shift 5
    PART_NO=$((PART_NO + 1))
    local log
    log=$OUT_DIR/logs/$(printf '%02d' "$PART_NO")-$(tr -cs 'A-Za-z0-9' '-' <<<"$part" | sed 's/-*$//').log
    local left=$((DEADLINE - SECONDS))
    if ((left < 5)); then
        record "$part" "$device" "failed: no time left" 0 "the whole check's ${BUDGET} s were spent"
        return
    fi
    ((limit > left)) && limit=$left
    echo "[gpu-check] $part ($device, at most ${limit} s) ..." >&2
    local start=$SECONDS rc=0
    timeout --kill-after=15 "$limit" "$@" >"$log" 2>&1 || rc=$?
    local took=$((SECONDS - start))
    if grep -q $'^RESULT\t' "$log"; then
        local _ dev status numbers
        while IFS=$'\t' read -r _ dev status numbers; do
            if ((rc != 0)) && [[ $status == ok ]] && [[ $dev == "$device" ]]; then status="failed (exit $rc)"; fi
            # a row the command only reports as skipped took none of its time
            if [[ $status == skipped* ]]; then record "$part" "$dev" "$status" - "$numbers"; else record "$part" "$dev" "$status" "$took" "$numbers"; fi
        done < <(grep $'^RESULT\t' "$log")
        if ((rc != 0)) && ! grep -q $'^RESULT\t[^\t]*\tfailed' "$log"; then
            record "$part" "$device" "failed (exit $rc)" "$took" "see $log"
        fi
    elif ((rc == 124 || rc == 137)); then
        record "$part" "$device" "failed: timed out after ${limit} s" "$took" "see $log"
    elif ((rc != 0)); then
        record "$part" "$device" "failed (exit $rc)" "$took" "$(tail -n 1 "$log" | cut -c1-160)"
    else
        record "$part" "$device" "$ok_status" "$took" "$($parser "$log")"
    fi
}

# Parsers: the key numbers of a part from its log.
numbers_pytest() { grep -E '[0-9]+ (passed|failed|skipped|deselected|selected)' "$1" | tail -n 1 | sed 's/=//g; s/^ *//; s/ *$//'; }
numbers_collected() {
    local n
    n=$(grep -cE '::' "$1" || true)
    echo "$n test(s) marked cuda"
}
numbers_train_step() { grep '^median step' "$1" | sed 's/^median step /step /'; }
numbers_synthetic() { grep '^wrote' "$1" | tail -n 1; }
numbers_plan() { tail -n 1 "$1"; }
numbers_ray_train() {
    local last
    last=$(grep -o 'iteration [0-9]*/[0-9]*.*' "$1" | tail -n 1 || true)
    echo "finished; last progress: ${last:-none}"
}

# The network and data of the training part: the paper's network (experiments/base.yaml keeps
# the model defaults) from random weights, batch 2 (one 512² step of this network takes about
# 0.1-0.5 s on an H100-class GPU, so 200 of them fit the part's limit with Ray's start), 16
# training images, 2 validation images scored once at the end.
TRAIN_ITERS=200
# The launcher's own checks of that config and data (ray_jobs.training.plan_training), without Ray
# or MLflow: what the CPU run does in place of the training. Arguments: --set KEY=VALUE pairs.
PLAN_CHECK='import sys
from p2m_core.config import load_config
from ray_jobs.training import plan_training
plan = plan_training(load_config("experiments/base.yaml", sys.argv[2::2]))
cfg = plan.cfg
print(f"launcher checks passed: {cfg.model.backbone}, {cfg.model.num_queries} queries, "
      f"{cfg.train.iters} iterations, config hash {plan.config_hash[:12]}")'
TRAIN_DIR=$OUT_DIR/train
train_sets() {
    local data=$1 size=$2
    printf -- '--set\n%s\n' "data.root=$data" "data.train.points=" "data.val.points=" "data.test.points=" \
        "data.train_short_side=[$size, $size]" "data.test_short_side=$size" "model.pretrained=" \
        "train.iters=$TRAIN_ITERS" "train.batch_size=2" "train.eval_every=0" "train.eval_images=2" "train.overlays=0" \
        "train.test_split=" "tracking.output_dir=$TRAIN_DIR" "tracking.tracking_uri=sqlite:///$TRAIN_DIR/mlflow.db" \
        "tracking.experiment=p2m-gpu-check"
}

# 1. CUDA-only tests. Without CUDA: only their selection, so that a marker that selects nothing fails here.
if ((HAVE_CUDA)); then
    run_part "CUDA-only tests (pytest -m cuda)" cuda 45 ok numbers_pytest \
        "$PY" -m pytest -q -m cuda -p no:cacheprovider tests
else
    run_part "CUDA-only tests (pytest -m cuda)" cuda 45 "$NO_CUDA" numbers_collected \
        "$PY" -m pytest -q --collect-only -m cuda -p no:cacheprovider tests
fi

# 2. Pseudo labels on CPU and GPU. Without CUDA: fewer repeats and images, the CPU side only.
if ((HAVE_CUDA)); then REPEATS=3 FINE_BATCH=8; else REPEATS=1 FINE_BATCH=2; fi
run_part "pseudo labels, benchmark setting (8 x 512², masks 128²)" cpu 30 ok true \
    "$PY" benchmarks/gpu_labels_match.py --mask-stride 4 --batch 8 --repeats "$REPEATS"
run_part "pseudo labels, masks at 512² ($FINE_BATCH x 512²)" cpu 60 ok true \
    "$PY" benchmarks/gpu_labels_match.py --mask-stride 1 --batch "$FINE_BATCH" --repeats "$REPEATS"

# 3. One training step. The tiny network on the CPU always (cheap; keeps the benchmark running).
run_part "train step, tiny network (4 x 128²)" cpu 20 ok numbers_train_step \
    "$PY" benchmarks/train_step.py --model tiny --steps 2 --warmup 1 --device cpu
for precision in fp32 bf16; do
    part="train step, ResNet-50 (2 x 512²), $precision"
    if ((HAVE_CUDA)); then
        amp=()
        [[ $precision == bf16 ]] && amp=(--amp --amp-dtype bfloat16)
        run_part "$part" cuda 60 ok numbers_train_step \
            "$PY" benchmarks/train_step.py --model r50 --device cuda --steps 10 --warmup 2 "${amp[@]}"
    else
        record "$part" cuda "$NO_CUDA" - ""
    fi
done

# 4. ray_jobs.train. Without CUDA: the same config and a small data set through the launcher's
# checks (no Ray), so that a renamed setting fails here and not on the next GPU.
part="ray_jobs.train --gpu, paper network, $TRAIN_ITERS iterations (2 x 512²)"
if ((HAVE_CUDA)); then
    run_part "synthetic data (16 + 2 images, 512²)" cpu 25 ok numbers_synthetic \
        "$PY" -m p2m_core.data.synthetic --out "$TRAIN_DIR/data" --num-train 16 --num-val 2 --num-test 0 --size 512 --seed 0 --quiet
    mapfile -t sets < <(train_sets "$TRAIN_DIR/data" 512)
    run_part "$part" cuda 170 ok numbers_ray_train \
        "$PY" -m ray_jobs.train experiments/base.yaml --gpu --num-workers 1 "${sets[@]}"
else
    mapfile -t sets < <(train_sets "$TRAIN_DIR/data" 64)
    run_part "ray_jobs.train config and data check (64² data, no Ray)" cpu 30 ok numbers_plan \
        bash -c '"$0" -m p2m_core.data.synthetic --out "$1" --num-train 2 --num-val 1 --num-test 0 --size 64 --seed 0 --quiet &&
                 "$0" -c "$2" "${@:3}"' "$PY" "$TRAIN_DIR/data" "$PLAN_CHECK" "${sets[@]}"
    record "$part" cuda "$NO_CUDA" - ""
fi

# 5. The summary.
echo
echo "## GPU check: ${CUDA_INFO:-no CUDA device}, $((SECONDS)) s (limit ${BUDGET} s)"
echo
echo "| part | device | status | s | key numbers |"
echo "|---|---|---|---:|---|"
tail -n +2 "$RESULTS" | awk -F'\t' '{ printf "| %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5 }'
echo
echo "results: $RESULTS; logs: $OUT_DIR/logs"
if tail -n +2 "$RESULTS" | cut -f3 | grep -q '^failed'; then
    exit 1
fi
