"""Infer throughput: our generation engine beside the seed recipe, same workload.

Workload (the seed's): random-weight Qwen2.5-VL, per image a 1036x756-equivalent grid
1x54x74 (999 image tokens), 90 prompt tokens, 256 new tokens forced (min = max new tokens).
Each configuration runs in its own process so peak-memory figures are clean.

    python bench/infer.py                       # on the GPU: seed configs + ours, one table
    python bench/infer.py --configs ours_3b,check_3b --batch 16,32
    python bench/infer.py --tiny                # CPU, tiny model: the same code, for correctness

Prints one table (config, batch, images/s, new tokens/s, peak GiB allocated, ratio vs
the seed's bf16 batch-16 generate) and writes $OUT/infer_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# bench/ holds scripts named like stdlib modules (queue.py): keep it off the import path,
# and put the checkout on it (the device runs the checkout, not an installed package).
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != HERE]

import torch  # noqa: E402

SEED = ROOT / ".bench" / "seed_recipe.py"
WORK = Path(os.environ.get("BENCH_WORK", "/tmp/vlmjobs_bench"))
GRID, PROMPT, NEW = (1, 54, 74), 90, 256
TINY_GRID, TINY_NEW = (1, 8, 12), 16


def synthetic_batch(config, rows: int, grid: tuple[int, int, int], seed: int = 0):
    """The seed's inputs, our token ids: 45 text, <vision_start>, image, <vision_end>, 45 text."""
    from transformers import BatchFeature

    g = torch.Generator().manual_seed(seed)
    image = [config.vision_start_token_id]
    image += [config.image_token_id] * (grid[0] * grid[1] * grid[2] // 4)
    image += [config.vision_end_token_id]
    ids = [
        torch.cat([torch.randint(0, 2000, (PROMPT // 2,), generator=g), torch.tensor(image),
                   torch.randint(0, 2000, (PROMPT // 2,), generator=g)])
        for _ in range(rows)
    ]  # fmt: skip
    input_ids = torch.stack(ids)
    patches = grid[0] * grid[1] * grid[2]
    return BatchFeature({
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": torch.randn(rows * patches, 3 * 2 * 14 * 14, generator=g),
        "image_grid_thw": torch.tensor([grid] * rows),
    })  # fmt: skip


def tokenizer():
    from transformers import AutoTokenizer

    from vlmjobs.dev.build import make_tokenizer

    path = WORK / "tokenizer"
    if not (path / "tokenizer_config.json").exists():
        make_tokenizer().save_pretrained(path)  # ~10 s of BPE training: once per machine
    return AutoTokenizer.from_pretrained(path)


def random_model(arch: str, device: str, fp32: bool = False):
    """Random weights straight on the device (3b: bf16; tiny: fp32), no checkpoint on disk."""
    from vlmjobs.dev import build

    dtype = torch.float32 if fp32 else None
    return build.random_model(arch, device=device, dtype=dtype, attn_implementation="sdpa").eval()


def quantized_7b():
    """The real path: a saved 7B checkpoint, quantized to nf4 while loading (vision.model)."""
    from vlmjobs.dev.build import make_model
    from vlmjobs.specs.common import ModelSpec
    from vlmjobs.vision.model import load_model

    path = WORK / "q7b"
    if not (path / "config.json").exists():
        t = time.time()
        make_model(path, arch="7b", seed=0, device="cuda")
        torch.cuda.empty_cache()
        print(f"made 7B checkpoint in {time.time() - t:.0f} s", flush=True)
    return load_model(ModelSpec(path=str(path), quantization="nf4"), device="cuda")


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_ours(
    name: str, arch: str, batch: int, engine: str, tiny: bool, graphs: bool = True, rounds: int = 2
) -> dict:
    from vlmjobs.vision.generate import Generator

    device = "cpu" if tiny else "cuda"
    grid, new = (TINY_GRID, TINY_NEW) if tiny else (GRID, NEW)
    t = time.time()
    if arch == "7b":
        model, processor = quantized_7b()
    else:
        model, processor = random_model(arch, device), tokenizer()
    load_s = time.time() - t
    load_peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    gen = Generator(model, processor, max_batch=batch, engine=engine)
    if engine == "static" and not graphs:
        gen._static_decoder().cuda_graphs = False  # the same decode step, launched eagerly
    if engine == "static" and "_p8" in name:
        gen._static_decoder().prefill_rows = 8  # prefill 8 rows at a time instead of 4
    inputs = synthetic_batch(model.config, batch, grid)
    settings = dict(max_new_tokens=new, min_new_tokens=new)
    t = time.time()
    gen.generate(inputs, **settings)  # warm-up: allocates the cache, captures the graph
    sync(device)
    warm_s = time.time() - t
    t = time.time()
    for _ in range(rounds):
        out = gen.generate(inputs, **settings)
    sync(device)
    dt = (time.time() - t) / rounds
    assert all(len(g.token_ids) == new for g in out), "min_new_tokens did not force the length"
    result = {"config": name, "batch": batch, "new_tokens": new, "engine": gen.engine,
              "images_per_s": round(batch / dt, 3), "new_tokens_per_s": round(batch * new / dt, 1),
              "s_per_batch": round(dt, 3), "warmup_s": round(warm_s, 1),
              "load_s": round(load_s, 1)}  # fmt: skip
    if device == "cuda":
        result |= {"peak_alloc_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                   "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
                   "load_peak_alloc_gib": round(load_peak, 2)}  # fmt: skip
    if gen._static is not None:  # where the last batch's time went (CUDA events)
        timing = gen._static.timing
        per_step = round(timing["decode_s"] / max(1, timing["steps"]) * 1e3, 2)
        result |= timing | {"decode_ms_per_step": per_step}
    return result


def run_profile(name: str, arch: str, batch: int) -> dict:
    """Top CUDA kernels of one batch (prefill + 32 decode steps), printed as a table."""
    from torch.profiler import ProfilerActivity, profile

    from vlmjobs.vision.generate import Generator

    model, processor = random_model(arch, "cuda"), tokenizer()
    gen = Generator(model, processor, max_batch=batch, engine="static")
    inputs = synthetic_batch(model.config, batch, GRID)
    settings = dict(max_new_tokens=33, min_new_tokens=33)
    gen.generate(inputs, **settings)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        gen.generate(inputs, **settings)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40), flush=True)
    return {"config": name, "batch": batch} | gen._static.timing


def run_check(name: str, arch: str, batch: int, tiny: bool, fp32: bool) -> dict:
    """Greedy ids of the static engine vs transformers' generate on the same rows. In bf16 a
    random model's near-tied logits flip on rounding noise; fp32 shows the logic is equal."""
    from vlmjobs.vision.generate import Generator

    device = "cpu" if tiny else "cuda"
    model, processor = random_model(arch, device, fp32), tokenizer()
    inputs = synthetic_batch(model.config, batch, TINY_GRID if tiny else GRID, seed=1)
    new = 32
    hf = Generator(model, processor, engine="hf", max_batch=batch).generate(
        inputs, max_new_tokens=new
    )
    static = Generator(model, processor, engine="static", max_batch=batch)
    ours = static.generate(inputs, max_new_tokens=new)
    prefixes = [common_prefix(a.token_ids, b.token_ids) for a, b in zip(hf, ours, strict=True)]
    gaps = [  # over the common prefix: after a divergence the tokens differ
        abs(x - y)
        for a, b, n in zip(hf, ours, prefixes, strict=True)
        for x, y in zip(a.logprobs[:n], b.logprobs[:n], strict=True)
    ]
    return {"config": name, "batch": batch, "new_tokens": new, "rows_equal": sum(
        a.token_ids == b.token_ids for a, b in zip(hf, ours, strict=True)),
        "common_prefix": prefixes, "max_logprob_gap": round(max(gaps, default=0.0), 4)}  # fmt: skip


def common_prefix(a: list[int], b: list[int]) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


def child(args: argparse.Namespace) -> dict:
    """One config: check_ARCH[_fp32] | profile_ARCH | ours_ARCH[_hf|_eager|_p8] (tiny, 3b, 7b)."""
    name = args.run
    if name.startswith("check_"):
        return run_check(name, name.split("_")[1], args.batch[0], args.tiny, "_fp32" in name)
    if name.startswith("profile_"):
        return run_profile(name, name.split("_")[1], args.batch[0])
    arch, engine = name.split("_")[1], ("hf" if name.endswith("_hf") else "static")
    return run_ours(name, arch, args.batch[0], engine, args.tiny, graphs="_eager" not in name)


def spawn(argv: list[str], timeout: int) -> list[dict]:
    """Run one config in its own process; its RESULT lines, or an error row."""
    t = time.time()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return [{"config": " ".join(argv[2:]), "error": f"timed out after {timeout} s"}]
    rows = [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    rows += [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"config"')]
    for line in proc.stdout.splitlines():  # what else a child printed (profile tables, notes)
        if not line.startswith(("RESULT ", '{"config"')):
            print(line, flush=True)
    if not rows:
        rows = [{"config": " ".join(argv[2:]), "error": (proc.stderr or proc.stdout)[-1500:]}]
    for row in rows:
        row.setdefault("wall_s", round(time.time() - t, 1))
        print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    base = next((r["images_per_s"] for r in rows if r.get("config") == "bf16 generate bs16"), None)
    head = f"| {'config':34} | batch | images/s | new tok/s | peak GiB | vs seed bf16 bs16 |"
    lines = [head, "|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|"]
    for r in rows:
        if "images_per_s" not in r:
            extra = r.get("error") or {k: r[k] for k in ("rows_equal", "common_prefix") if k in r}
            lines.append(f"| {r['config']:34} | {r.get('batch', '')!s:5} | {str(extra)[-200:]} |")
            continue
        ratio = f"{r['images_per_s'] / base:.1f}x" if base else "-"
        lines.append(
            f"| {r['config']:34} | {r['batch']:5} | {r['images_per_s']:8.3f} | "
            f"{r['new_tokens_per_s']:9.1f} | {r.get('peak_alloc_gib', '-')!s:8} | {ratio:17} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CPU, tiny model (correctness)")
    parser.add_argument("--configs", default="", help="comma list; default: all of the mode")
    parser.add_argument("--batch", default="", help="comma list of batch sizes for ours")
    parser.add_argument("--seed", default="infer_4bit_b1,infer_bf16_b16", help="seed configs")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per config")
    parser.add_argument("--run", help=argparse.SUPPRESS)  # child mode: one config
    args = parser.parse_args()
    args.batch = [int(b) for b in args.batch.split(",") if b] or ([4] if args.tiny else [24])
    if args.run:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return
    WORK.mkdir(parents=True, exist_ok=True)
    tokenizer()  # build once, before the children race to
    default = "check_tiny,ours_tiny,ours_tiny_hf" if args.tiny else "check_3b,ours_3b,ours_7b"
    rows: list[dict] = []
    if not args.tiny and args.seed:
        seed = [sys.executable, str(SEED), "all", *args.seed.split(",")]
        rows += spawn(seed, timeout=args.timeout * 2)
    for name in (args.configs or default).split(","):
        name, _, only = name.partition("@")  # ours_7b@16: this config at batch 16 only
        for batch in [int(only)] if only else args.batch:
            argv = [sys.executable, __file__, "--run", name, "--batch", str(batch)]
            rows += spawn(argv + (["--tiny"] if args.tiny else []), args.timeout)
    print(table(rows))
    out = Path(os.environ.get("OUT", WORK))
    info = {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__, "argv": sys.argv, "results": rows}  # fmt: skip
    (out / "infer_bench.json").write_text(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
