"""What one video becomes inside the infer job (no worker): row keys, resume, the spec's knobs."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from vlmjobs.dev.build import make_model
from vlmjobs.dev.shapes_video import make_video_frames, write_video
from vlmjobs.recipes.context import OutputRecord
from vlmjobs.recipes.infer import video as infer_video
from vlmjobs.recipes.infer.inputs import iter_items
from vlmjobs.recipes.infer.plan import make_plan
from vlmjobs.recipes.infer.video import ClipReady, FrameReady, video_pieces
from vlmjobs.specs.infer import InferSpec
from vlmjobs.vision.frames import input_size


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pieces")
    frames, _ = make_video_frames(5, 1, seconds=2.0, fps=10)
    return {
        "model": make_model(root / "model", "tiny", seed=0),
        "video": write_video(root / "v.mp4", frames, 10),
    }


def pieces(setup: dict[str, Path], done: set[str] = frozenset(), **spec: object) -> list:
    spec = {"task": "detect", "labels": ["star"], **spec}
    infer = InferSpec(
        model={"path": str(setup["model"]), "dtype": "fp32", "min_pixels": 3136,
               "max_pixels": 12544},
        inputs=[str(setup["video"])], **spec,
    )  # fmt: skip
    plan = make_plan(infer)
    [raw] = list(iter_items([setup["video"]], [], []))
    from vlmjobs.vision.model import load_processor

    processor = load_processor(setup["model"], min_pixels=3136, max_pixels=12544)
    return list(video_pieces(raw, infer, plan, processor, set(done)))


def test_frames_and_resume(setup, monkeypatch) -> None:
    got = pieces(setup, video={"fps": 2.0})
    assert all(isinstance(p, FrameReady) for p in got)
    keys = [p.key for p in got]
    assert [k.split("#")[1] for k in keys] == ["f0", "f6", "f13", "f19"]
    assert [p.time for p in got] == pytest.approx([0.0, 0.6, 1.3, 1.9])
    size = got[0].size
    assert size == make_video_frames(5, 1, seconds=0.1, fps=10)[0][0].size
    # Frames are shrunk to the model's frame as decoded (the image pixel limits).
    assert {p.image.size for p in got} == {input_size(size, 3136, 12544)}
    # Decoded in runs of a batch (a long video's frames do not wait for its end): same frames.
    assert [p.key for p in pieces(setup, video={"fps": 2.0}, batch_size=3)] == keys
    # A resumed job labels only what is left ...
    assert [p.key for p in pieces(setup, set(keys[:2]), video={"fps": 2.0})] == keys[2:]

    # ... and does not even decode a video whose rows are all done.
    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded a finished video")

    monkeypatch.setattr(infer_video, "iter_clips", no_decoding)
    assert pieces(setup, set(keys), video={"fps": 2.0}) == []


def test_describe_windows_are_clips(setup) -> None:
    got = pieces(setup, task="describe", video={"fps": 2.0, "window_s": 1.5, "max_tokens": 64})
    assert all(isinstance(p, ClipReady) for p in got)
    assert [(p.key.split("#")[1], p.t_start, p.t_end) for p in got] == [
        ("w0", 0.0, 1.5),
        ("w1", 1.5, 2.0),
    ]
    # Window 0: 15 frames at 2 fps -> 3, raised to min_frames 4; window 1: 5 frames -> 4.
    assert [len(p.times) for p in got] == [4, 4]
    assert all(p.batch["video_grid_thw"][0, 0] == 2 for p in got)  # 4 frames: 2 patches


def test_unreadable_video_is_one_failed_row(setup, tmp_path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    setup = {**setup, "video": bad}
    [row] = pieces(setup)
    assert isinstance(row, OutputRecord) and row.status == "failed"
    assert row.error.startswith("video: not a readable video") and "#" not in row.item_key


@pytest.mark.parametrize(
    "video, message",
    [
        pytest.param(
            {"min_frames": 9, "max_frames": 8}, "min_frames 9 > max_frames 8", id="frames"
        ),
        pytest.param({"fps": 0}, "greater than 0", id="fps zero"),
        pytest.param({"window_s": -1}, "greater than 0", id="negative window"),
        pytest.param({"frames": 3}, "Extra inputs are not permitted", id="typo"),
    ],
)
def test_bad_video_knobs_are_refused(setup, video, message) -> None:
    with pytest.raises(ValidationError, match=message):
        InferSpec(model={"path": str(setup["model"])}, inputs=[str(setup["video"])], video=video)


def test_clip_preflight_refuses_a_clip_that_does_not_fit(setup) -> None:
    from vlmjobs.errors import PreflightError
    from vlmjobs.recipes.infer.video import clip_preflight

    def spec(tokens: int) -> InferSpec:
        return InferSpec(
            model={"path": str(setup["model"]), "dtype": "fp32"}, inputs=[str(setup["video"])],
            task="describe", preflight={"gpu_memory_gib": 2.0}, video={"max_tokens": tokens},
        )  # fmt: skip

    assert clip_preflight(spec(4096), prompt="Describe.").startswith(
        "preflight: one video clip of 4,096 tokens -> "
    )
    with pytest.raises(PreflightError, match="lower video.max_tokens"):
        clip_preflight(spec(4_000_000), prompt="Describe.")


def test_video_files_have_their_own_byte_limit(setup, tmp_path, monkeypatch) -> None:
    """An image's byte limit follows max_image_pixels; a video's is MAX_FILE_BYTES."""
    from vlmjobs.recipes.infer import inputs as infer_inputs

    size = setup["video"].stat().st_size
    [raw] = list(iter_items([setup["video"]], [], [], limit=100))  # far below the video
    assert raw.error is None and len(raw.data) == size
    monkeypatch.setattr(infer_inputs, "MAX_FILE_BYTES", size - 2)
    [raw] = list(iter_items([setup["video"]], [], [], limit=100))
    assert (
        raw.error == f"file too large ({size} bytes > {size - 2}): cut the video; not read further"
    )
