"""`vlmjobs eval` end to end on make-shapes ground truth: export -> eval, checked against
pycocotools run directly, a comparison of two models, a job read from the database."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from vlmjobs.cli.main import cli
from vlmjobs.dev.shapes import make_shapes
from vlmjobs.eval.data import load_truth
from vlmjobs.exports import to_coco


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """12 make-shapes images; their truth as COCO; a perfect and a worse model's outputs."""
    root = tmp_path_factory.mktemp("shapes")
    make_shapes(root, n=12, seed=3)
    rows = [json.loads(line) for line in (root / "truth.jsonl").read_text().splitlines()]
    names = sorted({r["phrase"] for row in rows for r in row["regions"]})
    cat = {n: i for i, n in enumerate(names, start=1)}
    gt = {
        "images": [],
        "categories": [{"id": i, "name": n} for n, i in cat.items()],
        "annotations": [],
    }
    perfect, worse = [], []
    for i, row in enumerate(rows, start=1):
        gt["images"].append(
            {
                "id": 100 + i,
                "file_name": row["image"],
                "width": row["width"],
                "height": row["height"],
            }
        )
        for r in row["regions"]:
            x1, y1, x2, y2 = r["bbox"]
            ann = {
                "id": len(gt["annotations"]) + 1,
                "image_id": 100 + i,
                "category_id": cat[r["phrase"]],
            }
            gt["annotations"].append(
                {
                    **ann,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
        out = {
            "key": str(i),
            "source": str(root / row["image"]),
            "status": "ok",
            "image_w": row["width"],
            "image_h": row["height"],
            "raw_text": "",
        }
        good = [{**r, "score": 0.9} for r in row["regions"]]
        # The worse model: boxes shifted by a third of their width on odd images, a stray box.
        bad = [
            {**r, "bbox": _shift(r["bbox"], i % 2), "score": 0.5 + 0.1 * (i % 2)}
            for r in row["regions"]
        ]
        bad.append({"bbox": [0, 0, 20, 20], "phrase": row["regions"][0]["phrase"], "score": 0.95})
        perfect.append({**out, "regions": good})
        worse.append({**out, "regions": bad})
    worse.append({**worse[0], "source": "/elsewhere/not-in-truth.png"})
    paths = {
        "root": root,
        "gt": root / "gt.json",
        "perfect": root / "perfect.jsonl",
        "worse": root / "worse.jsonl",
    }
    paths["gt"].write_text(json.dumps(gt))
    paths["perfect"].write_text("".join(json.dumps(o) + "\n" for o in perfect))
    paths["worse"].write_text("".join(json.dumps(o) + "\n" for o in worse))
    export = to_coco(worse, truth=load_truth(paths["gt"]))
    paths["export"] = root / "worse.coco.json"
    paths["export"].write_text(json.dumps(export))
    return paths


def _shift(box: list[float], on: int) -> list[float]:
    dx = on * (box[2] - box[0]) / 3
    return [box[0] + dx, box[1], box[2] + dx, box[3]]


def direct_ap(gt: Path, export: Path) -> float:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt))
        evaluator = COCOeval(
            coco, coco.loadRes(json.loads(export.read_text())["annotations"]), "bbox"
        )
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0])


def run_eval(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["eval", *args])
    return result.exit_code, result.stdout, result.stderr


def test_export_then_eval_agrees_with_pycocotools(shapes: dict[str, Path]) -> None:
    code, out, err = run_eval(
        "--pred",
        str(shapes["export"]),
        "--pred",
        str(shapes["worse"]),
        "--gt",
        str(shapes["gt"]),
        "--json",
    )
    assert code == 0, err
    results = json.loads(out)["results"]
    want = direct_ap(shapes["gt"], shapes["export"])
    assert 0.1 < want < 0.9  # a real, middling score: neither case is trivial
    assert [r["metrics"]["AP"] for r in results if r["ranking"] == "ranked"] == pytest.approx(
        [want, want]
    )
    assert set(results[0]["metrics"]) >= {
        "AP",
        "AP50",
        "AP75",
        "APs",
        "APm",
        "APl",
        "AR1",
        "AR10",
        "AR100",
    }
    assert results[2]["images_unmatched_pred"] == ["/elsewhere/not-in-truth.png"]
    assert "1 predictions with no ground truth: /elsewhere/not-in-truth.png" in err


def test_comparison_table(shapes: dict[str, Path]) -> None:
    code, out, err = run_eval(
        "--pred",
        str(shapes["perfect"]),
        "--pred",
        str(shapes["worse"]),
        "--gt",
        str(shapes["root"] / "truth.jsonl"),
        "--metric",
        "coco",
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["pred", "ranking", "AP"] and len(lines) == 5
    assert [line.split()[:3] for line in lines[1:3]] == [
        ["perfect.jsonl", "ranked", "1.0000"],
        ["perfect.jsonl", "confidence=1", "1.0000"],
    ]
    ranked, flat = (float(line.split()[2]) for line in lines[3:5])
    assert ranked < 1.0 and flat != ranked  # the stray box is ranked first only with its score


@pytest.mark.parametrize(
    "args, message",
    [
        pytest.param(["--pred", "nope.json"], "neither job:ID nor a file", id="missing-pred"),
        pytest.param(
            ["--pred", "{perfect}", "--metric", "text"],
            "does not fit this ground truth",
            id="wrong-metric",
        ),
        pytest.param(["--pred", "job:999"], "no job 999", id="no-such-job"),
        pytest.param(
            ["--pred", "{perfect}", "--metric", "densecap", "--unmatched", "fp"],
            "--unmatched fp applies to --metric coco only, not densecap",
            id="unmatched-without-coco",
        ),
        pytest.param(
            ["--pred", "{perfect}", "--metric", "grounding", "--class-agnostic"],
            "--class-agnostic applies to --metric coco only, not grounding",
            id="class-agnostic-without-coco",
        ),
        pytest.param(
            ["--pred", "{perfect}", "--class-agnostic", "--unmatched", "exclude"],
            "nothing is unmatched",
            id="unmatched-with-class-agnostic",
        ),
    ],
)
def test_bad_input_exits_2_naming_it(
    shapes: dict[str, Path],
    args: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VLMJOBS_DB_URL", f"sqlite:///{tmp_path / 'jobs.db'}")
    args = [a.format(perfect=shapes["perfect"]) for a in args]
    code, _, err = run_eval(*args, "--gt", str(shapes["gt"]))
    assert code == 2 and message in err


def test_eval_reads_an_infer_job(
    shapes: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vlmjobs.db.models import Job, Output, Region
    from vlmjobs.db.session import session

    monkeypatch.setenv("VLMJOBS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VLMJOBS_DB_URL", f"sqlite:///{tmp_path / 'jobs.db'}")
    with session() as s:
        job = Job(kind="infer", spec={"kind": "infer"}, state="succeeded", queue="gpu")
        s.add(job)
        s.flush()
        for line in shapes["perfect"].read_text().splitlines():
            out = json.loads(line)
            row = Output(
                job_id=job.id,
                item_key=out["key"],
                source=out["source"],
                status="ok",
                image_w=out["image_w"],
                image_h=out["image_h"],
            )
            row.regions = [
                Region(
                    x1=r["bbox"][0],
                    y1=r["bbox"][1],
                    x2=r["bbox"][2],
                    y2=r["bbox"][3],
                    phrase=r["phrase"],
                    score=r["score"],
                )
                for r in out["regions"]
            ]
            s.add(row)
        job_id = job.id
    code, out, err = run_eval("--pred", f"job:{job_id}", "--gt", str(shapes["gt"]), "--json")
    assert code == 0, err
    assert json.loads(out)["results"][0]["metrics"]["AP"] == pytest.approx(1.0)


def test_unmatched_phrases_are_listed_and_the_flag_decides(
    shapes: dict[str, Path], tmp_path: Path
) -> None:
    """A confident "purple blob" on every image's first shape: left out by default (AP stays
    1.0), a false positive with --unmatched fp (AP drops); listed either way."""
    rows = [json.loads(line) for line in shapes["perfect"].read_text().splitlines()]
    for row in rows:
        first = row["regions"][0]
        row["regions"].append({"bbox": first["bbox"], "phrase": "A purple blob.", "score": 0.99})
    preds = tmp_path / "blobs.jsonl"
    preds.write_text("".join(json.dumps(r) + "\n" for r in rows))
    aps = {}
    for mode in ("exclude", "fp"):
        code, out, err = run_eval(
            "--pred", str(preds), "--gt", str(shapes["gt"]), "--unmatched", mode, "--json"
        )
        assert code == 0, err
        doc = json.loads(out)
        ranked = doc["results"][0]
        assert doc["unmatched"] == mode and ranked["regions_unknown_phrase"] == 12
        assert ranked["unknown_phrases_top"] == [["purple blob", 12]]
        assert "12 region(s) name no ground-truth category" in err and "'purple blob' x12" in err
        aps[mode] = ranked["metrics"]["AP"]
    assert aps["exclude"] == pytest.approx(1.0) and aps["fp"] < 0.9


def test_images_without_prediction_are_named(shapes: dict[str, Path], tmp_path: Path) -> None:
    lines = shapes["perfect"].read_text().splitlines()
    preds = tmp_path / "eleven.jsonl"
    preds.write_text("\n".join(lines[:-1]) + "\n")
    code, out, err = run_eval("--pred", str(preds), "--gt", str(shapes["gt"]), "--json")
    assert code == 0, err
    ranked = json.loads(out)["results"][0]
    missing = Path(json.loads(lines[-1])["source"]).relative_to(shapes["root"]).as_posix()
    assert ranked["images_matched"] == 11 and ranked["images_without_pred_names"] == [missing]
    assert (
        f"1 ground-truth images with no prediction (their regions count as missed): {missing}"
        in err
    )
    assert ranked["metrics"]["AR100"] < 1.0  # its boxes count as missed


def test_visual_genome_truth_scores_like_its_regions_jsonl(shapes: dict[str, Path]) -> None:
    """make-shapes writes one annotation set twice: Visual Genome's region_descriptions.json
    (images named through image_data.json) and regions.jsonl; both score the same."""
    scores = []
    for gt in ("region_descriptions.json", "regions.jsonl"):
        code, out, err = run_eval(
            "--pred",
            str(shapes["perfect"]),
            "--gt",
            str(shapes["root"] / gt),
            "--metric",
            "coco",
            "--json",
        )
        assert code == 0, err
        ranked = json.loads(out)["results"][0]
        assert ranked["images_matched"] == 12 and ranked["images_without_pred_names"] == []
        scores.append(ranked["metrics"])
    assert scores[0] == scores[1] and scores[0]["AP"] > 0.5
