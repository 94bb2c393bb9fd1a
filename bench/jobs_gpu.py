"""The infer and train JOBS on the GPU: the recipes themselves, not just their engines.

    python bench/jobs_gpu.py                  # GPU: random-weight 3B, N=192 images
    python bench/jobs_gpu.py --tiny           # CPU: tiny model, 12 small images (crashes only)
    python bench/jobs_gpu.py --runs infer:48,infer:96:cap,train:8,train:12:cap --cap-gib 11.5 \
        --seed-json $OUT/seed_recipe.json     # what bench/gpu_suite.sh runs

``--runs``: jobs to run, ``kind:batch[:cap]``; ``:cap`` runs that job with the process
capped to ``--cap-gib`` (``torch.cuda.set_per_process_memory_fraction``: a 12 GB card less
its context is 11.5). A capped infer job runs with its preflight budget lifted, so an
oversized batch reaches the engine and its out-of-memory recovery is what is measured.
``--seed-json``: seed_recipe.py's output from the same call; adds the "x seed" column.

Each part runs in its own process (clean peak memory; one failing keeps the others'
numbers), under its own time limit:

1. make: N synthetic JPEGs of 1036x756 (999 image tokens each at the default pixel
   limits) with ~14 drawn shapes, regions.jsonl, and clean's output format written
   from them (train.jsonl / val.jsonl / manifest.json, via clean_records); then the
   random-weight checkpoint (``dev.build.make_model``), once.
2. infer: ``recipes.infer.recipe.run(spec, ctx)`` with the worker's real ``WorkerContext`` on a
   fresh SQLite database (job row inserted directly: no broker), bf16, batch 48, 256
   new tokens forced, engine auto. Images/s over the whole job, and steady (after the
   first batch, which captures the CUDA graph and compiles); outputs in the DB.
3. train: ``recipes.train.recipe.run(spec, ctx)`` the same way on that data, nf4, micro-batch 8
   and 12, ``--steps`` optimizer steps, a checkpoint at the end. s/sample from the
   job's own per-step metric (steps 2..), and from the wall time between the metric
   rows of step 1 and the last step (data loading, collation, DB writes included).

Model load is timed by wrapping the job module's ``load_model`` (the real one is
called); peak GPU memory is reset after it, so "peak" is the job's working peak and
"load peak" is reported apart. Prints one table; writes $OUT/jobs_gpu.json and a log
per part ($OUT/<part>.log).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# bench/ holds scripts named like stdlib modules (queue.py): keep it off the import path,
# and put the checkout on it (the device runs the checkout, not an installed package).
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

SIZE, TINY_SIZE = (1036, 756), (224, 168)
TINY_PIXELS = {"min_pixels": 3136, "max_pixels": 50176}  # 4..64 tokens: fast on 2 cores
# max_pixels = the workload's own image (999 tokens): the preflight sizes every image at
# max_pixels, so a looser limit makes it budget for images this workload never has.
FULL_PIXELS = {"min_pixels": 256 * 784, "max_pixels": SIZE[0] * SIZE[1]}
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "black", "white", "cyan")
GIB = 2**30


# ---------------------------------------------------------------- data (parent process)


def draw_image(rng: random.Random, size: tuple[int, int], n: int) -> tuple[Any, list[dict]]:
    """A grey image with up to ``n`` non-overlapping rectangles/ellipses and their regions."""
    from PIL import Image, ImageDraw

    w, h = size
    image = Image.new("RGB", size, tuple(rng.randint(90, 160) for _ in range(3)))
    draw, regions = ImageDraw.Draw(image), []
    for _ in range(n):
        for _try in range(20):
            bw, bh = rng.randint(w // 20, w // 6), rng.randint(h // 20, h // 6)
            x, y = rng.randint(0, w - bw - 1), rng.randint(0, h - bh - 1)
            box = [x, y, x + bw, y + bh]
            if not any(box[0] < r[2] and r[0] < box[2] and box[1] < r[3] and r[1] < box[3]
                       for r in (q["bbox"] for q in regions)):  # fmt: skip
                break
        else:
            continue
        colour, shape = rng.choice(COLOURS), rng.choice(("rectangle", "ellipse"))
        getattr(draw, shape)(box, fill=colour)
        regions.append({"bbox": box, "phrase": f"a {colour} {shape}"})
    return image, regions


def make_data(root: Path, n: int, size: tuple[int, int], shapes: int, pixels: dict) -> dict:
    """images/*.jpg + regions.jsonl under ``root``; clean's format under ``root/data``."""
    import numpy as np

    from vlmjobs.recipes.clean.records import chat_record, region_target
    from vlmjobs.vision.frames import input_size
    from vlmjobs.vision.manifest import Manifest
    from vlmjobs.vision.tasks import DEFAULT_SYSTEM, prompt_for

    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    rng, rows, records = random.Random(0), [], []
    prompt = prompt_for("dense_caption")
    for i in range(n):
        image, regions = draw_image(rng, size, shapes)
        path = root / "images" / f"{i:06d}.jpg"
        image.save(path, quality=90)
        rows.append({"image": f"images/{path.name}", "width": size[0], "height": size[1],
                     "regions": regions})  # fmt: skip
        frame = input_size(size, pixels["min_pixels"], pixels["max_pixels"])
        boxes = np.array([r["bbox"] for r in regions], dtype=np.float64)
        target = region_target(boxes, [r["phrase"] for r in regions], size, frame)
        records.append(chat_record(path, prompt, target, DEFAULT_SYSTEM, size, frame))
    (root / "regions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    n_val = max(1, n // 24)
    for name, part in (("train", records[n_val:]), ("val", records[:n_val])):
        (root / "data" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    Manifest(base_model=None, task="dense_caption", prompt=prompt, system=DEFAULT_SYSTEM,
             source=str(root / "regions.jsonl"), **pixels).write(root / "data")  # fmt: skip
    answers = [r["messages"][2]["content"][0]["text"] for r in records]
    return {"images": n, "val": n_val, "answer_chars_mean": statistics.mean(map(len, answers))}


# ---------------------------------------------------------------- child parts


def part_make(args: argparse.Namespace) -> dict:
    import torch

    from vlmjobs.dev.build import make_model

    t = time.time()
    make_model(Path(args.model), "tiny" if args.tiny else "3b", seed=0, device=args.device)
    result = {"part": "make", "make_s": round(time.time() - t, 1)}
    if args.device == "cuda":
        result["gpu"] = torch.cuda.get_device_name()
    return result


def new_job(kind: str, spec: Any) -> Any:
    """The job as the worker's wrapper holds it before ``run``: claimed, attempt 1 (a lease)."""
    from vlmjobs.db import lifecycle
    from vlmjobs.db.session import session

    with session() as s:
        msg = lifecycle.insert(s, kind=kind, name=f"bench-{kind}", queue="gpu", priority=5,
                               spec=spec.model_dump(mode="json"), max_attempts=1)  # fmt: skip
    return lifecycle.claim(msg.job_id, worker="bench", gpu=None, stale_after_s=3600)


def time_loads(module: Any, device: str) -> dict:
    """Wrap ``module.load_model`` (the real one runs): its seconds and peak, then reset
    the peak so the job's own peak is measured without the load."""
    import torch

    from vlmjobs.db.models import utcnow

    real = module.load_model
    seen: dict[str, Any] = {}

    def load_model(*a: Any, **kw: Any) -> Any:
        t = time.time()
        out = real(*a, **kw)
        seen["load_s"] = round(time.time() - t, 1)
        seen["loaded_at"] = utcnow()
        if device == "cuda":
            torch.cuda.synchronize()
            seen["load_peak_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 2)
            torch.cuda.reset_peak_memory_stats()
        return out

    module.load_model = load_model
    return seen


def run_job(kind: str, spec: Any, device: str, loads: dict) -> tuple[int, dict, dict]:
    """(job id, the recipe's result or error, timings): run(spec, ctx) as the worker does."""
    import torch

    from vlmjobs.kinds import KINDS, resolve
    from vlmjobs.worker.context import StopFlags, WorkerContext

    lease = new_job(kind, spec)
    job_id = lease.job_id
    ctx = WorkerContext(lease, device, StopFlags())
    t = time.time()
    try:
        result = resolve(KINDS[kind].run)(spec, ctx)
    except BaseException as e:  # noqa: BLE001 - reported in the row, then the part fails
        result = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        print(result["traceback"], flush=True)
    timing: dict[str, Any] = {"wall_s": round(time.time() - t, 1), **loads}
    if device == "cuda":
        torch.cuda.synchronize()
        timing["peak_alloc_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 2)
        timing["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / GIB, 2)
    return job_id, result, timing


def metric_rows(job_id: int, name: str) -> list[tuple[int, float, datetime]]:
    from sqlalchemy import select

    from vlmjobs.db.models import Metric
    from vlmjobs.db.session import session

    with session() as s:
        rows = s.execute(
            select(Metric.step, Metric.value, Metric.time)
            .where(Metric.job_id == job_id, Metric.name == name)
            .order_by(Metric.step)
        ).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def events(job_id: int) -> list[str]:
    from sqlalchemy import select

    from vlmjobs.db.models import JobEvent
    from vlmjobs.db.session import session

    with session() as s:
        rows = s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
        return [f"{e.level}: {e.message.splitlines()[0]}" for e in rows]


def part_infer(args: argparse.Namespace) -> dict:
    from sqlalchemy import func, select

    import vlmjobs.recipes.infer.recipe as infer
    from vlmjobs.db.models import Output
    from vlmjobs.db.session import session
    from vlmjobs.specs.infer import InferSpec

    model = {"path": args.model, "dtype": "fp32" if args.tiny else "bf16"}
    # Capped: the preflight would refuse an oversized batch; lifted, the engine's own
    # out-of-memory recovery is exercised instead.
    preflight = {"gpu_memory_gib": 1000.0} if args.cap_gib else {}
    spec = InferSpec.model_validate({
        "model": model | (TINY_PIXELS if args.tiny else FULL_PIXELS), "inputs": [args.images],
        "batch_size": args.batch, "max_new_tokens": args.new_tokens,
        "min_new_tokens": args.new_tokens, "engine": "auto", "preflight": preflight,
    } | _profile(args, steps=1))  # fmt: skip
    loads = time_loads(infer, args.device)
    job_id, result, timing = run_job("infer", spec, args.device, loads)
    with session() as s:
        outputs = s.scalar(select(func.count()).where(Output.job_id == job_id)) or 0
        statuses = dict(
            s.execute(
                select(Output.parse_status, func.count())
                .where(Output.job_id == job_id)
                .group_by(Output.parse_status)
            ).all()
        )
        tokens = s.scalar(select(func.sum(Output.generated_tokens)).where(Output.job_id == job_id))
    steps = metric_rows(job_id, "images_per_s")
    config = f"{model['dtype']} batch {args.batch}, {args.new_tokens} new tokens{_capped(args)}"
    row = {"part": f"infer_{args.batch}", "config": config,
           "images": outputs, "outputs_ok": outputs == args.n, "parse_status": statuses,
           "generated_tokens": tokens, "result": result, **timing,
           "job_images_per_s": result.get("images_per_s"), "events": events(job_id),
           **_profile_ops(job_id)}  # fmt: skip
    if steps and "loaded_at" in loads:
        first = steps[0][2]
        with session() as s:
            in_first = s.scalar(
                select(func.count()).where(Output.job_id == job_id, Output.created_at <= first)
            )
        row["first_batch_s"] = round((first - loads["loaded_at"]).total_seconds(), 1)
        span = (steps[-1][2] - first).total_seconds()
        if len(steps) > 1 and span > 0:
            row["steady_images_per_s"] = round((outputs - (in_first or 0)) / span, 3)
    return row


def part_train(args: argparse.Namespace) -> dict:
    import vlmjobs.recipes.train.recipe as train
    from vlmjobs import settings
    from vlmjobs.specs.train import TrainSpec

    mbs = args.batch
    model = {"path": args.model, "quantization": "nf4", "dtype": "bf16"}
    spec = TrainSpec.model_validate({
        "model": model | (TINY_PIXELS if args.tiny else FULL_PIXELS), "data": {"path": args.data},
        "micro_batch_size": mbs, "max_steps": None if args.epochs else args.steps,
        "epochs": args.epochs or 1,
        "checkpoint": {"every_steps": 10**6 if args.epochs else args.steps},
        "eval": {"generate": False, "max_samples": 8},
    } | _profile(args, steps=3))  # fmt: skip
    loads = time_loads(train, args.device)
    job_id, result, timing = run_job("train", spec, args.device, loads)
    per_step = metric_rows(job_id, "samples_per_s")
    samples = [v for _, v, _ in metric_rows(job_id, "samples")]
    losses = metric_rows(job_id, "loss")
    length = f"{args.epochs} epochs" if args.epochs else f"{args.steps} steps"
    config = f"nf4 micro-batch {mbs}, {length}{_capped(args)}"
    row = {"part": f"train_{mbs}", "config": config,
           "micro_batch": mbs, "steps_done": len(per_step), "result": result, **timing,
           "losses": [round(v, 4) for _, v, _ in losses], "events": events(job_id)}  # fmt: skip
    # Per step: the job's own rate, and the wall gap between consecutive metric rows.
    row["step_samples_per_s"] = [round(v, 3) for _, v, _ in per_step]
    times = [t for _, _, t in per_step]
    row["step_wall_s"] = [round((b - a).total_seconds(), 3) for a, b in pairwise(times)]
    if len(per_step) > 1:
        row["step_s_per_sample"] = round(statistics.median(1 / v for _, v, _ in per_step[1:]), 4)
        span = (per_step[-1][2] - per_step[0][2]).total_seconds()
        # Samples the steps after step 1 actually saw: a short last micro-batch of an
        # epoch makes it fewer than micro-batch x steps.
        seen = sum(samples[1:]) if len(samples) == len(per_step) else mbs * (len(per_step) - 1)
        row["wall_s_per_sample"] = round(span / seen, 4)
    if per_step and "loaded_at" in loads:
        row["until_step1_s"] = round((per_step[0][2] - loads["loaded_at"]).total_seconds(), 1)
    workdir = settings.artifacts_root() / "jobs" / str(job_id)
    ckpts = sorted(p.name for p in (workdir / "checkpoints").glob("*") if p.is_dir())
    adapter = workdir / "adapter"
    row["checkpoints"] = ckpts
    row |= _profile_ops(job_id)
    row["adapter_ok"] = all(
        (adapter / f).is_file() for f in ("adapter_model.safetensors", "manifest.json")
    )
    return row


def _profile(args: argparse.Namespace, steps: int) -> dict:
    """The spec's profile block of a :pN run (train: optimizer steps; infer: batches)."""
    if not args.profile_from:
        return {}
    return {"profile": {"start_step": args.profile_from, "steps": steps}}


def _profile_ops(job_id: int) -> dict:
    from vlmjobs import settings

    ops = settings.artifacts_root() / "jobs" / str(job_id) / "profile" / "ops.txt"
    return {"profile_ops": ops.read_text()} if ops.is_file() else {}


def child(args: argparse.Namespace) -> dict:
    """One part, on a fresh database of its own (env set before anything reads it)."""
    home = Path(tempfile.mkdtemp(prefix=f"vlmjobs-{args.part}-", dir=args.work))
    os.environ |= {"VLMJOBS_HOME": str(home), "VLMJOBS_ARTIFACTS": str(home / "artifacts"),
                   "VLMJOBS_DB_URL": f"sqlite:///{home / 'vlmjobs.db'}"}  # fmt: skip
    if args.cap_gib and args.device == "cuda":
        import torch

        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(args.cap_gib * GIB / total, 0)
    parts = {"make": part_make, "infer": part_infer, "train": part_train}
    return parts[args.part](args)


def _capped(args: argparse.Namespace) -> str:
    return f", capped {args.cap_gib} GiB" if args.cap_gib else ""


# ---------------------------------------------------------------- parent


def spawn(args: argparse.Namespace, part: str, extra: list[str], timeout: float, log: Path) -> dict:
    """Run one part in its own process, its output to ``log``; its RESULT row or an error."""
    argv = [sys.executable, __file__, "--part", part, *extra, "--work", str(args.work)]
    argv += ["--tiny"] if args.tiny else []
    t = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    text = log.read_text(errors="replace")
    rows = [json.loads(x[7:]) for x in text.splitlines() if x.startswith("RESULT ")]
    why = f"exit {proc.returncode} after {time.time() - t:.0f} s (limit {timeout:.0f})"
    row = rows[-1] if rows else {"part": part, "error": f"{why}: {text[-1500:]}"}
    row["process_s"] = round(time.time() - t, 1)
    shown = {k: v for k, v in row.items() if k not in ("events", "result", "profile_ops")}
    print(json.dumps(shown), flush=True)
    return row


def seed_rates(path: Path | None) -> dict[str, float]:
    """The seed recipe's anchors from seed_recipe.json: train s/sample, infer images/s."""
    if path is None or not path.is_file():
        return {}
    found = {r.get("config", ""): r for r in json.loads(path.read_text())["results"]}
    rates = {}
    for name, row in found.items():
        if name.startswith("seed000") and "s_per_sample_median" in row:
            rates["train"] = row["s_per_sample_median"]
        if name == "bf16 generate bs16" and "images_per_s" in row:
            rates["infer"] = row["images_per_s"]
    return rates


def _ratio(ours: float | None, seed: float | None, higher_is_better: bool) -> str:
    if not ours or not seed:
        return "-"
    return f"{(ours / seed if higher_is_better else seed / ours):.2f}x"


def table(rows: list[dict], seed: dict[str, float]) -> str:
    head = ("| job | config | whole job | steady | x seed (whole; steady) | peak GiB alloc "
            "(reserved) | load s (peak GiB) | job wall s incl. load | check |")  # fmt: skip
    anchors = [f"train {seed['train']} s/sample" if "train" in seed else "",
               f"infer bf16 bs16 {seed['infer']} images/s" if "infer" in seed else ""]  # fmt: skip
    lines = [f"seed recipe, same call: {'; '.join(a for a in anchors if a) or 'not run'}", "",
             head, "|" + " --- |" * 9]  # fmt: skip
    for r in rows:
        if r.get("part") == "make":
            continue
        if "error" in r and "wall_s" not in r:
            lines.append(f"| {r['part']} | | error: {r['error'][-160:]!r} | | | | | | |")
            continue
        if r["part"].startswith("infer"):
            whole, steady = r.get("job_images_per_s"), r.get("steady_images_per_s")
            units, better, anchor = "images/s", True, seed.get("infer")
            check = f"outputs {r['images']} == N: {r['outputs_ok']}"
            ooms = [e for e in r.get("events", []) if "out of memory" in e]
            check += f"; {len(ooms)} OOM halvings" if ooms else ""
        else:
            whole, steady = r.get("wall_s_per_sample"), r.get("step_s_per_sample")
            units, better, anchor = "s/sample", False, seed.get("train")
            check = f"steps {r['steps_done']}, ckpts {r['checkpoints']}, adapter {r['adapter_ok']}"
        if "error" in r.get("result", {}):
            check += f"; ERROR {r['result']['error'][:120]}"
        x = f"{_ratio(whole, anchor, better)}; {_ratio(steady, anchor, better)}"
        mem = f"{r.get('peak_alloc_gib', '-')} ({r.get('peak_reserved_gib', '-')})"
        load = f"{r.get('load_s', '-')} ({r.get('load_peak_gib', '-')})"
        lines.append(f"| {r['part']} | {r['config']} | {whole} {units} | {steady} | {x} | "
                     f"{mem} | {load} | {r.get('wall_s', '-')} | {check} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="CPU, tiny model, small N")
    ap.add_argument("--n", type=int, help="images (default 192; tiny 12)")
    ap.add_argument("--runs", help="kind:batch[:cap][:eN epochs][:pN profile from step N], "
                    "comma list (default infer:48,train:8,train:12; tiny infer:4,infer:6:cap,"
                    "train:2,train:3)")  # fmt: skip
    ap.add_argument("--cap-gib", type=float, default=11.5, help="GPU cap of the :cap runs")
    ap.add_argument("--seed-json", type=Path, help="seed_recipe.py's JSON of the same call")
    ap.add_argument("--new-tokens", type=int, help="forced new tokens (default 256; tiny 8)")
    ap.add_argument("--steps", type=int, help="train steps (default 6; tiny 3)")
    ap.add_argument("--budget-s", type=float, default=500, help="all parts together")
    ap.add_argument("--work", type=Path, help="scratch dir (default: a new temp dir)")
    ap.add_argument("--part", help=argparse.SUPPRESS)  # child mode
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--capped", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--epochs", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--profile-from", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--images", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    tiny = args.tiny
    args.n = args.n or (12 if tiny else 192)
    args.new_tokens = args.new_tokens or (8 if tiny else 256)
    args.steps = args.steps or (3 if tiny else 6)
    args.device = "cpu" if tiny else "cuda"
    if args.part:
        args.cap_gib = args.capped  # only the child of a :cap run is capped
        print("RESULT " + json.dumps(child(args), default=str), flush=True)
        return
    default = "infer:4,infer:6:cap,train:2,train:3" if tiny else "infer:48,train:8,train:12"
    runs = [r.split(":") for r in (args.runs or default).split(",")]
    flag_ok = {"cap"} | {f"e{n}" for n in range(1, 100)} | {f"p{n}" for n in range(1, 1000)}
    bad = [r for r in runs if r[0] not in ("infer", "train") or len(r) < 2 or not r[1].isdigit()
           or not set(r[2:]) <= flag_ok]  # fmt: skip
    if bad:
        ap.error(f"--runs {bad}: write kind:batch[:cap][:eN][:pN], e.g. infer:96:cap or train:8:e2")
    run_all(args, runs)


def run_all(args: argparse.Namespace, runs: list[list[str]]) -> None:
    start = time.time()
    out = Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="jobs_gpu_out-"))
    out.mkdir(parents=True, exist_ok=True)
    args.work = args.work or Path(tempfile.mkdtemp(prefix="jobs_gpu-"))
    args.work.mkdir(parents=True, exist_ok=True)
    pixels = TINY_PIXELS if args.tiny else FULL_PIXELS
    data = make_data(args.work, args.n, TINY_SIZE if args.tiny else SIZE, 14, pixels)
    print(f"data: {json.dumps(data)} in {time.time() - start:.1f} s", flush=True)
    model = args.work / "model"
    common = ["--n", str(args.n), "--steps", str(args.steps), "--new-tokens", str(args.new_tokens)]
    common += ["--model", str(model), "--images", str(args.work / "images")]
    common += ["--data", str(args.work / "data")]
    info: dict[str, Any] = {"argv": sys.argv, "data": data, "rows": []}

    def left() -> float:
        return args.budget_s - (time.time() - start)

    rows = info["rows"]
    rows.append(spawn(args, "make", common, min(240, left()), out / "make.log"))
    for kind, batch, *flags in runs:
        cap = "cap" in flags
        epochs = [f[1:] for f in flags if f.startswith("e")]
        profile = [f[1:] for f in flags if f.startswith("p")]
        name = f"{kind}_{batch}" + ("_cap" if cap else "") + "".join(f"_e{e}" for e in epochs)
        name += "".join(f"_p{p}" for p in profile)
        if "error" in rows[0]:
            break
        if left() < 30:
            rows.append({"part": name, "error": f"skipped: {left():.0f} s of --budget-s left"})
            continue
        extra = ["--batch", batch] + (["--capped", str(args.cap_gib)] if cap else [])
        extra += ["--epochs", epochs[0]] if epochs else []
        extra += ["--profile-from", profile[0]] if profile else []
        limit = 200 if kind == "infer" else (600 if epochs else 150)  # epochs: as long as left
        rows.append(spawn(args, kind, common + extra, min(limit, left()), out / f"{name}.log"))
        if ops := rows[-1].pop("profile_ops", None):  # the job's profile/ops.txt
            (out / f"{name}.ops.txt").write_text(ops)
            print(ops[ops.index("phases (vlmjobs") :] if "phases (vlmjobs" in ops else ops[-2000:])
        info["wall_s"] = round(time.time() - start, 1)
        (out / "jobs_gpu.json").write_text(json.dumps(info, indent=1, default=str))
    info["wall_s"] = round(time.time() - start, 1)
    (out / "jobs_gpu.json").write_text(json.dumps(info, indent=1, default=str))
    print(table(rows, seed_rates(args.seed_json)))
    print(f"total {time.time() - start:.0f} s; JSON in {out / 'jobs_gpu.json'}")


if __name__ == "__main__":
    main()
