"""The infer job's producer thread: inputs in, batches of model inputs out, memory bounded.

It streams the inputs (``inputs.py``), skips keys already done BEFORE decoding, decodes
``read_ahead * batch_size`` images shrunk to the model's frame, sorts that window by
image-token count (little padding per batch) and builds the model inputs; a video's
sampled frames join the window like images and its clips go alone (``video.py``). Units
wait in a bounded queue for the main thread (``recipe.py``), which generates and saves.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from vlmjobs.recipes.context import OutputRecord
from vlmjobs.recipes.infer.inputs import RawItem, byte_limit, decode_image, iter_items
from vlmjobs.recipes.infer.plan import Plan
from vlmjobs.recipes.infer.video import ClipReady, FrameReady, video_pieces
from vlmjobs.specs.infer import InferSpec
from vlmjobs.vision.inputs import build_inputs
from vlmjobs.vision.video import is_video

# Items settled without the model (done before, duplicates, failed) are reported in
# groups this large, so a resume that skips a long done prefix still shows progress.
SETTLED_FLUSH = 256


@dataclass
class Ready:
    """A decoded image waiting for the model; ``size`` and ``frame`` are (w, h)."""

    key: str
    source: str
    image: Image.Image
    size: tuple[int, int]
    frame: tuple[int, int]
    factor: int = 28  # the family's visual token side (28, or 32 for Qwen3-VL)
    time: float | None = None  # a sampled video frame's seconds (its row's t_start = t_end)

    @property
    def tokens(self) -> int:
        return (self.frame[0] // self.factor) * (self.frame[1] // self.factor)


@dataclass
class Unit:
    """What the producer hands the main thread: a batch (maybe empty) and what was settled
    without the model (failed items; ``skipped`` = done before or duplicates)."""

    ready: list[Ready] = field(default_factory=list)
    clip: ClipReady | None = None  # a video clip to describe, alone (its inputs in ``batch``)
    batch: Any = None
    failed: list[OutputRecord] = field(default_factory=list)
    skipped: int = 0
    # (item key, source) of skipped duplicates: recorded on the key's row once it is saved
    aliases: list[tuple[str, str]] = field(default_factory=list)
    videos: int = 0  # video files finished with this unit (their rows are not items)


def run_producer(
    spec: InferSpec,
    plan: Plan,
    processor: Any,
    done: set[str],
    units: queue.Queue,
    stop: threading.Event,
) -> None:
    """The producer; an error in it is handed to the main thread, which raises it."""
    try:
        produce(spec, plan, processor, done, units, stop)
        put_unit(units, None, stop)
    except BaseException as e:  # noqa: BLE001 - re-raised by the consumer, in the main thread
        put_unit(units, e, stop)


def put_unit(units: queue.Queue, item: Any, stop: threading.Event) -> None:
    """Block until there is room, unless the consumer has gone (stop set)."""
    while not stop.is_set():
        try:
            units.put(item, timeout=0.5)
            return
        except queue.Full:
            continue


def produce(
    spec: InferSpec,
    plan: Plan,
    processor: Any,
    done: set[str],
    units: queue.Queue,
    stop: threading.Event,
) -> None:
    seen = set(done)  # keys of this run, so identical images are labeled once
    window, pending = spec.read_ahead * spec.batch_size, Unit()
    unique = len(done)
    limit = byte_limit(spec.max_image_pixels)
    for raw in iter_items(spec.inputs, spec.include, spec.exclude, limit):
        if stop.is_set():
            return
        if pending.skipped + len(pending.failed) >= SETTLED_FLUSH:
            put_unit(units, Unit(failed=pending.failed, skipped=pending.skipped), stop)
            pending.failed, pending.skipped = [], 0  # aliases wait for their rows (_flush)
        if raw.key in seen:
            pending.skipped += 1
            pending.aliases.append((raw.key, raw.source))  # another source of that image
            continue
        if spec.limit is not None and unique >= spec.limit:
            break
        seen.add(raw.key)
        unique += 1
        if is_video(raw.source) and raw.data is not None and raw.error is None:
            add_video(raw, spec, plan, processor, done, pending, units, stop)
            continue
        item = prepare(raw, spec, plan)
        if isinstance(item, Ready):
            pending.ready.append(item)
        else:
            pending.failed.append(item)
        if len(pending.ready) >= window:
            flush_window(pending, spec, plan, processor, units, stop)
            pending = Unit()
    flush_window(pending, spec, plan, processor, units, stop)


def prepare(raw: RawItem, spec: InferSpec, plan: Plan) -> Ready | OutputRecord:
    """A decoded image ready for the model, or the failed output that says why not."""
    error = raw.error
    if raw.data is not None and error is None:
        decoded = decode_image(raw.data, max_image_pixels=spec.max_image_pixels)
        error = decoded.error
        if decoded.image is not None:
            size = decoded.image.size
            try:
                frame = plan.input_size(size)
                # Shrink to the model's frame now: the read-ahead window then holds at most
                # read_ahead x batch_size x max_pixels x 3 bytes, not full-resolution originals
                # (a 9000 x 9000 PNG is 243 MB decoded). Same filter as the processor's own
                # resize (bicubic), which then finds the image at its size already.
                image = decoded.image
                if image.size != frame:
                    image = image.resize(frame, Image.Resampling.BICUBIC)
                return Ready(raw.key, raw.source, image, size, frame, plan.family.factor)
            except ValueError as e:  # e.g. an aspect ratio the processor rejects
                error = str(e)
    return OutputRecord(item_key=raw.key, source=raw.source, status="failed", error=error)


def flush_window(
    pending: Unit,
    spec: InferSpec,
    plan: Plan,
    processor: Any,
    units: queue.Queue,
    stop: threading.Event,
) -> None:
    """Sort a window by image tokens, cut it into batches and hand them over with their inputs."""
    ordered = sorted(pending.ready, key=lambda r: r.tokens)
    batches = [ordered[i : i + spec.batch_size] for i in range(0, len(ordered), spec.batch_size)]
    first = Unit(failed=pending.failed, skipped=pending.skipped, videos=pending.videos)
    for i, ready in enumerate(batches or [[]]):
        unit = first if i == 0 else Unit()
        unit.ready = ready
        if ready:
            unit.batch = image_inputs(processor, ready, plan)
        if i == max(len(batches), 1) - 1:  # the last: every row the aliases name is saved
            unit.aliases = pending.aliases
        put_unit(units, unit, stop)


def image_inputs(processor: Any, ready: list[Ready], plan: Plan) -> Any:
    return build_inputs(
        processor, [r.image for r in ready], [plan.image_prompt] * len(ready), system=plan.system
    )


def add_video(
    raw: RawItem,
    spec: InferSpec,
    plan: Plan,
    processor: Any,
    done: set[str],
    pending: Unit,
    units: queue.Queue,
    stop: threading.Event,
) -> None:
    """A video's frames join the pending window like images; its clips go to the model
    one unit each, as decoded; what fails becomes a failed row."""
    whole = False
    for piece in video_pieces(raw, spec, plan, processor, done):
        if stop.is_set():
            return
        if isinstance(piece, ClipReady):
            put_unit(units, Unit(clip=piece, batch=piece.batch), stop)
        elif isinstance(piece, FrameReady):
            frame, factor = piece.image.size, plan.family.factor
            ready = Ready(piece.key, raw.source, piece.image, piece.size, frame, factor, piece.time)
            pending.ready.append(ready)
            flush_full(pending, spec, plan, processor, units, stop)  # a long video
        else:
            # The file failed whole (one row, an item like an image's) or after some rows.
            whole = whole or piece.item_key == raw.key
            pending.failed.append(piece)
    pending.videos += 0 if whole else 1
    flush_full(pending, spec, plan, processor, units, stop)


def flush_full(
    pending: Unit,
    spec: InferSpec,
    plan: Plan,
    processor: Any,
    units: queue.Queue,
    stop: threading.Event,
) -> None:
    """Hand over a full read-ahead window and empty ``pending`` in place."""
    if len(pending.ready) >= spec.read_ahead * spec.batch_size:
        flush_window(pending, spec, plan, processor, units, stop)
        pending.ready, pending.failed, pending.aliases = [], [], []
        pending.skipped = pending.videos = 0
