"""Video decoding, sampling and clip inputs: PyAV on synthetic videos, the tiny models.

transformers' video processors need torchvision, which does not import beside the CPU
torch here, so the clip inputs are checked against what they must equal instead: the
image processor's patches of the same frame (an image is a 2-frame video of itself in
every Qwen-VL tower), transformers' Qwen3-VL timestamp formula, and qwen-vl-utils'
documented frame-count rule.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlmjobs.dev.build import make_model
from vlmjobs.dev.shapes_video import make_video_frames, write_video
from vlmjobs.specs.common import ModelSpec
from vlmjobs.vision import video as V
from vlmjobs.vision.family import family_of
from vlmjobs.vision.generate import Generator
from vlmjobs.vision.inputs import build_inputs
from vlmjobs.vision.model import load_model
from vlmjobs.vision.video_inputs import build_video_inputs, patch_times, video_pixels

FPS = 10


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, list[Image.Image]]:
    frames, _ = make_video_frames(0, 1, seconds=2.0, fps=FPS)
    path = write_video(tmp_path_factory.mktemp("video") / "a.mp4", frames, FPS)
    return path.read_bytes(), frames


@pytest.fixture(scope="module", params=["tiny", "tiny-qwen2vl", "tiny-qwen3vl"])
def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    path = make_model(tmp_path_factory.mktemp(request.param) / "m", request.param, seed=0)
    family = family_of(path)
    spec = ModelSpec(
        path=str(path), dtype="fp32", min_pixels=4 * family.factor**2,
        max_pixels=64 * family.factor**2,
    )  # fmt: skip
    model, processor = load_model(spec)
    return model, processor, family


@pytest.mark.parametrize(
    "first, last, video_fps, fps, lo, hi, multiple, count",
    [
        pytest.param(0, 299, 30.0, 2.0, 4, 64, 2, 20, id="10 s at 30 fps -> 2 fps"),
        pytest.param(0, 9, 10.0, 2.0, 4, 64, 2, 4, id="1 s: min_frames wins"),
        pytest.param(0, 2999, 30.0, 2.0, 4, 64, 2, 64, id="100 s: max_frames wins"),
        pytest.param(0, 2, 10.0, 2.0, 4, 64, 2, 2, id="3 frames: all there is, floored to 2"),
        pytest.param(0, 0, 10.0, 2.0, 4, 64, 2, 1, id="one frame: kept (padded later)"),
        pytest.param(0, 49, 10.0, 1.0, 1, 64, 1, 5, id="frames as images: any count"),
        pytest.param(100, 199, 25.0, 2.0, 4, 64, 2, 8, id="a window: 4 s at 25 fps"),
    ],
)
def test_sample_indices_follow_smart_nframes(
    first, last, video_fps, fps, lo, hi, multiple, count
) -> None:
    sampling = V.Sampling(fps=fps, min_frames=lo, max_frames=hi, multiple=multiple)
    got = V.sample_indices(first, last, video_fps, sampling)
    assert len(got) == count
    # qwen-vl-utils: torch.linspace(first, last, n).round()
    assert got == sorted({int(i) for i in torch.linspace(first, last, count).round().tolist()})


def test_probe_plan_and_decode_windows(clip_file) -> None:
    data, frames = clip_file
    info = V.probe(data)
    assert (info.width, info.height, info.frames, info.codec) == (*frames[0].size, 20, "h264")
    assert info.duration_s == pytest.approx(2.0) and info.fps == FPS
    plans = V.plan_clips(info, V.Sampling(fps=2.0, min_frames=4, window_s=0.8))
    bounds = [v for p in plans for v in (p.t_start, p.t_end)]
    assert bounds == pytest.approx([0, 0.8, 0.8, 1.6, 1.6, 2])
    clips = list(V.iter_clips(data, plans, resize=lambda im, plan: im.resize((64, 64))))
    assert [c.indices for c in clips] == [p.indices for p in plans] and all(
        c.complete for c in clips
    )
    assert clips[0].indices == [0, 2, 5, 7] and clips[2].indices == [16, 17, 18, 19]
    assert clips[1].times == pytest.approx([i / FPS for i in clips[1].indices])
    assert {f.size for c in clips for f in c.frames} == {(64, 64)}


def test_frames_at_returns_the_frame_of_that_time(clip_file) -> None:
    data, frames = clip_file
    got = V.frames_at(data, [0.0, 0.7, 1.9, 5.0])
    assert got[3] is None  # past the end
    for t, image in zip([0.0, 0.7, 1.9], got[:3], strict=True):
        i = round(t * FPS)
        diffs = [np.abs(np.asarray(image, float) - np.asarray(f, float)).mean() for f in frames]
        assert int(np.argmin(diffs)) == i, (t, diffs)  # H.264 loss, but the nearest is frame i


@pytest.mark.parametrize(
    "data, message",
    [
        pytest.param(b"", "empty file (0 bytes)", id="zero-length"),
        pytest.param(b"\x00garbage" * 64, "not a readable video", id="not a video"),
        pytest.param(None, "not a readable video", id="mp4 cut in half (no moov atom)"),
    ],
)
def test_bad_videos_raise_a_clear_error(clip_file, data, message) -> None:
    data = clip_file[0][: len(clip_file[0]) // 2] if data is None else data
    with pytest.raises(V.VideoError, match=re.escape(message)):
        V.probe(data)


def test_unknown_codec_is_named(tmp_path: Path) -> None:
    """A Matroska file whose codec id no decoder claims (the id rewritten in place)."""
    frames, _ = make_video_frames(0, 1, seconds=0.5, fps=FPS)
    data = write_video(tmp_path / "a.mkv", frames, FPS).read_bytes()
    assert data.count(b"V_MPEG4/ISO/AVC") == 1
    with pytest.raises(V.VideoError, match="unsupported codec: the video stream has an unknown"):
        V.probe(data.replace(b"V_MPEG4/ISO/AVC", b"V_QUUX1/ISO/AVC"))


def test_truncated_webm_yields_an_incomplete_clip(tmp_path: Path) -> None:
    """WebM streams: a cut file still decodes up to the cut (the header is at the start)."""
    frames, _ = make_video_frames(0, 2, seconds=4.0, fps=FPS)
    data = write_video(tmp_path / "b.webm", frames, FPS).read_bytes()
    info = V.probe(data)
    cut = data[: int(len(data) * 0.7)]
    clips = list(V.iter_clips(cut, V.plan_clips(info, V.Sampling(fps=5, window_s=1.0))))
    assert [c.complete for c in clips] == [True, True, False, False]


def test_video_patches_equal_the_image_processors(loaded) -> None:
    """A frame repeated twice is exactly what the image processor makes of one image."""
    _, processor, family = loaded
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 128, 3), np.uint8))
    frame = family.input_size(image.size, 4 * family.factor**2, 64 * family.factor**2)
    image = image.resize(frame)  # at the frame already: the image processor does not resize
    want = processor.image_processor(images=[image], return_tensors="pt")
    ip = processor.image_processor
    pixels, grid = video_pixels([image, image], ip.image_mean, ip.image_std, family)
    assert grid.tolist() == want["image_grid_thw"].tolist()
    torch.testing.assert_close(pixels, want["pixel_values"].float(), atol=1e-5, rtol=0)
    # Three frames: the last one is repeated to fill the second temporal patch.
    pixels3, grid3 = video_pixels([image] * 3, ip.image_mean, ip.image_std, family)
    assert grid3[0, 0] == 2 and torch.equal(pixels3[: len(pixels)], pixels)


def test_qwen3_timestamps_equal_transformers_formula() -> None:
    from transformers import Qwen3VLProcessor

    indices, fps = [0, 6, 13, 19, 25], 10.0
    want = Qwen3VLProcessor._calculate_timestamps(None, list(indices), fps, 2)
    assert patch_times([i / fps for i in indices]) == pytest.approx(want)


def test_clip_inputs_run_the_model(loaded, clip_file) -> None:
    """One row per clip: tokens match the grid, Qwen2.5-VL gets its seconds per temporal
    patch, Qwen3-VL its <t seconds> per patch; the frames reach the logits, and the static
    engine decodes the same greedy tokens as transformers' generate."""
    model, processor, family = loaded
    data, _ = clip_file
    info = V.probe(data)
    [plan] = V.plan_clips(info, V.Sampling(fps=2.0))
    size = family.input_size((info.width, info.height), 4 * family.factor**2, 16 * family.factor**2)
    [clip] = V.iter_clips(data, [plan], resize=lambda im, p: im.resize(size))
    batch = build_video_inputs(
        processor, family, clip.frames, clip.times, "Describe.", sampled_fps=2
    )
    t, h, w = batch["video_grid_thw"][0].tolist()
    assert t == 2 and int((batch["mm_token_type_ids"] == 2).sum()) == t * h * w // 4
    text = processor.tokenizer.decode(batch["input_ids"][0])
    if family.name == "qwen3_vl":
        assert "<0.3 seconds><|vision_start|>" in text and "<1.6 seconds><|vision_start|>" in text
        assert "second_per_grid_ts" not in batch
    elif family.name == "qwen2_5_vl":  # absolute-time MRoPE: seconds per temporal patch
        assert "seconds>" not in text
        assert batch["second_per_grid_ts"].tolist() == [1.0]  # 2 frames a patch at 2 fps
    else:  # Qwen2-VL: frames by position only
        assert "seconds>" not in text and "second_per_grid_ts" not in batch
    with torch.no_grad():
        logits = model(**batch).logits[0, -1]
        blank = dict(batch, pixel_values_videos=torch.zeros_like(batch["pixel_values_videos"]))
        assert not torch.allclose(logits, model(**blank).logits[0, -1])
    tokens = [
        Generator(model, processor, max_batch=1, engine=engine).generate(batch, max_new_tokens=6)
        for engine in ("hf", "static")
    ]
    assert tokens[0][0].token_ids == tokens[1][0].token_ids


def test_image_rows_still_batch_beside(loaded) -> None:
    """Adding video support leaves the image path alone: a 2-image batch still builds."""
    _, processor, _ = loaded
    images = [Image.new("RGB", (64, 64), c) for c in ("red", "blue")]
    batch = build_inputs(processor, images, ["a", "b"])
    assert "pixel_values_videos" not in batch and batch["image_grid_thw"].shape == (2, 3)


def test_decoding_reads_from_memory_only(clip_file) -> None:
    data, _ = clip_file
    assert V.probe(io.BytesIO(data).getvalue()).frames == 20


def test_dashboard_overlay_draws_the_frame_at_t_start(clip_file, tmp_path: Path) -> None:
    """The gallery's tile of a video row is its frame at t_start, boxes drawn on it."""
    from vlmjobs.dashboard.app import _overlay_png

    data, frames = clip_file
    path = tmp_path / "v.mp4"
    path.write_bytes(data)
    region = {"bbox": [10.0, 10.0, 60.0, 50.0], "phrase": "a thing", "score": 0.5}
    tiles = [
        Image.open(
            io.BytesIO(_overlay_png({"source": str(path), "t_start": t, "regions": [region]}))
        )
        for t in (0.0, 1.5)
    ]
    assert tiles[0].size[0] >= frames[0].size[0] and tiles[0].tobytes() != tiles[1].tobytes()


def test_make_shapes_video_cli_writes_videos_and_per_frame_truth(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from vlmjobs.cli.main import cli

    out = tmp_path / "clips"
    args = ["dev", "make-shapes", str(out), "--n", "2", "--video", "--seconds", "1.5", "--fps", "4"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    videos = [json.loads(x) for x in (out / "video_truth.jsonl").read_text().splitlines()]
    frames = [json.loads(x) for x in (out / "truth.jsonl").read_text().splitlines()]
    assert len(videos) == 2 and len(frames) == 2 * 6  # 1.5 s at 4 fps
    info = V.probe((out / videos[0]["video"]).read_bytes())
    assert (info.frames, info.fps, info.width, info.height) == (
        6, 4.0, videos[0]["width"], videos[0]["height"],
    )  # fmt: skip
    assert frames[1]["image"] == f"{videos[0]['video']}#t=0.250"
    # Boxes move: the same shape sits elsewhere a few frames on, and inside the picture.
    first, later = videos[0]["frames"][0]["regions"], videos[0]["frames"][5]["regions"]
    assert [r["phrase"] for r in first] == [r["phrase"] for r in later]
    assert [r["bbox"] for r in first] != [r["bbox"] for r in later]
    w, h = videos[0]["width"], videos[0]["height"]
    assert all(0 <= b[0] < b[2] <= w and 0 <= b[1] < b[3] <= h for f in videos[0]["frames"]
               for b in (r["bbox"] for r in f["regions"]))  # fmt: skip
