"""Video items of an infer job: one video file in, rows per sampled frame or per clip out.

``video_pieces(raw, spec, plan, processor, seen)`` decodes one video (vision/video.py) and
yields, in order:

- task ``describe``: a :class:`ClipReady` per clip (the whole video, or each
  ``video.window_s`` window) with its model inputs built (vision/video_inputs.py); the
  main thread generates one clip per call and :func:`describe_output` makes its row;
- any other task: a ``Ready`` image per sampled frame (at the image pixel limits), which
  the job batches with its images; the row carries the frame's timestamp;
- a failed ``OutputRecord`` for what could not be read: the whole file (empty, not a
  video, unknown codec), or the part after a truncation or a decoding error.

Row keys: ``<video sha256>#f<frame index>`` for a frame, ``#w<clip>`` for a clip,
``#end`` for a failure after some rows; a file that fails whole keeps the video's key.
A resumed job skips a video whose planned keys are all done without decoding it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from PIL import Image

from vlmjobs.recipes.context import OutputRecord
from vlmjobs.recipes.infer.inputs import RawItem
from vlmjobs.recipes.infer.plan import Plan, answer_record, generate_answers
from vlmjobs.specs.infer import InferSpec
from vlmjobs.vision.generate import Generation, Generator
from vlmjobs.vision.video import (
    Clip,
    ClipPlan,
    Sampling,
    VideoError,
    VideoInfo,
    iter_clips,
    plan_clips,
    probe,
)
from vlmjobs.vision.video_inputs import TEMPORAL_PATCH, build_video_inputs, frame_size


@dataclass
class ClipReady:
    """A decoded clip with its model inputs (one row), waiting for the model."""

    key: str
    source: str
    batch: Any  # BatchFeature of one row
    size: tuple[int, int]  # the video's (w, h)
    frame: tuple[int, int]  # each frame's (w, h) as the model sees it
    t_start: float
    t_end: float
    times: list[float]
    sampled_fps: float


@dataclass
class FrameReady:
    """What the image path needs to know of a sampled frame beyond the image itself."""

    key: str
    image: Image.Image  # at the model's frame already
    size: tuple[int, int]  # the video's (w, h)
    time: float


def sampling(spec: InferSpec) -> Sampling:
    """describe feeds clips as video (frame count a multiple of the temporal patch); the
    other tasks feed frames as images, so any count."""
    video = spec.video
    describe = spec.task == "describe"
    return Sampling(
        fps=video.fps,
        min_frames=video.min_frames if describe else 1,
        max_frames=video.max_frames,
        multiple=TEMPORAL_PATCH if describe else 1,
        window_s=video.window_s,
    )


def planned_keys(key: str, plans: list[ClipPlan], describe: bool) -> list[str]:
    if describe:
        return [f"{key}#w{p.index}" for p in plans]
    return [f"{key}#f{i}" for p in plans for i in p.indices]


def failed(
    key: str, source: str, error: str, info: VideoInfo | None = None, t_start: float | None = None
) -> OutputRecord:
    """A failed row; after some rows of the video it covers [t_start, the video's end]."""
    return OutputRecord(
        item_key=key,
        source=source,
        status="failed",
        error=error,
        image_w=info.width if info else None,
        image_h=info.height if info else None,
        t_start=None if t_start is None else round(t_start, 6),
        t_end=None if t_start is None or info is None else round(info.duration_s, 6),
    )


def video_pieces(
    raw: RawItem, spec: InferSpec, plan: Plan, processor: Any, done: set[str]
) -> Iterator[ClipReady | FrameReady | OutputRecord]:
    """The pieces of one video (see the module doc); ``done``: row keys to skip."""
    assert raw.data is not None
    try:
        info = probe(raw.data)
    except VideoError as e:
        yield failed(raw.key, raw.source, f"video: {e}")
        return
    describe = spec.task == "describe"
    plans = plan_clips(info, sampling(spec))
    if not describe:  # frames go on as decoded, a batch at a time, not a whole clip
        plans = _chunks(plans, spec.batch_size)
    if all(k in done for k in planned_keys(raw.key, plans, describe)):
        return
    size = (info.width, info.height)
    try:
        frame = plan.input_size(size)
    except ValueError as e:  # an aspect ratio the processor rejects
        yield failed(raw.key, raw.source, str(e), info)
        return
    clip_frames = {p.index: _clip_frame(spec, plan, size, len(p.indices)) for p in plans}
    target = {p.index: (clip_frames[p.index] if describe else frame) for p in plans}

    def shrink(image: Image.Image, clip: ClipPlan) -> Image.Image:
        # Shrunk as decoded (the processor's bicubic): a clip holds model-sized frames only.
        size_now = target[clip.index]
        return image if image.size == size_now else image.resize(size_now, Image.Resampling.BICUBIC)

    reached = 0.0
    try:
        for clip in iter_clips(raw.data, plans, resize=shrink):
            reached = clip.times[-1] if clip.times else clip.plan.t_start
            if describe and clip.complete and f"{raw.key}#w{clip.plan.index}" not in done:
                yield _clip_ready(raw, clip, spec, plan, processor, info)
            elif not describe:  # every frame that decoded is labeled, a cut clip's too
                for index, image, t in zip(clip.indices, clip.frames, clip.times, strict=True):
                    if f"{raw.key}#f{index}" not in done:
                        yield FrameReady(f"{raw.key}#f{index}", image, size, t)
            if not clip.complete:
                end = f"{raw.key}#end"
                yield failed(end, raw.source, _truncated(clip, info), info, t_start=reached)
                return
    except VideoError as e:
        yield failed(f"{raw.key}#end", raw.source, f"video: {e}", info, t_start=reached)


def _chunks(plans: list[ClipPlan], size: int) -> list[ClipPlan]:
    """Each clip's frames in runs of ``size`` (numbered anew): frames to label as images
    need not wait for their whole clip to decode."""
    out: list[ClipPlan] = []
    for p in plans:
        for i in range(0, len(p.indices), size):
            out.append(ClipPlan(len(out), p.t_start, p.t_end, p.indices[i : i + size], 0))
    return out


def _clip_frame(spec: InferSpec, plan: Plan, size: tuple[int, int], frames: int) -> tuple[int, int]:
    f2 = plan.family.factor**2
    video = spec.video
    return frame_size(
        size,
        frames,
        plan.family,
        min_pixels=video.min_frame_tokens * f2,
        max_pixels=video.max_frame_tokens * f2,
        total_pixels=video.max_tokens * f2,
    )


def _truncated(clip: Clip, info: VideoInfo) -> str:
    reached = clip.times[-1] if clip.times else clip.plan.t_start
    return (
        f"video: truncated or damaged: frames stop at {reached:.2f} s of {info.duration_s:.2f} s "
        "(the container promised more); the rows before it are kept"
    )


def _clip_ready(
    raw: RawItem, clip: Clip, spec: InferSpec, plan: Plan, processor: Any, info: VideoInfo
) -> ClipReady:
    sampled_fps = len(clip.plan.indices) / clip.plan.segment_frames * info.fps
    batch = build_video_inputs(
        processor,
        plan.family,
        clip.frames,
        clip.times,
        plan.prompt,
        sampled_fps=sampled_fps,
        system=plan.system,
    )
    return ClipReady(
        key=f"{raw.key}#w{clip.plan.index}",
        source=raw.source,
        batch=batch,
        size=(info.width, info.height),
        frame=clip.frames[0].size,
        t_start=round(clip.plan.t_start, 6),
        t_end=round(clip.plan.t_end, 6),
        times=[round(t, 6) for t in clip.times],
        sampled_fps=sampled_fps,
    )


def describe_output(
    clip: ClipReady, gen: Generation, plan: Plan, latency_ms: float
) -> OutputRecord:
    """The row of one described clip: the answer as text, the seconds it covers."""
    parsed = plan.parse(gen.text, clip.frame, clip.size, finished=gen.finished)
    return answer_record(
        gen,
        parsed,
        key=clip.key,
        source=clip.source,
        size=clip.size,
        frame=clip.frame,
        latency_ms=latency_ms,
        t_start=clip.t_start,
        t_end=clip.t_end,
        extra={
            "frames": len(clip.times),
            "frame_times": clip.times,
            "sampled_fps": round(clip.sampled_fps, 6),
        },
    )


def describe(
    generator: Generator,
    clip: ClipReady,
    spec: InferSpec,
    plan: Plan,
    event: Callable[[str, str], None] | None = None,
) -> OutputRecord:
    """Generate the description of one clip (one row per call: a video row is never split)."""
    started = time.monotonic()
    [gen] = generate_answers(generator, clip.batch, spec, event)
    return describe_output(clip, gen, plan, (time.monotonic() - started) * 1000)


def clip_preflight(spec: InferSpec, *, prompt: str) -> str:
    """The memory of one clip at ``video.max_tokens`` visual tokens (a row of its own),
    as an event line; PreflightError with the arithmetic when it exceeds the card."""
    from vlmjobs.errors import PreflightError
    from vlmjobs.recipes.infer.memory import estimate_infer_memory

    tokens = spec.video.max_tokens
    estimate = estimate_infer_memory(
        spec, batch=1, max_pixels=0, prompt=prompt, image_tokens=tokens
    )
    arithmetic = "\n  ".join(estimate.lines)
    if estimate.total_gib > spec.preflight.gpu_memory_gib:
        raise PreflightError(
            f"one video clip of up to video.max_tokens {tokens:,} visual tokens needs "
            f"{estimate.total_gib:.2f} GiB > preflight.gpu_memory_gib "
            f"{spec.preflight.gpu_memory_gib}:\n  {arithmetic}\nlower video.max_tokens or "
            "video.window_s, or use model.quantization nf4"
        )
    return f"preflight: one video clip of {tokens:,} tokens -> {estimate.total_gib:.1f} GiB"
