"""Video in the infer job, end to end: the real CLI, a real worker process, Redis, SQLite,
tiny random-weight models (Qwen2.5-VL and Qwen3-VL).

detect: a row per sampled frame with its timestamp, frames of a folder and of a tar,
bad video files as failed items (the job goes on), exports and render on frames.
describe: a row per window, fed to the model as a video.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import pytest
import yaml
from PIL import Image
from sqlalchemy import select

from vlmjobs.db.models import Output
from vlmjobs.db.session import session
from vlmjobs.dev.build import make_model
from vlmjobs.dev.shapes_video import make_shape_videos, make_video_frames, write_video

pytestmark = pytest.mark.slow

FPS = 10
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    """SQLite only: the job system's own tests cover PostgreSQL."""
    return sqlite_url


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two 2 s mp4s and a webm in a folder with bad files, one more mp4 in a tar."""
    root = tmp_path_factory.mktemp("videos")
    folder = make_shape_videos(root / "set", n=2, seed=3, seconds=2.0, fps=FPS) / "videos"
    frames, _ = make_video_frames(3, 7, seconds=2.0, fps=FPS)
    write_video(folder / "c.webm", frames, FPS)
    long, _ = make_video_frames(3, 8, seconds=4.0, fps=FPS)
    webm = write_video(root / "long.webm", long, FPS).read_bytes()
    (folder / "cut.webm").write_bytes(webm[: int(len(webm) * 0.7)])  # decodes to ~2.5 s
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "junk.mkv").write_bytes(b"\x1aE\xdf\xa3 not really matroska" * 40)
    mkv = write_video(root / "e.mkv", frames[:5], FPS).read_bytes()  # codec id made unknown:
    (folder / "odd.mkv").write_bytes(mkv.replace(b"V_MPEG4/ISO/AVC", b"V_QUUX1/ISO/AVC"))
    (folder / "still.png").write_bytes(_png())
    frames, _ = make_video_frames(3, 9, seconds=1.0, fps=FPS)
    blob = write_video(root / "d.mp4", frames, FPS).read_bytes()
    tar = root / "more.tar"
    with tarfile.open(tar, "w") as t:
        info = tarfile.TarInfo("clips/d.mp4")
        info.size = len(blob)
        t.addfile(info, io.BytesIO(blob))
    return {"folder": folder, "tar": tar}


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (90, 70), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def submit(vlmjobs_cli, wait_for_state, path: Path, spec: dict, timeout: float = 120):
    path.write_text(yaml.safe_dump(spec))
    res = vlmjobs_cli("submit", "infer", str(path))
    assert res.exit_code == 0, res.output
    return wait_for_state(int(res.stdout.strip()), {"succeeded"}, timeout=timeout)


def spec_for(model: Path, inputs: list[Path], **extra: object) -> dict:
    return {
        "kind": "infer",
        "model": {"path": str(model), "dtype": "fp32", "min_pixels": 3136, "max_pixels": 50176},
        "inputs": [str(p) for p in inputs],
        "engine": "hf",
        "batch_size": 8,
        "max_new_tokens": 8,
        **extra,
    }


def rows_of(job_id: int) -> list[Output]:
    with session() as s:
        return list(s.scalars(select(Output).where(Output.job_id == job_id).order_by(Output.id)))


def test_detect_on_sampled_frames_with_bad_files(
    videos, tmp_path, vlmjobs_cli, start_worker, wait_for_state
) -> None:
    model = make_model(tmp_path / "model", "tiny", seed=0)
    start_worker(env=ONE_THREAD)
    job = submit(vlmjobs_cli, wait_for_state, tmp_path / "infer.yaml", spec_for(
        model, [videos["folder"], videos["tar"]], task="detect", labels=["star", "circle"],
        video={"fps": 2.0, "max_frames": 8},
    ))  # fmt: skip
    rows = rows_of(job.id)
    by_file: dict[str, list[Output]] = {}
    for r in rows:
        by_file.setdefault(Path(r.source.split("!")[-1]).name, []).append(r)
    # 2 s at 10 fps, 2 frames a second -> frames 0, 6, 13, 19 (smart_nframes, linspace)
    for name in ("000001.mp4", "000002.mp4", "c.webm"):
        got = sorted((r.t_start, r.t_end, r.item_key.rsplit("#", 1)[1]) for r in by_file[name])
        assert got == [(t / FPS, t / FPS, f"f{t}") for t in (0, 6, 13, 19)], name
        assert {r.status for r in by_file[name]} == {"ok"}
        assert all(r.input_w % 28 == 0 and r.input_w * r.input_h <= 50176 for r in by_file[name])
    assert [r.t_start for r in by_file["d.mp4"]] == [0.0, 0.9]  # 1 s in the tar: 2 frames
    assert by_file["still.png"][0].t_start is None and by_file["still.png"][0].status == "ok"
    failed = {name: rs for name, rs in by_file.items() if any(r.status == "failed" for r in rs)}
    assert set(failed) == {"empty.mp4", "junk.mkv", "odd.mkv", "cut.webm"}
    assert failed["odd.mkv"][0].error.startswith("video: unsupported codec")
    assert failed["empty.mp4"][0].error == "video: empty file (0 bytes)"
    assert failed["junk.mkv"][0].error.startswith("video: not a readable video")
    [cut_end] = [r for r in failed["cut.webm"] if r.status == "failed"]
    assert cut_end.item_key.endswith("#end") and "truncated or damaged" in cut_end.error
    assert cut_end.t_start is not None and cut_end.t_end == pytest.approx(4.0)
    assert len(failed["cut.webm"]) > 1  # the frames decoded before the cut are labeled
    files = 3 + 1 + 1 + 4  # videos that ran, the tar's, the png, the bad ones
    assert (job.progress_done, job.progress_total) == (files, files)
    check_exports_and_render(job.id, rows, vlmjobs_cli, tmp_path)
    # The frames are scored against make-shapes' per-frame truth, matched by <video>#t=<s>.
    truth = videos["folder"].parent / "truth.jsonl"
    res = vlmjobs_cli("dev", "score-shapes", str(job.id), str(truth))
    assert res.exit_code == 0 and "mean IoU" in res.output, res.output
    res = vlmjobs_cli("eval", "--pred", f"job:{job.id}", "--gt", str(truth))
    assert res.exit_code == 0, res.output
    assert "8 prediction(s) matched 8 of 40 ground-truth image(s)" in res.output  # 2 videos


def check_exports_and_render(job_id: int, rows: list[Output], vlmjobs_cli, tmp_path: Path):
    ok = [r for r in rows if r.status == "ok"]
    paths = {}
    for fmt in ("jsonl", "csv", "coco"):
        paths[fmt] = tmp_path / f"out.{fmt}"
        res = vlmjobs_cli("results", str(job_id), "--format", fmt, "--out", str(paths[fmt]))
        assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in paths["jsonl"].read_text().splitlines()]
    assert {(x["key"], x["t_start"], x["t_end"]) for x in lines} == {
        (r.item_key, r.t_start, r.t_end) for r in rows
    }
    assert csv.DictReader(paths["csv"].open()).fieldnames[-2:] == ["t_start", "t_end"]
    coco = json.loads(paths["coco"].read_text())
    frames = [i for i in coco["images"] if "t" in i]
    assert len(coco["images"]) == len(ok) and len(frames) == len(ok) - 1  # the png has no t
    assert {i["file_name"] for i in frames} == {
        f"{r.source}#t={r.t_start:.3f}" for r in ok if r.t_start is not None
    }
    out = tmp_path / "overlays"
    res = vlmjobs_cli("render", str(job_id), "--out", str(out), "--limit", "5")
    assert res.exit_code == 0, res.output
    drawn = sorted(out.glob("*.png"))
    assert len(drawn) == 5 and sum("_t" in p.name for p in drawn) >= 4


@pytest.mark.parametrize("arch", ["tiny", "tiny-qwen3vl"])
def test_describe_one_row_per_window(
    arch, videos, tmp_path, vlmjobs_cli, start_worker, wait_for_state
) -> None:
    model = make_model(tmp_path / "model", arch, seed=0)
    start_worker(env=ONE_THREAD)
    job = submit(vlmjobs_cli, wait_for_state, tmp_path / "infer.yaml", spec_for(
        model, [videos["folder"] / "000001.mp4", videos["tar"]], task="describe",
        video={"fps": 2.0, "window_s": 1.0, "max_frame_tokens": 16, "max_tokens": 64},
    ))  # fmt: skip
    rows = rows_of(job.id)
    assert {r.status for r in rows} == {"ok"}
    spans = sorted((Path(r.source.split("!")[-1]).name, r.t_start, r.t_end) for r in rows)
    assert spans == [("000001.mp4", 0.0, 1.0), ("000001.mp4", 1.0, 2.0), ("d.mp4", 0.0, 1.0)]
    for r in rows:
        assert r.extra["frames"] == 4 and r.parse_status in ("ok", "truncated", "empty")
        assert all(r.t_start <= t < r.t_end for t in r.extra["frame_times"])
        # 4 frames at 16 tokens or fewer each (the total budget 64): 2 temporal patches
        assert r.prompt_tokens is not None and r.input_w * r.input_h <= 16 * 32**2
    assert job.result["ok"] == 3 and job.progress_done == 2
