"""Train-step benchmark: the seeds' recipe against ours, side by side, in one call.

    python bench/train.py                 # GPU: random-weight 3B, seed + our configs
    python bench/train.py --tiny          # CPU: tiny model, loss check + the same table
    python bench/train.py --configs nf4-bs8,bf16-bs4

Workload (../shared/bench): one 1036x756 image (grid 1x54x74 = 999 image tokens), 90 prompt
tokens, 550 answer tokens, loss on the answer only. Each configuration runs in its own
process so its peak memory is clean; s/sample is the median step time over steps after
warm-up, divided by the micro-batch. The seed runs .bench/seed_recipe.py (carry .bench),
whose `make` writes the random 3B to /tmp/q3b; ours loads the same weights through
vision.model's quantization settings, then train.model.prepare_model +
train.loss.compute_loss + AdamW.
Prints a table; writes $OUT/train_bench.json.

The device image lacks pydantic (TrainSpec needs it): carry its wheels, e.g.
    pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 -d .bench/wheels pydantic==2.14.3 \
        pydantic_core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 \
        typing_extensions==4.16.0
and install them with bitsandbytes (BENCHMARKS.md has the command).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# bench/ holds scripts named like stdlib modules (queue.py): keep it off the import path,
# and put the checkout on it (the device runs the checkout, not an installed package).
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

import torch  # noqa: E402

SEED_SCRIPT = ROOT / ".bench" / "seed_recipe.py"
WEIGHTS = Path("/tmp/q3b")  # where the seed script's `make` writes the random 3B
GRID = (1, 54, 74)
PROMPT, ANSWER = 90, 550
TINY_GRID = (1, 12, 20)

# name -> TrainSpec overrides (+ "hf": the plain transformers forward with labels, seed-style).
CONFIGS: dict[str, dict[str, Any]] = {
    "hf-baseline-bs1": {"hf": True, "bs": 1, "ckpt": "none"},
    "nf4-bs1-nockpt": {"bs": 1, "ckpt": "none"},
    "nf4-bs1": {"bs": 1},
    "nf4-bs4": {"bs": 4},
    "nf4-bs8": {"bs": 8},
    "nf4-bs8-loopwin": {"bs": 8, "loop_windows": True},
    "nf4-bs12": {"bs": 12},
    "nf4-bs16": {"bs": 16},
    "bf16-bs4": {"bs": 4, "quant": "none"},
    "bf16-bs8": {"bs": 8, "quant": "none"},
}
DEFAULT_GPU = [
    "nf4-bs8", "nf4-bs16", "nf4-bs12", "bf16-bs4", "nf4-bs8-loopwin", "nf4-bs4", "nf4-bs1",
    "nf4-bs1-nockpt", "bf16-bs8",
]  # fmt: skip
DEFAULT_TINY = ["hf-baseline-bs1", "nf4-bs1", "nf4-bs4", "bf16-bs4"]
SEED_RUNS = ["train_seed000_qlora_r4"]


def make_batch(config: Any, bs: int, grid: tuple[int, int, int], device: str, dtype: Any) -> dict:
    """``bs`` copies of the workload's shape (different random tokens), labels on the answer."""
    g = torch.Generator().manual_seed(0)
    n_img = grid[0] * grid[1] * grid[2] // 4
    vocab = min(config.text_config.vocab_size, 150000) - 100
    ids = []
    for _ in range(bs):
        pre = torch.randint(0, vocab, (PROMPT // 2,), generator=g)
        post = torch.randint(0, vocab, (PROMPT // 2 + ANSWER,), generator=g)
        image = torch.full((n_img,), config.image_token_id)
        ids.append(torch.cat([pre, torch.tensor([config.vision_start_token_id]), image,
                              torch.tensor([config.vision_end_token_id]), post]))  # fmt: skip
    input_ids = torch.stack(ids)
    labels = input_ids.clone()
    labels[:, : input_ids.shape[1] - ANSWER] = -100
    patches = bs * grid[0] * grid[1] * grid[2]
    batch = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "mm_token_type_ids": (input_ids == config.image_token_id).long(),
        "pixel_values": torch.randn(patches, 3 * 2 * 14 * 14, generator=g).to(dtype),
        "image_grid_thw": torch.tensor([grid] * bs),
        "labels": labels,
    }
    return {k: v.to(device) for k, v in batch.items()}


def make_spec(model_dir: Path, cfg: dict[str, Any], tiny: bool) -> Any:
    from vlmjobs.specs.train import TrainSpec

    # model.path points at a folder without config.json: TrainSpec's submit-time preflight
    # (which reads the data and imports the whole job stack) is skipped; load_base reads
    # the weights from model_dir.
    scratch = Path(tempfile.mkdtemp())
    data = scratch / "train.jsonl"
    data.write_text('{"image": "a.png", "prefix": "p", "suffix": "s"}\n')
    fields = {
        "model": {"path": str(scratch), "quantization": cfg.get("quant", "nf4"),
                  "dtype": "fp32" if tiny and cfg.get("quant") == "none" else "bf16"},
        "data": {"path": str(data)},
        "lora": {"r": 4, "targets": ["q_proj", "v_proj"]},
        "micro_batch_size": cfg["bs"],
        "gradient_checkpointing": cfg.get("ckpt", "language"),
        "loss_chunk_size": cfg.get("chunk", 1024),
    }  # fmt: skip
    return TrainSpec.model_validate(fields)


def load_base(spec: Any, model_dir: Path, device: str) -> Any:
    """The base model as vision.model.load_model builds it (same bitsandbytes settings)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from vlmjobs.vision.model import DTYPES, quantization_config

    kwargs: dict[str, Any] = {"dtype": DTYPES[spec.model.dtype], "attn_implementation": "sdpa"}
    quant = quantization_config(spec.model)
    if quant is not None:
        kwargs["quantization_config"] = quant
    if device != "cpu":
        kwargs["device_map"] = {"": device}
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, **kwargs)


def build_model(cfg: dict[str, Any], spec: Any, model_dir: Path, device: str) -> Any:
    """The base model with LoRA attached the way ``cfg`` says."""
    from peft import LoraConfig, get_peft_model

    from vlmjobs.recipes.train.model import prepare_model

    model = load_base(spec, model_dir, device)
    if cfg.get("hf"):  # the seeds' way: peft defaults, full logits, transformers' loss
        lora = LoraConfig(
            r=4, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"]
        )
        return get_peft_model(model, lora)
    model = prepare_model(model, spec)
    if cfg.get("loop_windows"):  # measure the batched-window lever by undoing it
        for block in model.get_base_model().model.visual.blocks:
            del block.attn.forward
    return model


def run_one(name: str, model_dir: Path, tiny: bool, steps: int) -> dict[str, Any]:
    """One configuration in this process: load, prepare, time ``steps`` steps after 2 warm-up."""
    from vlmjobs.recipes.train.loss import compute_loss
    from vlmjobs.recipes.train.memory import architecture, estimate_peak_memory

    cfg = CONFIGS[name]
    device = "cpu" if tiny else "cuda"
    spec = make_spec(model_dir, cfg, tiny)
    model = build_model(cfg, spec, model_dir, device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, fused=not tiny)
    dtype = next(p.dtype for p in model.get_base_model().model.visual.parameters())
    grid = TINY_GRID if tiny else GRID
    batch = make_batch(model.config, cfg["bs"], grid, device, dtype)
    result: dict[str, Any] = {
        "config": name,
        "bs": cfg["bs"],
        "seq_len": batch["input_ids"].shape[1],
    }
    if device == "cuda":
        result["weights_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2)
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps + 2):
        sync(device)
        start = time.perf_counter()
        if cfg.get("hf"):
            loss = model(**batch).loss
        else:
            loss, _ = compute_loss(model, batch, chunk_size=spec.loss_chunk_size)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - start)
    step = statistics.median(times[2:])
    result |= {"s_per_step": round(step, 4), "s_per_sample": round(step / cfg["bs"], 4),
               "loss": round(loss.item(), 4)}  # fmt: skip
    if device == "cuda":
        result["peak_alloc_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        result["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
    arch = architecture(model.config)
    est = estimate_peak_memory(spec, grid[1] * grid[2] // 4, PROMPT + ANSWER + 2, n_params=arch)
    result["est_alloc_gib"], result["est_lines"] = est.allocated_gib, est.lines
    result |= phase_times(model, batch, device, hf=bool(cfg.get("hf")))
    if not cfg.get("hf") and cfg["bs"] == 1:
        result["loss_minus_hf"] = loss_against_transformers(model, batch)
    return result


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def phase_times(model: Any, batch: dict, device: str, *, hf: bool) -> dict[str, float]:
    """Seconds of one frozen vision-tower forward, to see its share of a step."""
    visual = model.get_base_model().model.visual
    with torch.no_grad():
        sync(device)
        start = time.perf_counter()
        visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"])
        sync(device)
    return {"vision_fwd_s": round(time.perf_counter() - start, 4)}


def loss_against_transformers(model: Any, batch: dict) -> float:
    """Our loss minus transformers' (full logits) on the same batch, dropout off."""
    from vlmjobs.recipes.train.loss import compute_loss

    model.eval()
    with torch.no_grad():
        ours, _ = compute_loss(model, batch)
        theirs = model(**batch).loss
    model.train()
    return float(ours - theirs)


def run_seed(name: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(SEED_SCRIPT), name], capture_output=True, text=True)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if not lines:
        return {"config": name, "error": proc.stderr[-1500:]}
    res = json.loads(lines[-1][7:])
    return {"config": name, "bs": 1, "s_per_sample": res["s_per_sample_median"],
            "peak_alloc_gib": res["peak_alloc_gib"], "peak_reserved_gib": res["peak_reserved_gib"],
            "seed": True}  # fmt: skip


def run_child(name: str, model_dir: Path, tiny: bool, steps: int) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--one",
        name,
        "--model",
        str(model_dir),
        "--steps",
        str(steps),
    ]
    proc = subprocess.run(cmd + (["--tiny"] if tiny else []), capture_output=True, text=True)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if not lines:
        return {"config": name, "error": proc.stderr[-1500:]}
    return json.loads(lines[-1][7:])


def table(results: list[dict[str, Any]]) -> str:
    base = next((r["s_per_sample"] for r in results if r.get("seed") and "s_per_sample" in r), None)
    if base is None:
        base = next((r["s_per_sample"] for r in results if "s_per_sample" in r), None)
    head = (
        "| config | bs | s/sample | x seed | peak alloc GiB (reserved) | est alloc GiB "
        "| vision fwd s |"
    )
    rows = [head, "|" + " --- |" * 7]
    for r in results:
        if "error" in r:
            rows.append(f"| {r['config']} | | error: {r['error'].splitlines()[-1][:80]} | | | | |")
            continue
        ratio = f"{base / r['s_per_sample']:.2f}" if base else ""
        mem = f"{r.get('peak_alloc_gib', '-')} ({r.get('peak_reserved_gib', '-')})"
        rows.append(
            f"| {r['config']} | {r['bs']} | {r['s_per_sample']:.3f} | {ratio} | {mem} "
            f"| {r.get('est_alloc_gib', '')} | {r.get('vision_fwd_s', '')} |"
        )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="CPU, the tiny model")
    ap.add_argument("--configs", help="comma-separated names of CONFIGS")
    ap.add_argument("--seed-runs", default=",".join(SEED_RUNS), help="seed_recipe.py run names")
    ap.add_argument("--steps", type=int, default=6, help="timed steps after 2 warm-up steps")
    ap.add_argument("--budget-s", type=float, default=420, help="start no config after this")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, Path(args.model), args.tiny, args.steps)))
        return
    t0 = time.time()
    results = []
    if args.tiny:
        from vlmjobs.dev.build import make_model

        model_dir = make_model(Path(tempfile.mkdtemp()) / "tiny", "tiny")
        names = args.configs.split(",") if args.configs else DEFAULT_TINY
    else:
        if not SEED_SCRIPT.exists():
            sys.exit(f"{SEED_SCRIPT} missing: copy the seeds' recipe there (carry .bench)")
        model_dir = WEIGHTS
        if not (WEIGHTS / "model.safetensors.index.json").exists():
            subprocess.run([sys.executable, str(SEED_SCRIPT), "make"], check=True)
        print(f"weights ready after {time.time() - t0:.0f} s", flush=True)
        results += [run_seed(n) for n in args.seed_runs.split(",") if n]
        print(json.dumps(results[-1:]), flush=True)
        names = args.configs.split(",") if args.configs else DEFAULT_GPU
    for name in names:
        if time.time() - t0 > args.budget_s:
            results.append({"config": name, "error": f"skipped: past --budget-s {args.budget_s}"})
            continue
        results.append(run_child(name, model_dir, args.tiny, args.steps))
        print(json.dumps({k: v for k, v in results[-1].items() if k != "est_lines"}), flush=True)
    out = Path(os.environ.get("OUT", "/tmp")) / "train_bench.json"
    meta = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__, "wall_s": round(time.time() - t0, 1)}  # fmt: skip
    out.write_text(json.dumps({**meta, "results": results}, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
