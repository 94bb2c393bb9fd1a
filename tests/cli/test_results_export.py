"""Exports of an infer job (jsonl, COCO, Label Studio, csv) and render, read back.

The pure functions are fed known outputs; then the same outputs go into a real
SQLite database and come out through the `vlmjobs results` / `render` commands.
"""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image
from pycocotools.coco import COCO

from vlmjobs.cli.main import cli
from vlmjobs.cli.results import draw_regions, render
from vlmjobs.exports import jsonl_lines, to_coco, to_labelstudio, write_csv


def outputs_for(a: str, b: str) -> list[dict]:
    """Two ok images (200x100 with two regions, 50x40 with none) and one failed item."""
    ok = dict(status="ok", parse_status="ok", raw_text="[...]", error=None, extra={})
    return [
        {
            **ok,
            "key": "k1" * 32,
            "source": a,
            "image_w": 200,
            "image_h": 100,
            "regions": [
                {"bbox": [10.0, 20.0, 110.0, 70.0], "phrase": "a red square", "score": 0.9},
                {"bbox": [150.0, 5.0, 190.0, 95.0], "phrase": "a blue bar", "score": None},
            ],
        },
        {**ok, "key": "k2" * 32, "source": b, "image_w": 50, "image_h": 40, "regions": []},
        {
            "key": "k3" * 32,
            "source": "/x/broken.png",
            "status": "failed",
            "error": "corrupt image: truncated",
            "parse_status": None,
            "raw_text": None,
            "image_w": None,
            "image_h": None,
            "extra": {},
            "regions": [],
        },
    ]


def test_jsonl_round_trip() -> None:
    outs = outputs_for("a.png", "b.png")
    back = [json.loads(line) for line in jsonl_lines(outs)]
    assert back == outs


def test_coco_loads_in_pycocotools(tmp_path: Path) -> None:
    doc = to_coco(outputs_for("a.png", "b.png"))
    path = tmp_path / "preds.json"
    path.write_text(json.dumps(doc))
    coco = COCO(str(path))
    assert sorted(c["name"] for c in coco.loadCats(coco.getCatIds())) == [
        "a blue bar",
        "a red square",
    ]
    assert [i["file_name"] for i in coco.loadImgs(coco.getImgIds())] == ["a.png", "b.png"]
    assert to_coco(outputs_for("a.png", "b.png")[::-1]) == doc  # ids by path, not output order
    red = coco.getCatIds(catNms=["a red square"])[0]
    (ann,) = coco.loadAnns(coco.getAnnIds(catIds=[red]))
    assert ann["bbox"] == [10.0, 20.0, 100.0, 50.0] and ann["score"] == 0.9
    res = coco.loadRes(doc["annotations"])  # the detections format too
    assert len(res.getAnnIds()) == 2 and res.loadAnns(res.getAnnIds())[0]["area"] == 5000.0


def test_labelstudio_percent_coordinates() -> None:
    tasks = to_labelstudio(outputs_for("a.png", "b.png"), "tiny+job:7", mode="labels")
    assert [t["data"]["image"] for t in tasks] == ["a.png", "b.png"]  # failed one left out
    pred = tasks[0]["predictions"][0]
    assert pred["model_version"] == "tiny+job:7" and pred["score"] == 0.9
    value = pred["result"][0]["value"]
    assert value == {
        "x": 5.0,
        "y": 20.0,
        "width": 50.0,
        "height": 50.0,
        "rotation": 0,
        "rectanglelabels": ["a red square"],
    }
    assert pred["result"][0]["original_width"] == 200 and pred["result"][0]["score"] == 0.9
    assert tasks[1]["predictions"][0] == {
        "model_version": "tiny+job:7",
        "score": None,
        "result": [],
    }


def test_csv_one_row_per_region() -> None:
    buf = io.StringIO()
    assert write_csv(outputs_for("a.png", "b.png"), buf) == 2
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert [(r["phrase"], r["x2"], r["score"]) for r in rows] == [
        ("a red square", "110.0", "0.9"),
        ("a blue bar", "190.0", ""),
    ]


def test_draw_regions_marks_the_box_edges() -> None:
    image = Image.new("RGB", (200, 100), "white")
    region = {"bbox": [10.0, 40.0, 110.0, 90.0], "phrase": "x", "score": 0.5}
    drawn = draw_regions(image, [region])
    assert drawn.size == (200, 100) and image.getpixel((10, 60)) == (255, 255, 255)
    assert drawn.getpixel((10, 60)) != (255, 255, 255)  # left edge of the box
    assert drawn.getpixel((60, 65)) == (255, 255, 255)  # inside stays untouched
    assert drawn.getpixel((190, 10)) == (255, 255, 255)  # far away too


@pytest.fixture
def sources(tmp_path: Path) -> tuple[str, str]:
    """A plain PNG (200x100) and a tar member (50x40)."""
    a = tmp_path / "a.png"
    Image.new("RGB", (200, 100), "white").save(a)
    buf = io.BytesIO()
    Image.new("RGB", (50, 40), "gray").save(buf, format="PNG")
    tar_path = tmp_path / "b.tar"
    with tarfile.open(tar_path, "w") as tar:
        info = tarfile.TarInfo("imgs/b.png")
        info.size = len(buf.getvalue())
        tar.addfile(info, io.BytesIO(buf.getvalue()))
    return str(a), f"{tar_path}!imgs/b.png"


def test_render_rereads_files_and_archive_members(tmp_path: Path, sources: tuple) -> None:
    written = render(outputs_for(*sources), tmp_path / "out", limit=None)
    assert [Image.open(p).size for p in written] == [(200, 100), (50, 40)]
    assert render(outputs_for(*sources), tmp_path / "one", limit=1)[0].name.startswith("00000_")
    assert len(list((tmp_path / "one").iterdir())) == 1


@pytest.fixture
def db_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sources: tuple) -> int:
    """An infer job with the outputs above, in a fresh SQLite database."""
    from vlmjobs.db.models import Job, Output, Region
    from vlmjobs.db.session import session

    monkeypatch.setenv("VLMJOBS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VLMJOBS_DB_URL", f"sqlite:///{tmp_path / 'jobs.db'}")
    spec = {"kind": "infer", "model": {"path": "/m/tiny", "adapter": "job:7"}, "inputs": ["/x"]}
    with session() as s:
        job = Job(kind="infer", spec=spec, state="succeeded", queue="gpu")
        s.add(job)
        s.flush()
        for out in outputs_for(*sources):
            fields = {k: v for k, v in out.items() if k not in ("key", "regions")}
            row = Output(job_id=job.id, item_key=out["key"], **fields)
            row.regions = [
                Region(
                    **dict(zip(("x1", "y1", "x2", "y2"), r["bbox"], strict=True)),
                    phrase=r["phrase"],
                    score=r["score"],
                )
                for r in out["regions"]
            ]
            s.add(row)
        return job.id


@pytest.mark.parametrize("fmt", ["jsonl", "coco", "labelstudio", "csv"])
def test_results_command_reads_the_database(tmp_path: Path, db_job: int, fmt: str) -> None:
    out = tmp_path / f"preds.{fmt}"
    result = CliRunner().invoke(cli, ["results", str(db_job), "--format", fmt, "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    if fmt == "jsonl":
        rows = [json.loads(line) for line in text.splitlines()]
        assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
        assert rows[0]["regions"][0]["bbox"] == [10.0, 20.0, 110.0, 70.0]
    elif fmt == "coco":
        coco = COCO(str(out))
        assert len(coco.getAnnIds()) == 2 and len(coco.getImgIds()) == 2
    elif fmt == "labelstudio":
        assert json.loads(text)[0]["predictions"][0]["model_version"] == "tiny+job:7"
    else:
        assert len(list(csv.DictReader(io.StringIO(text)))) == 2


def test_render_command_and_errors(tmp_path: Path, db_job: int) -> None:
    runner = CliRunner()
    result = runner.invoke(
        cli, ["render", str(db_job), "--out", str(tmp_path / "r"), "--limit", "5"]
    )
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "r").glob("*.png"))) == 2
    missing = runner.invoke(cli, ["results", "999"])
    assert missing.exit_code == 2 and "no job 999" in missing.output


def test_status_shows_rate_parse_rate_and_eta(db_job: int) -> None:
    from vlmjobs.db.models import Job, Metric
    from vlmjobs.db.session import session

    with session() as s:
        job = s.get(Job, db_job)
        job.state, job.progress_done, job.progress_total = "running", 30, 130
        s.add_all(
            [
                Metric(job_id=db_job, step=1, name="images_per_s", value=1.0),
                Metric(job_id=db_job, step=2, name="images_per_s", value=4.0),
                Metric(job_id=db_job, step=2, name="parse_ok_rate", value=0.875),
            ]
        )
    result = CliRunner().invoke(cli, ["status", str(db_job)])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.strip().startswith("images"))
    assert line.split(None, 1)[1] == "30/130 done, 4.00 images/s, parse ok 87.5%, ETA 25 s"


def test_results_labelstudio_config_urls_and_coco_gt(tmp_path: Path, db_job: int) -> None:
    runner = CliRunner()
    config = runner.invoke(cli, ["results", str(db_job), "--format", "labelstudio", "--config"])
    assert config.exit_code == 0 and 'perRegion="true"' in config.output
    root = str(tmp_path)
    args = ["--image-root", root, "--image-root-url", "http://h/img"]
    ls = runner.invoke(cli, ["results", str(db_job), "--format", "labelstudio", *args])
    assert ls.exit_code == 0, ls.output
    assert [t["data"]["image"] for t in json.loads(ls.output)] == [
        "http://h/img/a.png",
        "http://h/img/b.tar%21imgs/b.png",
    ]
    gt = tmp_path / "gt.json"
    gt.write_text(
        json.dumps(
            {
                "images": [{"id": 4, "file_name": "a.png", "width": 200, "height": 100}],
                "categories": [{"id": 2, "name": "red square"}],
                "annotations": [],
            }
        )
    )
    coco = runner.invoke(cli, ["results", str(db_job), "--format", "coco", "--gt", str(gt)])
    doc = json.loads(coco.output)
    assert [(a["image_id"], a["category_id"]) for a in doc["annotations"]] == [(4, 2)]
    bad = runner.invoke(
        cli, ["results", str(db_job), "--format", "coco", "--gt", str(config_file(tmp_path))]
    )
    assert bad.exit_code == 2 and "is none of" in bad.output


def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "not-truth.json"
    path.write_text('{"a": 1}')
    return path
