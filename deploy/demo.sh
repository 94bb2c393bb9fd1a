#!/usr/bin/env bash
# The whole flow on embedded defaults, CPU only, in a few minutes:
#   make a tiny Qwen2.5-VL + a synthetic shapes data set -> `vlmjobs up` (Redis, SQLite,
#   one worker, beat) -> clean -> train (QLoRA) -> infer with the trained adapter ->
#   results (COCO) and overlays -> `vlmjobs down`.
# Everything lands under ./demo (state in demo/home). Usage: bash deploy/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh

export VLMJOBS_HOME="$PWD/demo/home"
# A port of its own, so the demo never touches a Redis the user already runs on 6379.
export VLMJOBS_BROKER_URL="${VLMJOBS_BROKER_URL:-redis://127.0.0.1:6391/0}"
export HF_HUB_OFFLINE=1
vlmjobs() { .venv/bin/vlmjobs "$@"; }

step() { printf '\n== %s\n' "$*"; }

step "tiny model and synthetic data"
[[ -d demo/tiny-qwen ]] || vlmjobs dev make-model demo/tiny-qwen --arch tiny --seed 0
[[ -d demo/shapes ]] || vlmjobs dev make-shapes demo/shapes --n 96 --seed 0

step "local stack"
vlmjobs up
trap 'step "stopping the stack"; vlmjobs down' EXIT

step "clean: IoU grouping + semantic de-duplication -> Qwen chat JSONL"
clean=$(vlmjobs submit clean deploy/examples/clean.yaml \
  --set input=demo/shapes/regions.jsonl --name demo-clean --wait)
vlmjobs status "$clean"

step "train: QLoRA on the cleaned data (tiny model, a few dozen steps)"
train=$(vlmjobs submit train deploy/examples/train.yaml \
  --set model.path=demo/tiny-qwen --set "data.path=job:$clean" \
  --set micro_batch_size=4 --set max_steps=24 --set checkpoint.every_steps=8 \
  --set eval.every_steps=12 --set eval.max_samples=4 --set eval.max_new_tokens=64 \
  --name demo-train --wait)
vlmjobs status "$train"

step "infer: label the images with the trained adapter"
infer=$(vlmjobs submit infer deploy/examples/infer.yaml \
  --set model.path=demo/tiny-qwen --set "model.adapter=job:$train" \
  --set "inputs=[demo/shapes/images]" --set batch_size=8 --set max_new_tokens=64 \
  --set limit=24 --name demo-infer --wait)
vlmjobs status "$infer"

step "results"
vlmjobs results "$infer" --format coco --out demo/preds.coco.json
vlmjobs render "$infer" --out demo/overlays --limit 8
vlmjobs status
echo
echo "demo: COCO predictions in demo/preds.coco.json, overlays in demo/overlays/"
