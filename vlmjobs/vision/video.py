"""Video files in, sampled frames out: probing, frame sampling and streamed decoding (PyAV).

    info = probe(data)                                   # duration, fps, frame count, size
    for clip in iter_clips(data, plan_clips(info, sampling)):
        clip.frames, clip.times                          # PIL RGB frames, their seconds

Decoding is PyAV (FFmpeg's libraries, wheels on PyPI with H.264 / VP8 / VP9 / AV1
decoders): frames are decoded in order from the encoded bytes and dropped at once unless
sampled, and a clip is handed over as soon as its last frame is decoded, so a long video
never sits decoded in memory (at most one clip's sampled frames, already shrunk to the
model's frame by ``resize``). qwen-vl-utils decodes with torchvision, decord or
torchcodec: torchvision does not import beside the CPU torch build the project runs, and
decord / torchcodec bring their own FFmpeg builds for the same job.

Sampling follows qwen-vl-utils' ``smart_nframes`` (the reference the Qwen-VL models were
trained with): over a segment of N frames at ``video_fps``, ``n = N / video_fps * fps``
frames, clipped to [min_frames, max_frames] and to N, floored to a multiple of
``multiple`` (2, the temporal patch, for clips fed as video; 1 for frames fed as images),
at indices ``linspace(first, last, n)`` rounded.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np
from PIL import Image

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv")
VIDEO_GLOBS = [f"*{s}" for s in VIDEO_SUFFIXES]


class VideoError(ValueError):
    """A video that cannot be read: empty, truncated, no video stream, unknown codec."""


def is_video(name: str) -> bool:
    """True for a file (or archive member) name ending in a video suffix we decode."""
    return name.lower().endswith(VIDEO_SUFFIXES)


@dataclass(frozen=True)
class VideoInfo:
    """What the container says: ``frames`` counted or estimated from duration x fps."""

    duration_s: float
    fps: float
    frames: int
    width: int
    height: int
    codec: str


@dataclass(frozen=True)
class Sampling:
    """How frames are picked: ``fps`` per second of video, within [min_frames, max_frames]
    per clip, a count floored to a multiple of ``multiple``; ``window_s`` cuts the video
    into windows of that many seconds (None: one clip for the whole video)."""

    fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 64
    multiple: int = 2
    window_s: float | None = None


@dataclass
class ClipPlan:
    """One clip to cut: frame ``indices`` (sorted, from 0) over [t_start, t_end) seconds."""

    index: int  # the clip's number in the video (window k)
    t_start: float
    t_end: float
    indices: list[int]
    segment_frames: int  # frames of the video inside [t_start, t_end)


@dataclass
class Clip:
    """A planned clip's decoded frames; ``times`` are the frames' own timestamps (s)."""

    plan: ClipPlan
    frames: list[Image.Image] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return len(self.indices) == len(self.plan.indices)


def _open(data: bytes) -> av.container.InputContainer:
    if not data:
        raise VideoError("empty file (0 bytes)")
    try:
        return av.open(io.BytesIO(data), mode="r")
    except av.FFmpegError as e:
        raise VideoError(f"not a readable video: {e}") from None


def probe(data: bytes) -> VideoInfo:
    """The first video stream's duration, frame rate, frame count and size.

    Raises VideoError saying what is wrong (empty, not a video, no video stream, a codec
    this FFmpeg build cannot decode, no duration or frame rate)."""
    with _open(data) as container:
        if not container.streams.video:
            raise VideoError("no video stream in the file")
        stream = container.streams.video[0]
        codec = stream.codec_context.name if stream.codec_context else None
        if codec is None or not _decodable(codec):
            what = "an unknown codec" if codec is None else f"codec {codec!r}"
            raise VideoError(
                f"unsupported codec: the video stream has {what}, which this FFmpeg build "
                "cannot decode; re-encode it (H.264, VP9 or AV1)"
            )
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        duration = _duration(container, stream)
        if not rate or not duration:
            raise VideoError("the container gives no frame rate or duration: remux the file")
        fps = float(rate)
        frames = stream.frames or int(round(duration * fps))
        return VideoInfo(duration, fps, frames, stream.width, stream.height, codec)


def _decodable(codec: str) -> bool:
    try:
        av.codec.Codec(codec, "r")
    except av.FFmpegError:
        return False
    return True


def _duration(container: av.container.InputContainer, stream: av.video.VideoStream) -> float:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return container.duration / av.time_base if container.duration else 0.0


def plan_clips(info: VideoInfo, sampling: Sampling) -> list[ClipPlan]:
    """The clips of a video and the frame indices each samples (qwen-vl-utils' rule)."""
    window = sampling.window_s or info.duration_s
    count = max(1, math.ceil(info.duration_s / window - 1e-9))
    plans = []
    for k in range(count):
        t0, t1 = k * window, min((k + 1) * window, info.duration_s)
        first = math.ceil(t0 * info.fps - 1e-6)
        last = min(math.ceil(t1 * info.fps - 1e-6), info.frames) - 1
        if last < first:
            continue
        plans.append(
            ClipPlan(k, t0, t1, sample_indices(first, last, info.fps, sampling), last - first + 1)
        )
    return plans


def sample_indices(first: int, last: int, video_fps: float, sampling: Sampling) -> list[int]:
    """Indices in [first, last] (inclusive): ``smart_nframes``' count at ``linspace``."""
    total = last - first + 1
    n = total / video_fps * sampling.fps
    n = min(max(n, sampling.min_frames), sampling.max_frames, total)
    n = max(int(n // sampling.multiple) * sampling.multiple, min(total, sampling.multiple), 1)
    return sorted({int(i) for i in np.linspace(first, last, int(n)).round()})


def iter_clips(
    data: bytes,
    plans: list[ClipPlan],
    *,
    resize: Callable[[Image.Image, ClipPlan], Image.Image] | None = None,
) -> Iterator[Clip]:
    """Decode ``data`` once, in order, and yield each planned clip as soon as its frames
    are in (frames shrunk by ``resize(image, clip_plan)`` as they come). A clip whose
    frames never came (the file ends early) is yielded incomplete: ``clip.complete`` is
    False. Decoding errors raise VideoError naming the time reached."""
    wanted = {i: p for p in plans for i in p.indices}
    clips = {p.index: Clip(p) for p in plans}
    order = [p.index for p in plans]
    reached = 0.0
    with _open(data) as container:
        if not container.streams.video:
            raise VideoError("no video stream in the file")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        start = _start_time(stream)
        try:
            for index, frame in enumerate(container.decode(stream)):
                reached = _seconds(frame, start, index, stream)
                plan = wanted.get(index)
                if plan is not None:
                    clip = clips[plan.index]
                    image = frame.to_image()
                    clip.frames.append(resize(image, plan) if resize else image)
                    clip.indices.append(index)
                    clip.times.append(reached)
                while order and clips[order[0]].complete:
                    yield clips.pop(order.pop(0))
        except av.FFmpegError as e:
            raise VideoError(f"corrupt video at {reached:.2f} s: {e}") from None
    for k in order:  # the file ended before these frames: truncated or a wrong header
        yield clips[k]


def _start_time(stream: av.video.VideoStream) -> float:
    if stream.start_time is not None and stream.time_base:
        return float(stream.start_time * stream.time_base)
    return 0.0


def _seconds(frame: av.VideoFrame, start: float, index: int, stream: av.video.VideoStream) -> float:
    """The frame's presentation time from the stream's start; by index when it has none."""
    if frame.pts is not None and frame.time_base:
        return float(frame.pts * frame.time_base) - start
    rate = stream.average_rate or Fraction(1)
    return index / float(rate)


def frames_at(data: bytes, times: list[float]) -> list[Image.Image | None]:
    """The frame shown at each of ``times`` (seconds; the first frame whose timestamp is at
    or past it, within a millisecond), in one decoding pass; None past the last frame."""
    wanted = sorted(set(times))
    found: dict[float, Image.Image] = {}
    with _open(data) as container:
        if not container.streams.video:
            raise VideoError("no video stream in the file")
        stream = container.streams.video[0]
        start = _start_time(stream)
        try:
            for index, frame in enumerate(container.decode(stream)):
                now = _seconds(frame, start, index, stream)
                while wanted and wanted[0] <= now + 1e-3:
                    found[wanted.pop(0)] = frame.to_image()
                if not wanted:
                    break
        except av.FFmpegError as e:
            raise VideoError(f"corrupt video: {e}") from None
    return [found.get(t) for t in times]
