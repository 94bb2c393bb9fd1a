"""The infer recipe: label folders and archives of images, one output row per image.

Phases of ``run(spec, ctx)``:

1. setup: resolve the adapter (``job:42`` -> that train job's adapter dir), read its
   manifest (pixel limits, prompt, system, box convention), load the model and a
   Generator once per worker (``ctx.resident``).
2. a producer thread (``producer.py``) streams the inputs (``inputs.py``), skips keys already done
   BEFORE decoding, decodes ``read_ahead * batch_size`` images, sorts that window by
   image-token count (little padding per batch) and builds the model inputs; batches
   wait in a bounded queue, so memory is bounded whatever the archive size.
3. the main thread generates (GPU), parses each answer into regions in ORIGINAL
   pixels, scores and de-duplicates them, and commits outputs per batch.

Confidence of a region: the geometric mean of the probabilities of the generated
tokens that overlap that region's JSON entry in the answer (its ``bbox_2d`` numbers
and ``label`` text), i.e. ``exp(mean(logprob))`` over those tokens; log-probs are
the model's raw ones (vision/generate.py). When an entry cannot be located in the
text the region gets the whole answer's geometric mean.
"""

from __future__ import annotations

import copy
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmjobs.ranges import record_function
from vlmjobs.recipes.context import JobContext, OutputRecord, RegionRecord
from vlmjobs.recipes.infer.inputs import count_items
from vlmjobs.recipes.infer.memory import plan_batch
from vlmjobs.recipes.infer.plan import Plan, answer_record, generate_answers, make_plan
from vlmjobs.recipes.infer.producer import Ready, Unit, image_inputs, run_producer
from vlmjobs.recipes.infer.score import region_scores
from vlmjobs.recipes.infer.video import (
    clip_preflight,
    describe,
)
from vlmjobs.recipes.profile import StepProfiler
from vlmjobs.specs.infer import InferSpec
from vlmjobs.vision import tasks
from vlmjobs.vision.generate import Generation, Generator
from vlmjobs.vision.model import load_model

QUEUE_BATCHES = 2  # prepared batches waiting for the GPU: enough to hide decoding
HEARTBEAT_S = 1.0  # longest wait on the producer between heartbeats / stop checks


@dataclass
class Tally:
    done: int = 0
    skipped: int = 0
    parsed_ok: int = 0
    generated: int = 0
    regions: int = 0
    started: float = field(default_factory=time.monotonic)


def run(spec: InferSpec, ctx: JobContext) -> dict[str, Any]:
    plan = make_plan(spec, device=ctx.device)
    ctx.log.info("infer plan: %s", plan.describe())
    spec = preflight(spec, plan, ctx)
    processor, generator = _engine(spec, plan, ctx)
    total = count_items(spec.inputs, spec.include, spec.exclude)
    if spec.limit is not None:
        total = min(total, spec.limit)
    done_keys = ctx.done_keys()
    ctx.event(f"infer: {total} images, {len(done_keys)} done")
    units: queue.Queue = queue.Queue(maxsize=QUEUE_BATCHES)
    stop = threading.Event()
    producer = threading.Thread(
        target=run_producer,
        # A private copy: a fast tokenizer mutated by padding in one thread while another
        # decodes raises "Already borrowed".
        args=(spec, plan, copy.deepcopy(processor), done_keys, units, stop),
        name="infer-producer",
        daemon=True,
    )
    producer.start()
    tally, stopped = Tally(), False
    profiler = StepProfiler(spec.profile, ctx)  # batches, when the spec asks
    try:
        stopped = _consume(spec, plan, generator, processor, units, ctx, tally, total, profiler)
    finally:
        profiler.abandon()  # an error or a stop inside the window: nothing written
        stop.set()
        producer.join(timeout=30)
    # Run to the end, every item was seen: the count is the truth (an archive cut short
    # yields fewer items than its headers promised).
    ctx.progress(tally.done, total if stopped else tally.done)
    return _summary(tally, stopped, ctx.output_counts())


def preflight(spec: InferSpec, plan: Plan, ctx: JobContext) -> InferSpec:
    """The spec with the batch size that fits preflight.gpu_memory_gib, its arithmetic in
    the job's events; raises PreflightError when it cannot fit. Sized with the plan's
    pixel limits and prompt (the manifest's), which submit may not have known."""
    if not (Path(plan.model.path).expanduser() / "config.json").is_file():
        return spec  # a hub id: nothing local to size the model from
    system = plan.system or tasks.DEFAULT_SYSTEM
    batch, estimate = plan_batch(spec, max_pixels=plan.max_pixels, prompt=system + plan.prompt)
    arithmetic = "\n".join(estimate.lines)
    adjusted = f" (adjusted from {spec.batch_size})" if batch != spec.batch_size else ""
    ctx.event(f"preflight: batch {batch}{adjusted} -> {estimate.total_gib:.1f} GiB\n{arithmetic}")
    if spec.task == "describe":  # a video clip is one row of its own, often longer
        ctx.event(clip_preflight(spec, prompt=system + plan.prompt))
    return spec.model_copy(update={"batch_size": batch})


def _engine(spec: InferSpec, plan: Plan, ctx: JobContext) -> tuple[Any, Generator]:
    """The loaded model's processor and a Generator, kept by the worker across jobs.

    One resident entry (the worker keeps one model at a time) holding the model and
    the Generator of the latest batch size / engine (its static cache is sized by them).
    """
    held: dict[str, Any] = ctx.resident(
        f"infer:{plan.model.model_dump_json()}:{ctx.device}",
        lambda: {"loaded": load_model(plan.model, device=ctx.device), "generators": {}},
    )
    model, processor = held["loaded"]
    key = (spec.batch_size, spec.engine)
    if key not in held["generators"]:
        held["generators"] = {
            key: Generator(model, processor, max_batch=spec.batch_size, engine=spec.engine)
        }
    generator = held["generators"][key]
    # A fallback is news when the static engine was asked for, or auto would pick it (CUDA).
    asked = spec.engine == "static" or next(model.parameters()).device.type == "cuda"
    if generator.engine_note and asked:
        ctx.event(f"engine: {generator.engine_note}", "warning")
    return processor, generator


def _consume(
    spec: InferSpec,
    plan: Plan,
    generator: Generator,
    processor: Any,
    units: queue.Queue,
    ctx: JobContext,
    tally: Tally,
    total: int,
    profiler: StepProfiler,
) -> bool:
    """Generate and commit until the producer is done; True when stopped early."""
    step = 0
    while True:
        if ctx.should_stop():
            return True
        profiler.step(step + 1)
        try:
            unit = units.get(timeout=HEARTBEAT_S)
        except queue.Empty:  # the producer is still reading: keep the heartbeat going
            ctx.progress(tally.done, total)
            continue
        if unit is None:
            profiler.close()  # a window reaching past the last batch ends here
            return False
        if isinstance(unit, BaseException):
            raise unit
        outputs = list(unit.failed)
        if unit.clip is not None:
            outputs.append(describe(generator, unit.clip, spec, plan, ctx.event))
        if unit.ready:
            with record_function("vlmjobs.infer.generate"):
                outputs += label(
                    generator, processor, unit.ready, spec, plan, batch=unit.batch, event=ctx.event
                )
        with record_function("vlmjobs.infer.save"):
            ctx.save_outputs(outputs)
        if unit.aliases:
            ctx.add_sources(unit.aliases)
        _count(tally, unit, outputs)
        ctx.progress(tally.done, total)
        step += 1
        if unit.ready or unit.clip is not None:
            ctx.metrics(_rates(tally), step=step)


def _count(tally: Tally, unit: Unit, outputs: list[OutputRecord]) -> None:
    # Progress counts input files: an image's row is one; a video's rows (t_start set)
    # count once, when the video is finished.
    tally.done += unit.skipped + unit.videos + sum(1 for o in outputs if o.t_start is None)
    tally.skipped += unit.skipped
    for out in outputs:
        if out.status == "ok":
            tally.generated += 1
            tally.parsed_ok += out.parse_status in ("ok", "repaired")
            tally.regions += len(out.regions)


def _rates(tally: Tally) -> dict[str, float]:
    elapsed = max(time.monotonic() - tally.started, 1e-9)
    return {
        "images_per_s": tally.generated / elapsed,
        "parse_ok_rate": tally.parsed_ok / max(tally.generated, 1),
    }


def _summary(tally: Tally, stopped: bool, saved: dict[str, int]) -> dict[str, Any]:
    """``ok``/``failed`` count the job's rows over all attempts (a resumed job's last
    attempt saw only part); the rest describe this attempt."""
    return {
        "images": tally.done,
        "ok": saved.get("ok", 0),
        "failed": saved.get("failed", 0),
        "skipped": tally.skipped,
        "regions": tally.regions,
        "stopped_early": stopped,
        **{k: round(v, 4) for k, v in _rates(tally).items()},
    }


# --- the producer thread: read, skip, decode, bucket, build inputs -------------------------


# --- the main thread: generate (halving on OOM), parse, score, dedup ------------------------


def label(
    generator: Generator,
    processor: Any,
    ready: list[Ready],
    spec: InferSpec,
    plan: Plan,
    *,
    batch: Any = None,
    event: Callable[[str, str], None] | None = None,
) -> list[OutputRecord]:
    """Generate for one batch (``batch``: its prepared inputs, built here when None) and
    turn each answer into an output with its regions; ``event`` hears about OOM splits."""
    started = time.monotonic()
    inputs = batch if batch is not None else image_inputs(processor, ready, plan)
    gens = generate_answers(generator, inputs, spec, event)
    share_ms = (time.monotonic() - started) * 1000 / len(ready)
    tokenizer = getattr(processor, "tokenizer", processor)
    return [
        _output(r, g, tokenizer, spec, plan, share_ms) for r, g in zip(ready, gens, strict=True)
    ]


def _output(
    ready: Ready, gen: Generation, tokenizer: Any, spec: InferSpec, plan: Plan, latency_ms: float
) -> OutputRecord:
    parsed = plan.parse(gen.text, ready.frame, ready.size, finished=gen.finished)
    regions: list[RegionRecord] = []
    if parsed.regions is not None and len(parsed.regions.phrases):
        scores = region_scores(gen, tokenizer, list(parsed.regions.phrases))
        kept = plan.dedup(parsed.regions, scores)
        regions = [
            RegionRecord(x1, y1, x2, y2, phrase=phrase, score=score)
            for (x1, y1, x2, y2), phrase, score in kept
        ]
    return answer_record(
        gen,
        parsed,
        key=ready.key,
        source=ready.source,
        size=ready.size,
        frame=ready.frame,
        latency_ms=latency_ms,
        t_start=ready.time,
        t_end=ready.time,
        extra={"mean_logprob": _mean(gen.logprobs)},
        regions=regions,
    )


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None
