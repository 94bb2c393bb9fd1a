"""Synthetic videos of moving shapes with exact boxes per frame (``make-shapes --video``).

``make_shape_videos(out, n=4, seed=0, seconds=3.0, fps=10)`` writes::

    out/videos/000001.mp4 ...   H.264 (yuv420p), 160-320 px a side (even), ``fps`` frames/s
    out/video_truth.jsonl       one video a line: {"video", "width", "height", "fps",
                                "frames": [{"index", "t", "regions": [{"bbox", "phrase"}]}]}
    out/truth.jsonl             one line per frame: {"image": "videos/000001.mp4#t=0.400",
                                "t", "width", "height", "regions"}: frames keyed by time

1-3 shapes per video glide in straight lines and bounce off the borders; boxes are the
exact pixel extent drawn in each frame (x2/y2 exclusive, original pixels). Video i
depends only on (seed, i). Files are written through PyAV, the library infer decodes with.
"""

from __future__ import annotations

import json
import random
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image, ImageDraw

from vlmjobs.dev.shapes import _draw, size_word

SHAPES = ("square", "circle", "triangle", "star")
PALETTE = ("red", "green", "blue", "black")
# Encoder per container suffix: H.264 where the FFmpeg build has it, else MPEG-4 part 2.
ENCODERS = {".mp4": ("libx264", "mpeg4"), ".mkv": ("libx264", "mpeg4"), ".webm": ("libvpx-vp9",)}


def write_video(path: Path, frames: list[Image.Image], fps: int) -> Path:
    """Encode RGB ``frames`` (one size, even sides) at ``fps`` into ``path`` (.mp4/.mkv/.webm)."""
    suffix = path.suffix.lower()
    if suffix not in ENCODERS:
        raise ValueError(f"video suffix {suffix!r} is not one of {', '.join(ENCODERS)}")
    codec = next((c for c in ENCODERS[suffix] if _has_encoder(c)), None)
    if codec is None:
        raise ValueError(f"this FFmpeg build has none of the encoders {ENCODERS[suffix]}")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        assert isinstance(stream, av.video.stream.VideoStream)
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_image(image)):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder's delayed frames
            container.mux(packet)
    return path


def _has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except av.FFmpegError:
        return False
    return True


def _movers(rng: random.Random, size: tuple[int, int]) -> list[dict[str, Any]]:
    """1-3 shapes with a start box and a velocity (px per frame), distinct colours."""
    w, h = size
    colours = rng.sample(PALETTE, 3)
    out = []
    for colour in colours[: rng.randint(1, 3)]:
        side = rng.randint(int(0.15 * min(w, h)), int(0.3 * min(w, h)))
        x, y = rng.uniform(0, w - side), rng.uniform(0, h - side)
        speed = rng.uniform(1.5, 4.0)
        angle = rng.uniform(0, 2 * np.pi)
        out.append({"shape": rng.choice(SHAPES), "colour": colour, "side": side,
                    "xy": [x, y], "v": [speed * np.cos(angle), speed * np.sin(angle)]})  # fmt: skip
    return out


def _step(mover: dict[str, Any], size: tuple[int, int]) -> None:
    """Move one frame on, bouncing off the borders."""
    for axis, limit in ((0, size[0]), (1, size[1])):
        pos = mover["xy"][axis] + mover["v"][axis]
        if pos < 0 or pos > limit - mover["side"]:
            mover["v"][axis] = -mover["v"][axis]
            pos = min(max(pos, 0.0), limit - mover["side"])
        mover["xy"][axis] = pos


def make_video_frames(
    seed: int, index: int, *, seconds: float, fps: int, size: tuple[int, int] | None = None
) -> tuple[list[Image.Image], list[list[dict[str, Any]]]]:
    """Video ``index`` of data set ``seed``: its frames and each frame's regions; ``size``
    (w, h, even) or a random 160-320 x 120-240."""
    rng = random.Random(seed * 1_000_033 + index)
    drawn = (rng.randint(80, 160) * 2, rng.randint(60, 120) * 2)
    size = size or drawn
    background = tuple(rng.randint(200, 245) for _ in range(3))
    movers = _movers(rng, size)
    frames, truth = [], []
    for _ in range(max(1, round(seconds * fps))):
        image = Image.new("RGB", size, background)
        draw = ImageDraw.Draw(image)
        regions = []
        for m in movers:
            x, y = round(m["xy"][0]), round(m["xy"][1])
            extent = _draw(draw, m["shape"], [x, y, x + m["side"], y + m["side"]], m["colour"])
            phrase = f"a {size_word(extent, *size)} {m['colour']} {m['shape']}"
            regions.append({"bbox": extent, "phrase": phrase})
            _step(m, size)
        frames.append(image)
        truth.append(regions)
    return frames, truth


def make_shape_videos(
    out: Path,
    n: int = 4,
    seed: int = 0,
    *,
    seconds: float = 3.0,
    fps: int = 10,
    suffix: str = ".mp4",
) -> Path:
    """Write ``n`` videos and their per-frame truth under ``out`` (layout in the module doc)."""
    if n < 1 or seconds <= 0 or fps < 1:
        raise ValueError(f"n={n}, seconds={seconds}, fps={fps}: need n >= 1, seconds > 0, fps >= 1")
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    videos, per_frame = [], []
    for index in range(1, n + 1):
        frames, truth = make_video_frames(seed, index, seconds=seconds, fps=fps)
        name = f"videos/{index:06d}{suffix}"
        write_video(out / name, frames, fps)
        w, h = frames[0].size
        rows = [{"index": i, "t": round(i / fps, 6), "regions": r} for i, r in enumerate(truth)]
        videos.append({"video": name, "width": w, "height": h, "fps": fps, "frames": rows})
        per_frame += [
            {"image": f"{name}#t={row['t']:.3f}", "t": row["t"], "width": w, "height": h,
             "regions": row["regions"]} for row in rows
        ]  # fmt: skip
    for file, rows_out in (("video_truth.jsonl", videos), ("truth.jsonl", per_frame)):
        with (out / file).open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows_out)
    return out
