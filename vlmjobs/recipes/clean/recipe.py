"""The clean job: annotations in, deduplicated train/val/test chat JSONL + manifest out.

Recipe, one phase per step:

1. setup: open the source (format detected), decide task and prompt, load the
   sentence model (a worker-resident object), assign splits by seed;
2. per chunk of images: check each image (missing/unreadable: skipped and
   listed), clip and drop tiny boxes, group boxes by IoU, embed the phrases of
   the groups that need it in one batched call, keep one region per meaning
   cluster, write the records; report progress; stop if asked;
3. finish: manifest.json + report.json, then rename the temp dir to
   ``workdir/data`` (no half-written output, ever).

The algorithm itself lives in ``clean_dedup.py``; readers in ``clean_formats.py``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar

import numpy as np

from vlmjobs.errors import DataError
from vlmjobs.recipes.clean.dedup import (
    dedup_regions,
    group_by_iou,
    keys_to_embed,
)
from vlmjobs.recipes.clean.embed import PhraseVectors, embed_device, load_sentence_model
from vlmjobs.recipes.clean.formats import Item, Source, open_source
from vlmjobs.recipes.clean.images import check_image, draw_panel, safe_name
from vlmjobs.recipes.clean.records import (
    SPLITS,
    assign_splits,
    cap_regions,
    chat_record,
    region_target,
)
from vlmjobs.recipes.clean.report import Tally
from vlmjobs.recipes.context import JobContext
from vlmjobs.specs.clean import CleanSpec
from vlmjobs.vision.family import get_family
from vlmjobs.vision.frames import clip_boxes, valid_mask
from vlmjobs.vision.manifest import Manifest, convention_for
from vlmjobs.vision.regions import iou_matrix
from vlmjobs.vision.tasks import prompt_for

# Which tasks each kind of content can train.
TASKS_FOR = {
    "regions": ("dense_caption", "detect", "custom"),
    "captions": ("caption", "custom"),
    "targets": ("extract_json", "custom", "caption"),
}
PROGRESS_EVERY_S = 2.0

T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """Decisions taken once, before the first image: they hold for every record."""

    source: Source
    task: str
    prompt: str | None  # None: every record brings its own (JSONL prefixes)
    splits: list[str]
    panels: int  # at most this many before/after panels, of images where regions went


@dataclass
class Hooks:
    """How the pipeline talks to whoever runs it (the job context, a bench, a test)."""

    progress: Callable[[int, int | None], None] = lambda done, total: None
    should_stop: Callable[[], bool] = lambda: False
    log: logging.Logger = log
    # Moves the finished temp dir into place; the job's is fenced (ctx.publish).
    publish: Callable[[Path, Path], object] = lambda tmp, out: _publish(tmp, out)


def run(spec: CleanSpec, ctx: JobContext) -> dict[str, Any]:
    """Clean ``spec.input`` into ``ctx.workdir/data``; the result is the report's summary."""
    vectors = None
    if spec.semantic:
        device = embed_device()
        key = f"sentence-transformer:{spec.embed_model or 'default'}:{device}"
        model = ctx.resident(key, lambda: load_sentence_model(spec.embed_model, device))
        vectors = PhraseVectors(model, spec.embed_batch_size)
        ctx.log.info(
            "phrase embeddings with %s on %s", spec.embed_model or "all-MiniLM-L6-v2", device
        )
    out = ctx.workdir / "data"
    hooks = Hooks(ctx.progress, ctx.should_stop, ctx.log, ctx.publish)
    summary = clean(spec, out, vectors=vectors, hooks=hooks)
    if summary is None:
        ctx.event("stopped before the end: nothing written", level="warning")
        return {"stopped": True}
    ctx.metrics({"images_per_s": summary["images_per_s"], "removed_pct": summary["removed_pct"]})
    ctx.event(
        f"cleaned {summary['images']['written']} images: regions "
        f"{summary['regions']['before']} -> {summary['regions']['after']} "
        f"({summary['removed_pct']}% removed), {summary['images']['skipped']} skipped"
    )
    return {"data_dir": _relative_to_artifacts(out), **summary}


def _relative_to_artifacts(path: Path) -> str:
    from vlmjobs import settings  # here: the bench runs clean() where platformdirs may lack

    try:
        return str(path.resolve().relative_to(settings.artifacts_root().resolve()))
    except ValueError:
        return str(path.resolve())


def clean(
    spec: CleanSpec,
    out: Path,
    *,
    vectors: PhraseVectors | None,
    hooks: Hooks | None = None,
) -> dict[str, Any] | None:
    """The whole pipeline without the job system; returns the summary, None when stopped."""
    hooks = hooks or Hooks()
    started = time.perf_counter()
    plan = make_plan(spec)
    # Leftovers of an attempt that died (another pid) go first; one attempt runs at a time.
    for stale in out.parent.glob(f".{out.name}.*-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    (tmp / "panels").mkdir(parents=True) if plan.panels else tmp.mkdir(parents=True)
    tally = Tally(images_total=plan.source.total)
    files: dict[str, TextIO] = {
        name: (tmp / f"{name}.jsonl").open("w", encoding="utf-8") for name in SPLITS
    }
    try:
        finished = _process(spec, plan, vectors, tally, files, tmp, hooks)
    finally:
        for f in files.values():
            f.close()
    if not finished:
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    seconds = time.perf_counter() - started
    summary = _finish(spec, plan, tally, tmp, seconds, vectors)
    hooks.publish(tmp, out)
    hooks.progress(plan.source.total, plan.source.total)
    return summary


def make_plan(spec: CleanSpec) -> Plan:
    """Open the source and decide task, prompt, splits and panel images, or fail fast."""
    images_dir = Path(spec.images_dir).expanduser() if spec.images_dir else None
    source = open_source(Path(spec.input).expanduser(), spec.format, images_dir)
    if source.total == 0:
        raise DataError(f"{source.path} has no records: nothing to clean")
    task = spec.task or source.task
    if task not in TASKS_FOR[source.content]:
        raise DataError(
            f"task {task!r} does not fit {source.format} data with {source.content}: "
            f"use one of {', '.join(TASKS_FOR[source.content])}"
        )
    try:
        prompt: str | None = prompt_for(task, labels=source.labels, prompt=spec.prompt)
    except ValueError as e:
        if source.content != "targets":
            raise DataError(f"{e}: set prompt in the spec") from e
        prompt = None  # every JSONL record must then bring its prefix
    splits = assign_splits(source.total, spec.split, spec.seed)
    return Plan(source, task, prompt, splits, min(spec.panels, source.total))


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _process(
    spec: CleanSpec,
    plan: Plan,
    vectors: PhraseVectors | None,
    tally: Tally,
    files: dict[str, TextIO],
    tmp: Path,
    hooks: Hooks,
) -> bool:
    """Stream the items chunk by chunk into the split files; False when asked to stop."""
    done, last = 0, time.perf_counter()
    for chunk in _chunks(enumerate(plan.source.items), spec.chunk_size):
        if hooks.should_stop():
            return False
        for n, lines in _clean_chunk(spec, plan, vectors, tally, chunk, tmp):
            files[plan.splits[n]].writelines(lines)
            tally.records[plan.splits[n]] += len(lines)
            done += 1
            if time.perf_counter() - last > PROGRESS_EVERY_S:
                hooks.progress(done, plan.source.total)
                last = time.perf_counter()
        hooks.progress(done, plan.source.total)
    return True


@dataclass
class Prepared:
    """An item whose image checked out, with its boxes clipped and filtered and grouped."""

    n: int  # position in the source (decides the split)
    item: Item
    size: tuple[int, int]  # original (w, h)
    frame: tuple[int, int]  # input-frame (w, h)
    boxes: np.ndarray  # (M, 4) original px, after clipping and min_box_size
    phrases: list[str]
    groups: np.ndarray  # (M,) IoU group labels


def _clean_chunk(
    spec: CleanSpec,
    plan: Plan,
    vectors: PhraseVectors | None,
    tally: Tally,
    chunk: list[tuple[int, Item]],
    tmp: Path,
) -> Iterator[tuple[int, list[str]]]:
    """(position, JSONL lines) per item; one embedding call for the whole chunk."""
    ready = []
    for n, item in chunk:
        prepared = _prepare(spec, plan, tally, n, item)
        if prepared is None:
            yield n, []
        else:
            ready.append(prepared)
    found: dict[str, np.ndarray] | None = None
    if vectors is not None:
        need: set[str] = set()
        for p in ready:
            need |= keys_to_embed(p.phrases, p.groups)
        found = vectors.lookup(sorted(need))
    for p in ready:
        yield p.n, _records(spec, plan, tally, p, found, tmp)


def _prepare(spec: CleanSpec, plan: Plan, tally: Tally, n: int, item: Item) -> Prepared | None:
    """Check the image, clip and filter boxes, group them; None (and a tally entry) to skip."""
    if item.problem:
        tally.skip(item.key, str(item.image), "bad_record", item.problem)
        return None
    size, problem = check_image(item.image, item.size, spec.verify_images)
    if size is None:
        kind, reason = problem or ("unreadable", str(item.image))
        tally.skip(item.key, str(item.image), kind, reason)
        return None
    try:
        frame = get_family(spec.family).input_size(size, spec.min_pixels, spec.max_pixels)
    except ValueError as e:
        tally.skip(item.key, str(item.image), "bad_size", str(e))
        return None
    if plan.source.content != "regions":
        groups = np.zeros(len(item.phrases), dtype=np.int64)
        return Prepared(n, item, size, frame, item.boxes, item.phrases, groups)
    boxes = clip_boxes(item.boxes, size)
    # Degenerate boxes (zero width after clipping) always go, whatever min_box_size says.
    ok = np.flatnonzero(valid_mask(boxes, max(spec.min_box_size, 1e-6)))
    boxes, phrases = boxes[ok], [item.phrases[i] for i in ok]
    groups = group_by_iou(iou_matrix(boxes, boxes), spec.iou_threshold, spec.grouping)
    return Prepared(n, item, size, frame, boxes, phrases, groups)


def _records(
    spec: CleanSpec,
    plan: Plan,
    tally: Tally,
    p: Prepared,
    found: dict[str, np.ndarray] | None,
    tmp: Path,
) -> list[str]:
    """The JSONL lines of one prepared item (none when it ends empty), counted in ``tally``."""
    item, split = p.item, plan.splits[p.n]
    if plan.source.content == "targets":
        prompt = item.prompt or plan.prompt
        if prompt is None:
            tally.skip(item.key, str(item.image), "bad_record", "no prefix, and no prompt set")
            return []
        tally.image(item.key, split, _counts(item, 0, 0, 0, 0))
        tally.prompts[prompt] = tally.prompts.get(prompt, 0) + 1
        record = chat_record(item.image, prompt, item.target or "", spec.system, p.size, p.frame)
        return [json.dumps(record, ensure_ascii=False) + "\n"]
    kept = dedup_regions(
        p.boxes, p.phrases, p.groups, vectors=found, distance_threshold=spec.distance_threshold
    )
    index = [k.index for k in kept]
    final = cap_regions(index, [k.cluster_size for k in kept], p.boxes, spec.max_regions_per_image)
    counts = _counts(item, len(p.phrases), len(kept), len(final), len(item.phrases))
    if not final and not spec.keep_empty:
        tally.empty += 1
        tally.image(item.key, None, {**counts, "after": 0})
        return []
    tally.image(item.key, split, counts)
    prompt = plan.prompt or ""
    if plan.source.content == "captions":
        targets = [p.phrases[i] for i in final]
    else:
        phrases = [p.phrases[i] for i in final]
        convention = get_family(spec.family).convention
        targets = [region_target(p.boxes[final], phrases, p.size, p.frame, convention)]
        # Panels show what cleaning did: only images where a region was merged or removed.
        if tally.panels < plan.panels and len(final) < len(item.phrases):
            name = safe_name(str(Path(item.key).with_suffix("")))
            after = (p.boxes[final], phrases)
            before = (item.boxes, item.phrases)
            if draw_panel(item.image, before, after, tmp / "panels" / f"{split}_{name}.png"):
                tally.panels += 1
    return [
        json.dumps(
            chat_record(item.image, prompt, t, spec.system, p.size, p.frame), ensure_ascii=False
        )
        + "\n"
        for t in targets
    ]


def _counts(item: Item, filtered: int, kept: int, final: int, before: int) -> dict[str, int]:
    return {
        "before": before,
        "malformed": item.malformed,
        "too_small": before - filtered,
        "merged": filtered - kept,
        "capped": kept - final,
        "after": final,
    }


def _finish(
    spec: CleanSpec,
    plan: Plan,
    tally: Tally,
    tmp: Path,
    seconds: float,
    vectors: PhraseVectors | None,
) -> dict[str, Any]:
    """Write manifest.json and report.json into ``tmp``; return the summary."""
    Manifest(
        base_model=None,  # clean does not know the model; train records its own
        min_pixels=spec.min_pixels,
        max_pixels=spec.max_pixels,
        family=spec.family,
        convention=convention_for(get_family(spec.family)),
        task=plan.task,
        prompt=plan.prompt or tally.common_prompt() or "",
        system=spec.system,
        source=str(plan.source.path),
        extra={
            "format": plan.source.format,
            "labels": plan.source.labels,
            "region_order": "top-to-bottom, then left-to-right (model-frame y1, x1)",
            "cleaning": spec.model_dump(
                mode="json",
                include={
                    "iou_threshold",
                    "grouping",
                    "semantic",
                    "embed_model",
                    "distance_threshold",
                    "max_regions_per_image",
                    "min_box_size",
                },
            ),
        },
    ).write(tmp)
    summary: dict[str, Any] = {
        "format": plan.source.format,
        "task": plan.task,
        **tally.summary(),
        "seconds": round(seconds, 2),
        "images_per_s": round(len(tally.per_image) / seconds, 2) if seconds > 0 else 0.0,
    }
    if vectors is not None:
        summary["embeddings"] = {
            "requested": vectors.requested,
            "encoded": vectors.encoded,
            "seconds": round(vectors.seconds, 2),
        }
    full = {**summary, **tally.full(), "spec": spec.model_dump(mode="json")}
    (tmp / "report.json").write_text(json.dumps(full, indent=1, ensure_ascii=False) + "\n")
    return summary


def _publish(tmp: Path, out: Path) -> None:
    """Replace ``out`` by ``tmp`` with renames only: a reader sees the old or the new, whole."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)
