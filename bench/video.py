"""Video detect throughput: sampled frames per second on a 60 s synthetic video.

The infer recipe's own path without the job system: the video is decoded with PyAV and
sampled (``recipes/infer/video.py``: 2 frames a second -> 120 frames, each shrunk to the
model's frame), the frames are batched like images and labeled by ``recipes.infer.recipe.label``
(generate, parse, score, de-duplicate). Random weights: every frame generates exactly
``--new`` tokens (min_new_tokens = max_new_tokens), so runs compare.

| config        | what                                                                  |
| ------------- | --------------------------------------------------------------------- |
| decode        | decode + sample + shrink only (CPU, PyAV): the ceiling the GPU sees   |
| detect_static | ours: the static-KV-cache engine (CUDA graphs), batch ``--batch``     |
| detect_hf     | transformers' generate, batch 16 (the seeds' way)                     |

    python bench/video.py                  # GPU: random Qwen2.5-VL-3B bf16, 640x360 video
    python bench/video.py --tiny           # CPU: the tiny model, a 64x48 video (correctness)

Prints one JSON line per config and writes $OUT/video_bench.json (or ./video_bench.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# bench/ holds scripts named like stdlib modules (queue.py): keep it off the import path.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

import torch  # noqa: E402

WORK = Path(os.environ.get("BENCH_WORK", "/tmp/vlmjobs_bench"))


def make_video(size: tuple[int, int], seconds: float) -> Path:
    from vlmjobs.dev.shapes_video import make_video_frames, write_video

    path = WORK / f"shapes_{size[0]}x{size[1]}_{seconds:g}s.mp4"
    if not path.exists():
        frames, _ = make_video_frames(0, 1, seconds=seconds, fps=30, size=size)
        write_video(path, frames, 30)
    return path


def frames_of(spec: Any, plan: Any, path: Path) -> tuple[list[Any], float]:
    """The Ready frames of the video and the seconds decoding took."""
    from vlmjobs.recipes.infer.inputs import iter_items
    from vlmjobs.recipes.infer.producer import Ready
    from vlmjobs.recipes.infer.video import FrameReady, video_pieces

    started = time.perf_counter()
    [raw] = list(iter_items([str(path)], [], []))
    ready = []
    for piece in video_pieces(raw, spec, plan, None, set()):
        assert isinstance(piece, FrameReady), piece
        frame = piece.image.size
        ready.append(Ready(piece.key, raw.source, piece.image, piece.size, frame,
                           plan.family.factor, piece.time))  # fmt: skip
    return ready, time.perf_counter() - started


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    from vlmjobs.dev.build import make_model
    from vlmjobs.recipes.infer.plan import make_plan
    from vlmjobs.recipes.infer.recipe import label
    from vlmjobs.specs.infer import InferSpec
    from vlmjobs.vision.generate import Generator
    from vlmjobs.vision.model import load_model

    device = "cpu" if args.tiny else "cuda"
    arch = "tiny" if args.tiny else "3b"
    model_dir = WORK / f"video-{arch}"
    if not (model_dir / "config.json").exists():
        make_model(model_dir, arch, seed=0, device=device)
    size = (64, 48) if args.tiny else (640, 360)
    video = make_video(size, args.seconds)
    spec = InferSpec(
        model={"path": str(model_dir), "dtype": "fp32" if args.tiny else "bf16"}
        | ({"min_pixels": 3136, "max_pixels": 50176} if args.tiny else {}),
        inputs=[str(video)], task="detect", labels=["square", "circle", "triangle", "star"],
        max_new_tokens=args.new, min_new_tokens=args.new, batch_size=args.batch,
        video={"fps": 2.0, "max_frames": 768},
    )  # fmt: skip
    plan = make_plan(spec, device=device)
    ready, decode_s = frames_of(spec, plan, video)
    rate = round(len(ready) / decode_s, 1)
    rows = [
        {"config": "decode", "frames": len(ready), "frames_per_s": rate, "frame": ready[0].frame}
    ]
    model, processor = load_model(plan.model, device=device)
    for engine, batch in (("static", args.batch), ("hf", min(16, args.batch))):
        generator = Generator(model, processor, max_batch=batch, engine=engine)
        run_spec = spec.model_copy(update={"batch_size": batch})
        label(generator, processor, ready[:batch], run_spec, plan)  # warm-up (graph capture)
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        ready, decode_s = frames_of(spec, plan, video)  # decoding is part of the job's time
        for i in range(0, len(ready), batch):
            label(generator, processor, ready[i : i + batch], run_spec, plan)
        if device == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - started
        row = {"config": f"detect_{engine}", "batch": batch, "frames": len(ready),
               "frames_per_s": round(len(ready) / wall, 2),
               "decode_s": round(decode_s, 2)}  # fmt: skip
        if device == "cuda":
            row["peak_alloc_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="CPU, the tiny model (correctness)")
    ap.add_argument("--seconds", type=float, default=60.0, help="video length")
    ap.add_argument("--batch", type=int, default=48, help="frames per generate call (static)")
    ap.add_argument("--new", type=int, default=128, help="tokens generated per frame")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    rows = run(args)
    print(json.dumps(rows[0]))
    out = Path(os.environ.get("OUT", ".")) / "video_bench.json"
    out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
