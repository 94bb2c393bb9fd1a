#!/usr/bin/env bash
# The whole GPU benchmark in one device call (<= 9 minutes): the seed recipe first, then the
# infer and train JOBS through the worker's context, uncapped and capped to 11.5 GiB (a
# 12 GB card less its CUDA context). Prints the tables; JSON and logs land in $OUT.
#
#   bash bench/gpu_suite.sh [jobs]    # on the device; carry .whl and .bench (see below)
#   bash bench/gpu_suite.sh family    # the seed, then bench/family.py: Qwen3-VL-4B infer + train
#   bash bench/gpu_suite.sh q7b       # the seed, then the pre-quantized Qwen2.5-VL-7B nf4, capped 12 GiB
#   bash bench/gpu_suite.sh targets   # the seed, then the issue-sized jobs: infer over 1,000
#                                     # images, train 10 epochs over 200 samples (~10 min)
#   bash bench/gpu_suite.sh video     # the seed's generate, then bench/video.py: detect on 60 s
#   bash bench/gpu_suite.sh profile   # a train and an infer job under torch.profiler (no seed)
#   bash bench/gpu_suite.sh train10   # the seed's training, then the train job over 10 epochs
#   bash bench/gpu_suite.sh --tiny    # CPU, tiny model, the same code path (timings mean nothing)
#
# The device has python 3.12, torch, transformers and peft but not bitsandbytes, pydantic,
# SQLAlchemy, celery or redis: their wheels are carried in .whl/ (bitsandbytes) and
# .bench/jobwheels/, with the seed recipe as .bench/seed_recipe.py; they are installed
# into /tmp/site, not into the system python.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
start=$SECONDS

if [[ "${1:-}" == "--tiny" ]]; then
    PY="${PY:-.venv/bin/python}"
    OMP_NUM_THREADS=1 "$PY" bench/jobs_gpu.py --tiny --runs infer:4,infer:6:cap,train:2:e2,train:3:cap \
        --budget-s 300
    exit $?
fi

PY=python3
shopt -s nullglob
wheels=(.whl/*.whl .bench/wheels/*.whl .bench/jobwheels/*.whl)
shopt -u nullglob
if ((${#wheels[@]})); then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "${wheels[@]}" || echo "WARNING: carried wheels did not install"
else
    echo "WARNING: no wheels carried (.whl, .bench/jobwheels): bitsandbytes, pydantic, ... missing"
fi
export PYTHONPATH="$PWD:/tmp/site:${PYTHONPATH:-}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"

# 1. The anchor, same machine, same call: seed QLoRA r4 training and bf16 generate at bs16
#    (the video mode compares inference only: generate alone).
seed_runs=(train_seed000_qlora_r4 infer_bf16_b16)
[[ "${1:-}" == video ]] && seed_runs=(infer_bf16_b16)
[[ "${1:-}" == train10 ]] && seed_runs=(train_seed000_qlora_r4)
if [[ "${1:-}" == profile ]]; then
    echo "profile: no seed run (nothing is compared)"
elif [[ -f .bench/seed_recipe.py ]]; then
    timeout 230 "$PY" .bench/seed_recipe.py all "${seed_runs[@]}" \
        > "$OUT/seed.log" 2>&1 || echo "seed recipe: exit $? (log: seed.log)"
    grep -h '^{' "$OUT/seed.log"
else
    echo "no .bench/seed_recipe.py carried: ratios to the seed will read '-'"
fi
echo "seed part: $((SECONDS - start)) s"

left=$((525 - (SECONDS - start)))
case "${1:-jobs}" in
video)
    timeout "$left" "$PY" bench/video.py
    echo "suite: $((SECONDS - start)) s; files in $OUT"
    exit 0 ;;
targets)
    export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-/tmp/vlmjobs-compile-cache}"
    all="$OUT"
    OUT="$all/infer1000" timeout 210 "$PY" bench/jobs_gpu.py --n 1000 --runs infer:48 \
        --seed-json "$all/seed_recipe.json" --budget-s 200
    left=$((570 - (SECONDS - start)))
    OUT="$all/train10" timeout "$left" "$PY" bench/jobs_gpu.py --n 200 --runs train:8:e10 \
        --seed-json "$all/seed_recipe.json" --budget-s $((left - 10))
    echo "suite: $((SECONDS - start)) s; files in $all"
    exit 0 ;;
train10)
    export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-/tmp/vlmjobs-compile-cache}"
    timeout "$left" "$PY" bench/jobs_gpu.py --n 200 --runs train:8:e10 \
        --seed-json "$OUT/seed_recipe.json" --budget-s $((left - 10))
    echo "suite: $((SECONDS - start)) s; files in $OUT"
    exit 0 ;;
profile)
    # One train step window in epoch 2 (vision cache warm) and one full infer batch,
    # each under torch.profiler: $OUT/*.ops.txt, the phases printed here.
    TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-/tmp/vlmjobs-compile-cache}" \
        timeout "$left" "$PY" bench/jobs_gpu.py --n 144 --runs train:8:e2:p20,infer:48:p2 \
        --seed-json "$OUT/seed_recipe.json" --budget-s $((left - 10))
    echo "suite: $((SECONDS - start)) s; files in $OUT"
    exit 0 ;;
family)
    timeout "$left" "$PY" bench/family.py --timeout 150
    echo "suite: $((SECONDS - start)) s; files in $OUT"
    exit 0 ;;
q7b)
    timeout "$left" "$PY" bench/family.py --cap-gib 12 --timeout 200 \
        --configs q7b_prepare,infer_q7b_onload_b32,infer_q7b_saved_b32,train_q7b_saved_b2
    echo "suite: $((SECONDS - start)) s; files in $OUT"
    exit 0 ;;
esac

# 2. The jobs: infer batch 48, infer batch 96 under the cap (out-of-memory recovery must end
#    192/192), train micro-batch 8, and 12 under the cap. Whatever time is left, up to 9 min.
TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-/tmp/vlmjobs-compile-cache}" \
    timeout "$left" "$PY" bench/jobs_gpu.py --runs infer:48,infer:96:cap,train:8:e2,train:12:cap \
    --cap-gib 11.5 --seed-json "$OUT/seed_recipe.json" --budget-s $((left - 15))
echo "suite: $((SECONDS - start)) s; files in $OUT"
