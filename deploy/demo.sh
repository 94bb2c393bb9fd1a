#!/usr/bin/env bash
# The whole flow on a model that learns to draw boxes, CPU only, in about ten minutes:
#   pre-train a small Qwen3-VL on synthetic shapes (`dev make-model --arch demo`) ->
#   `vlmjobs up` (Redis, SQLite, one worker, beat) -> clean -> train (LoRA on top) ->
#   infer on held-out shapes with the trained adapter -> score, overlays, loss curves ->
#   `vlmjobs down`.
# Everything lands under ./demo (state in demo/home). Usage: bash deploy/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS
bash deploy/setup.sh

export VLMJOBS_HOME="$PWD/demo/home"
# A port of its own, so the demo never touches a Redis the user already runs on 6379.
export VLMJOBS_BROKER_URL="${VLMJOBS_BROKER_URL:-redis://127.0.0.1:6391/0}"
export HF_HUB_OFFLINE=1
# Small models on a few cores: one thread each is fastest (more threads only contend).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
vlmjobs() { .venv/bin/vlmjobs "$@"; }

step() { printf '\n== %s\n' "$*"; }

# The demo's pixel frame (dev/pretrain.py): ~112 px images -> 9-16 image tokens of 32 px.
PIXELS=(--set family=qwen3_vl --set min_pixels=9216 --set max_pixels=25600)
MODEL_PIXELS=(--set model.min_pixels=9216 --set model.max_pixels=25600)
PROMPT="Locate every shape."

step "demo model (a small Qwen3-VL pre-trained on shapes, 3-5 min) and synthetic data"
[[ -d demo/demo-qwen ]] || vlmjobs dev make-model demo/demo-qwen --arch demo --seed 0
[[ -d demo/shapes ]] || vlmjobs dev make-shapes demo/shapes --style demo --n 320 --seed 0
[[ -d demo/heldout ]] || vlmjobs dev make-shapes demo/heldout --style demo --n 40 --seed 1 --duplicates 0

step "local stack"
vlmjobs up
trap 'step "stopping the stack"; vlmjobs down' EXIT

step "clean: IoU grouping + semantic de-duplication -> Qwen chat JSONL"
clean=$(vlmjobs submit clean deploy/examples/clean.yaml \
  --set input=demo/shapes/regions.jsonl "${PIXELS[@]}" --set "prompt=$PROMPT" \
  --set panels=4 --name demo-clean --wait)
vlmjobs status "$clean"

step "train: LoRA on the cleaned data (follow it with: vlmjobs logs $((clean + 1)) -f)"
train=$(vlmjobs submit train deploy/examples/train.yaml \
  --set model.path=demo/demo-qwen --set "data.path=job:$clean" "${MODEL_PIXELS[@]}" \
  --set model.quantization=none --set model.dtype=fp32 --set gradient_checkpointing=none \
  --set lora.r=8 --set "lora.targets=[q_proj,k_proj,v_proj,o_proj]" --set optim.lr=1e-3 \
  --set micro_batch_size=8 --set max_steps=30 --set log_every_steps=5 \
  --set checkpoint.every_steps=10 --set eval.every_steps=10 --set eval.max_samples=8 \
  --set eval.max_new_tokens=64 --set eval.metric=region_f1 \
  --name demo-train --wait)
vlmjobs status "$train"

step "infer: label the held-out images with the trained adapter"
infer=$(vlmjobs submit infer deploy/examples/infer.yaml \
  --set model.path=demo/demo-qwen --set "model.adapter=job:$train" --set model.dtype=fp32 \
  "${MODEL_PIXELS[@]}" \
  --set "inputs=[demo/heldout/images]" --set batch_size=8 --set max_new_tokens=64 \
  --name demo-infer --wait)
vlmjobs status "$infer"

step "results"
vlmjobs results "$infer" --format coco --out demo/preds.coco.json
rm -rf demo/gallery
vlmjobs render "$infer" --out demo/gallery --limit 12
vlmjobs metrics "$train" --plot demo/train-curves.png > demo/train-metrics.txt
vlmjobs status
echo
vlmjobs dev score-shapes "$infer" demo/heldout/truth.jsonl
echo "gallery: $PWD/demo/gallery (loss curves: demo/demo-qwen/pretrain-curves.png from" \
  "scratch, demo/train-curves.png for the LoRA job; COCO: demo/preds.coco.json)"
echo "demo took $((SECONDS - started)) s"
