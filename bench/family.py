"""Qwen3-VL on the GPU: infer images/s and train s/sample with peak memory, beside the seeds' way.

Random-weight Qwen3-VL-4B (the real architecture, ``dev.build_family``), the seeds'
workload shape: per image 999 visual tokens (grid 1x54x74 of 16 px patches: an 864x1184
image), 90 prompt tokens; infer forces 256 new tokens, train has a 550-token answer.

| config          | what                                                                      |
| --------------- | ------------------------------------------------------------------------- |
| infer_static_bN | ours: the static-KV-cache engine, CUDA graphs, batch N, bf16              |
| infer_hf_b16    | the seeds' way: transformers' generate, bf16, batch 16                    |
| train_nf4_bN    | ours: QLoRA r4 on q/v, nf4 loaded from a bf16 checkpoint, micro-batch N   |
| train_hf_b1     | the seeds' way: same nf4 model, peft defaults, transformers' full-logit loss |

Qwen3.5 (random-weight Qwen3.5-9B, ``dev.build_qwen35``; same workload), on the fallback:

| config               | what                                                               |
| -------------------- | ------------------------------------------------------------------ |
| q35_infer_static_b16 | the static engine asked for: generate runs (gated delta-net layers), bf16 |
| q35_train_nf4_b4     | QLoRA r4 on q/v_proj + in_proj_qkv/out_proj, nf4 from bf16, micro-batch 4 |

Without flash-linear-attention and causal-conv1d installed, transformers runs the delta-net
layers on its PyTorch reference kernels (the rows say which ran: ``kernels``).

Pre-quantized Qwen2.5-VL-7B (``vlmjobs dev quantize``), loading peak and infer:

| config               | what                                                           |
| -------------------- | -------------------------------------------------------------- |
| q7b_prepare          | writes the random 7B bf16 checkpoint and its nf4 copy (once)   |
| infer_q7b_onload_b32 | loads the bf16 checkpoint quantizing on load, static engine    |
| infer_q7b_saved_b32  | loads the pre-quantized checkpoint as saved, static engine     |
| train_q7b_saved_b2   | QLoRA r4 q/v on the pre-quantized checkpoint, micro-batch 2    |

    python bench/family.py                 # GPU, the four Qwen3-VL configs, ~5 min on an H200
    python bench/family.py --tiny          # CPU, tiny-qwen3vl: the same code, for correctness
    python bench/family.py [--tiny] --configs q35_infer_static_b16,q35_train_nf4_b4
    python bench/family.py --cap-gib 12 \
        --configs q7b_prepare,infer_q7b_onload_b32,infer_q7b_saved_b32

Each config runs in its own process (clean peak-memory figures); prints one JSON line per
config and a table, and writes $OUT/family_bench.json (or ./family_bench.json).
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
# bench/ holds scripts named like stdlib modules (queue.py): keep it off the import path.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

import torch  # noqa: E402

WORK = Path(os.environ.get("BENCH_WORK", "/tmp/vlmjobs_bench"))
GRID, PROMPT, NEW, ANSWER = (1, 54, 74), 90, 256, 550
TINY_GRID, TINY_NEW = (1, 8, 12), 8
GPU_CONFIGS = ["infer_static_b32", "infer_hf_b16", "train_nf4_b8", "train_hf_b1"]
TINY_CONFIGS = ["infer_static_b4", "infer_hf_b4", "train_nf4_b2", "train_hf_b1"]
# Which random build a config runs: (tiny, real size); q35_* configs run Qwen3.5.
ARCHS = {"qwen3vl": ("tiny-qwen3vl", "qwen3vl-4b"), "q35": ("tiny-qwen35", "qwen35-9b")}
LORA_TARGETS = {"qwen3vl": ["q_proj", "v_proj"],
                "q35": ["q_proj", "v_proj", "in_proj_qkv", "out_proj"]}  # fmt: skip


def synthetic(config: Any, rows: int, grid: tuple[int, int, int], answer: int = 0) -> dict:
    """Random text around one image per row; labels on the last ``answer`` tokens if any."""
    g = torch.Generator().manual_seed(0)
    vision = config.vision_config
    image = [config.vision_start_token_id]
    image += [config.image_token_id] * (grid[0] * grid[1] * grid[2] // vision.spatial_merge_size**2)
    image += [config.vision_end_token_id]
    ids = torch.stack([
        torch.cat([torch.randint(0, 2000, (PROMPT // 2,), generator=g), torch.tensor(image),
                   torch.randint(0, 2000, (PROMPT // 2 + answer,), generator=g)])
        for _ in range(rows)
    ])  # fmt: skip
    values = 3 * vision.temporal_patch_size * vision.patch_size**2
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "mm_token_type_ids": (ids == config.image_token_id).long(),
        "pixel_values": torch.randn(rows * grid[0] * grid[1] * grid[2], values, generator=g),
        "image_grid_thw": torch.tensor([grid] * rows),
    }
    if answer:
        batch["labels"] = ids.clone()
        batch["labels"][:, : ids.shape[1] - answer] = -100
    return batch


def checkpoint(tiny: bool, model: str = "qwen3vl") -> Path:
    """A saved random-weight checkpoint (train loads it quantizing to nf4, as a job does)."""
    from vlmjobs.dev.build import make_model

    arch = ARCHS[model][0 if tiny else 1]
    path = WORK / arch
    if not (path / "config.json").exists():
        make_model(path, arch, seed=0, device="cpu" if tiny else "cuda")
        torch.cuda.empty_cache()
    return path


def q7b_paths() -> tuple[Path, Path]:
    return WORK / "q7b", WORK / "q7b-nf4"


def run_prepare() -> dict[str, Any]:
    """The 7B bf16 checkpoint (built on the GPU) and its pre-quantized nf4 copy."""
    from vlmjobs.dev.build import make_model
    from vlmjobs.vision.quantize import quantize_checkpoint

    bf16, nf4 = q7b_paths()
    start = time.time()
    if not (bf16 / "config.json").exists():
        make_model(bf16, "7b", seed=0, device="cuda")
        torch.cuda.empty_cache()
    made = time.time()
    if not nf4.exists():
        quantize_checkpoint(bf16, nf4, device="cuda")
    disk = sum(f.stat().st_size for f in nf4.iterdir()) / 2**30
    return {"batch": 0, "make_s": round(made - start, 1),
            "quantize_s": round(time.time() - made, 1), "nf4_disk_gib": round(disk, 2)}  # fmt: skip


def run_q7b(saved: bool, batch: int) -> dict[str, Any]:
    """Load the 7B nf4 (quantizing on load, or pre-quantized) and run the static engine."""
    from vlmjobs.specs.common import ModelSpec
    from vlmjobs.vision.model import load_model

    path = q7b_paths()[1 if saved else 0]
    torch.cuda.reset_peak_memory_stats()
    start = time.time()
    model, processor = load_model(ModelSpec(path=str(path), quantization="nf4"), device="cuda")
    loaded = {"load_s": round(time.time() - start, 1),
              "load_peak_alloc_gib": peaks("cuda")["peak_alloc_gib"]}  # fmt: skip
    torch.cuda.reset_peak_memory_stats()
    return run_infer("static", batch, False, loaded=(model, processor.tokenizer)) | loaded


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def peaks(device: str) -> dict[str, float]:
    if device != "cuda":
        return {}
    return {"peak_alloc_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2)}  # fmt: skip


def kernels() -> str:
    """Which delta-net kernels transformers can use: the fast packages, or its torch fallback."""
    from importlib.util import find_spec

    found = [p for p in ("fla", "causal_conv1d") if find_spec(p) is not None]
    return "+".join(found) or "torch fallback"


def run_infer(
    engine: str, batch: int, tiny: bool, loaded: Any = None, model_name: str = "qwen3vl"
) -> dict[str, Any]:
    from transformers import AutoTokenizer, BatchFeature

    from vlmjobs.dev.build_family import random_family_model
    from vlmjobs.vision.generate import Generator

    device = "cpu" if tiny else "cuda"
    grid, new = (TINY_GRID, TINY_NEW) if tiny else (GRID, NEW)
    start = time.time()
    if loaded is None:
        model = random_family_model(ARCHS[model_name][0 if tiny else 1], device=device)
        model.config._attn_implementation = "sdpa"
        tokenizer = AutoTokenizer.from_pretrained(checkpoint(True))  # the local tokenizer
    else:
        model, tokenizer = loaded
    load_s = time.time() - start
    gen = Generator(model.eval(), tokenizer, max_batch=batch, engine=engine)
    inputs = synthetic(model.config, batch, grid)
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    inputs = BatchFeature(inputs)
    settings = dict(max_new_tokens=new, min_new_tokens=new)
    start = time.time()
    gen.generate(inputs, **settings)  # warm-up: cache, graph capture, compile
    sync(device)
    warm_s = time.time() - start
    rounds = 2 if engine == "static" else 1
    start = time.time()
    for _ in range(rounds):
        out = gen.generate(inputs, **settings)
    sync(device)
    dt = (time.time() - start) / rounds
    assert all(len(g.token_ids) == new for g in out), "min_new_tokens did not force the length"
    fallback = {"engine_note": gen.engine_note, "kernels": kernels()} if gen.engine_note else {}
    return fallback | {"engine": gen.engine, "batch": batch, "images_per_s": round(batch / dt, 3),
            "s_per_batch": round(dt, 2), "warmup_s": round(warm_s, 1),
            "load_s": round(load_s, 1)} | peaks(device)  # fmt: skip


def run_train(
    seed_way: bool,
    bs: int,
    tiny: bool,
    steps: int,
    model_name: str = "qwen3vl",
    path: Path | None = None,
) -> dict[str, Any]:
    from peft import LoraConfig, get_peft_model

    from vlmjobs.recipes.train.loss import compute_loss
    from vlmjobs.recipes.train.model import prepare_model
    from vlmjobs.specs.common import ModelSpec
    from vlmjobs.specs.train import TrainSpec
    from vlmjobs.vision.model import load_model

    device = "cpu" if tiny else "cuda"
    path = path or checkpoint(tiny, model_name)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model, _ = load_model(ModelSpec(path=str(path), quantization="nf4"), device=device,
                          for_training=True)  # fmt: skip
    load_peak = peaks(device).get("peak_alloc_gib")
    scratch = Path(tempfile.mkdtemp())  # no config.json: the submit-time preflight is skipped
    (scratch / "t.jsonl").write_text('{"image": "a.png", "prefix": "p", "suffix": "s"}\n')
    spec = TrainSpec.model_validate({
        "model": {"path": str(scratch), "quantization": "nf4"},
        "data": {"path": str(scratch / "t.jsonl")}, "micro_batch_size": bs,
        "lora": {"r": 4, "targets": LORA_TARGETS[model_name]},
    })  # fmt: skip
    if seed_way:
        lora = LoraConfig(
            r=4, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"]
        )
        model = get_peft_model(model, lora)
    else:
        model = prepare_model(model, spec)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4)
    batch = synthetic(model.config, bs, TINY_GRID if tiny else GRID, answer=ANSWER)
    batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
    batch = {k: v.to(device) for k, v in batch.items()}
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps + 2):
        sync(device)
        start = time.perf_counter()
        loss = model(**batch).loss if seed_way else compute_loss(model, batch)[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - start)
    step = statistics.median(times[2:])
    return {"batch": bs, "seq_len": batch["input_ids"].shape[1], "s_per_sample":
            round(step / bs, 4), "loss": round(loss.item(), 3),
            "load_peak_alloc_gib": load_peak} | peaks(device)  # fmt: skip


def child(name: str, tiny: bool, steps: int, cap_gib: float | None) -> dict[str, Any]:
    if cap_gib and name != "q7b_prepare" and torch.cuda.is_available():  # a smaller card
        total = torch.cuda.get_device_properties(0).total_memory / 2**30
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gib / total))
    if name == "q7b_prepare":
        return {"config": name} | run_prepare()
    if name.startswith("train_q7b_"):  # the pre-quantized 7B, our train path
        bs = int(name.rsplit("_b", 1)[1])
        return {"config": name} | run_train(False, bs, False, steps, path=q7b_paths()[1])
    if name.startswith("infer_q7b_"):
        _, _, way, b = name.split("_")
        return {"config": name} | run_q7b(way == "saved", int(b.removeprefix("b")))
    model = "q35" if name.startswith("q35_") else "qwen3vl"
    kind, way, b = name.removeprefix("q35_").split("_")
    batch = int(b.removeprefix("b"))
    if kind == "infer":
        engine = "static" if way == "static" else "hf"
        return {"config": name} | run_infer(engine, batch, tiny, model_name=model)
    return {"config": name} | run_train(way == "hf", batch, tiny, steps, model_name=model)


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| config | batch | images/s | s/sample | peak GiB (alloc) | load peak GiB |",
             "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | | {r['error'][-300:]!r} | | | |")
            continue
        lines.append(
            f"| {r['config']} | {r['batch']} | {r.get('images_per_s', '')} | "
            f"{r.get('s_per_sample', '')} | {r.get('peak_alloc_gib', '-')} | "
            f"{r.get('load_peak_alloc_gib', '-')} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="CPU, tiny-qwen3vl (correctness)")
    ap.add_argument("--configs", default="", help="comma list (names as in the table above)")
    ap.add_argument("--steps", type=int, default=5, help="timed train steps after 2 warm-up")
    ap.add_argument("--timeout", type=int, default=240, help="seconds per config")
    ap.add_argument("--cap-gib", type=float, help="cap each config's GPU memory (a 12 GB card)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        result = child(args.one, args.tiny, args.steps, args.cap_gib)
        print("RESULT " + json.dumps(result), flush=True)
        return
    WORK.mkdir(parents=True, exist_ok=True)
    checkpoint(True)  # the local tokenizer, once, before the children
    names = [c for c in args.configs.split(",") if c] or (
        TINY_CONFIGS if args.tiny else GPU_CONFIGS
    )
    rows = []
    for name in names:
        argv = [sys.executable, __file__, "--one", name, "--steps", str(args.steps)]
        argv += ["--tiny"] if args.tiny else []
        argv += ["--cap-gib", str(args.cap_gib)] if args.cap_gib else []
        start = time.time()
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=args.timeout)
            found = [json.loads(x[7:]) for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            row = found[0] if found else {"config": name, "error": proc.stderr[-1500:]}
        except subprocess.TimeoutExpired:
            row = {"config": name, "error": f"timed out after {args.timeout} s"}
        row["wall_s"] = round(time.time() - start, 1)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(table(rows))
    out = Path(os.environ.get("OUT", ".")) / "family_bench.json"
    out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
