"""`vlmjobs results JOB --format jsonl|coco|labelstudio|csv` and `vlmjobs render JOB --out DIR`.

Exports are pure functions over output dicts (what ``iter_outputs`` reads from
the database), boxes in ORIGINAL image pixels:

    {"key", "source", "status", "parse_status", "raw_text", "error", "image_w", "image_h",
     "input_w", "input_h", "prompt_tokens", "generated_tokens", "latency_ms", "extra",
     "regions": [{"bbox": [x1, y1, x2, y2], "phrase": str, "score": float | None}]}

jsonl and csv stream; COCO and Label Studio are one JSON document each, built in memory.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

import click

from vlmjobs.cli.jobs import friendly_errors
from vlmjobs.cli.main import cli
from vlmjobs.errors import JobNotFound

FORMATS = ("jsonl", "coco", "labelstudio", "csv")
CSV_FIELDS = ["key", "source", "image_w", "image_h", "x1", "y1", "x2", "y2", "phrase", "score"]


# --- exports: pure functions -------------------------------------------------------------------


def jsonl_lines(outputs: Iterable[dict[str, Any]]) -> Iterator[str]:
    """One JSON line per image (failed ones too, with their error)."""
    for out in outputs:
        yield json.dumps(out, ensure_ascii=False)


def to_coco(outputs: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """A COCO detection document: images (ok ones), categories (one per distinct phrase, sorted),
    annotations with ``bbox`` [x, y, w, h] and ``score``. Loads in pycocotools' COCO(); its
    ``annotations`` list is also a valid ``loadRes`` input."""
    images: list[dict[str, Any]] = []
    pending: list[tuple[int, dict[str, Any]]] = []
    for out in outputs:
        if out["status"] != "ok":
            continue
        image_id = len(images) + 1
        images.append(
            {
                "id": image_id,
                "file_name": out["source"],
                "width": out["image_w"],
                "height": out["image_h"],
            }
        )
        pending += [(image_id, r) for r in out["regions"]]
    names = sorted({r["phrase"] for _, r in pending})
    category = {name: i + 1 for i, name in enumerate(names)}
    annotations = []
    for n, (image_id, r) in enumerate(pending, start=1):
        x1, y1, x2, y2 = r["bbox"]
        w, h = x2 - x1, y2 - y1
        annotations.append(
            {
                "id": n,
                "image_id": image_id,
                "category_id": category[r["phrase"]],
                "bbox": [x1, y1, w, h],
                "area": w * h,
                "iscrowd": 0,
                "score": 1.0 if r["score"] is None else r["score"],
            }
        )
    return {
        "info": {"description": "vlmjobs infer predictions"},
        "images": images,
        "categories": [
            {"id": i, "name": n, "supercategory": "region"} for n, i in category.items()
        ],
        "annotations": annotations,
    }


def to_labelstudio(outputs: Iterable[dict[str, Any]], model_version: str) -> list[dict[str, Any]]:
    """Label Studio tasks with predictions: rectangles in PERCENT of the original image,
    labels = phrases, per-region score; the prediction's score is the mean region score."""
    tasks = []
    for out in outputs:
        if out["status"] != "ok":
            continue
        w, h = out["image_w"], out["image_h"]
        result = [_ls_rect(i, r, w, h) for i, r in enumerate(out["regions"])]
        scores = [r["score"] for r in out["regions"] if r["score"] is not None]
        tasks.append(
            {
                "data": {"image": out["source"], "key": out["key"]},
                "predictions": [
                    {
                        "model_version": model_version,
                        "score": sum(scores) / len(scores) if scores else None,
                        "result": result,
                    }
                ],
            }
        )
    return tasks


def _ls_rect(i: int, region: dict[str, Any], w: int, h: int) -> dict[str, Any]:
    x1, y1, x2, y2 = region["bbox"]
    return {
        "id": f"r{i}",
        "type": "rectanglelabels",
        "from_name": "label",
        "to_name": "image",
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "score": region["score"],
        "value": {
            "x": 100.0 * x1 / w,
            "y": 100.0 * y1 / h,
            "width": 100.0 * (x2 - x1) / w,
            "height": 100.0 * (y2 - y1) / h,
            "rotation": 0,
            "rectanglelabels": [region["phrase"]],
        },
    }


def write_csv(outputs: Iterable[dict[str, Any]], stream: TextIO) -> int:
    """One row per region (images without regions have no row); returns the row count."""
    writer = csv.DictWriter(stream, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    rows = 0
    for out in outputs:
        for r in out["regions"]:
            x1, y1, x2, y2 = r["bbox"]
            writer.writerow(
                {
                    "key": out["key"],
                    "source": out["source"],
                    "image_w": out["image_w"],
                    "image_h": out["image_h"],
                    **{"x1": x1, "y1": y1, "x2": x2, "y2": y2},
                    "phrase": r["phrase"],
                    "score": "" if r["score"] is None else r["score"],
                }
            )
            rows += 1
    return rows


def export(outputs: Iterable[dict[str, Any]], fmt: str, stream: TextIO, model_version: str) -> None:
    """Write ``outputs`` to ``stream`` in ``fmt`` (one of FORMATS)."""
    if fmt == "jsonl":
        for line in jsonl_lines(outputs):
            stream.write(line + "\n")
    elif fmt == "csv":
        write_csv(outputs, stream)
    elif fmt == "coco":
        json.dump(to_coco(outputs), stream, ensure_ascii=False)
    elif fmt == "labelstudio":
        json.dump(to_labelstudio(outputs, model_version), stream, ensure_ascii=False)
    else:
        raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")


# --- render: boxes and phrases drawn on the original image --------------------------------------


def render(outputs: Iterable[dict[str, Any]], out_dir: Path, limit: int | None) -> list[Path]:
    """Draw up to ``limit`` ok outputs onto their images, re-read from the sources (archive
    members too); one PNG each, named ``<n>_<key12>.png``. Returns the written paths."""
    from vlmjobs.jobs.infer_inputs import decode_image, read_sources
    from vlmjobs.render import draw_regions

    chosen = []
    for out in outputs:
        if out["status"] == "ok":
            chosen.append(out)
            if limit is not None and len(chosen) >= limit:
                break
    out_dir.mkdir(parents=True, exist_ok=True)
    by_source = {o["source"]: o for o in chosen}
    written = []
    for n, (source, data, error) in enumerate(read_sources(list(by_source))):
        if data is None:
            click.echo(f"render: skipped {source}: {error}", err=True)
            continue
        decoded = decode_image(data, max_image_pixels=sys.maxsize)
        if decoded.image is None:
            click.echo(f"render: skipped {source}: {decoded.error}", err=True)
            continue
        out = by_source[source]
        path = out_dir / f"{n:05d}_{out['key'][:12]}.png"
        draw_regions(decoded.image, out["regions"]).save(path)
        written.append(path)
    return written


# --- database side ------------------------------------------------------------------------------


def output_dict(row: Any) -> dict[str, Any]:
    """An ``Output`` row (with its regions) as an export dict."""
    return {
        "key": row.item_key,
        "source": row.source,
        "status": row.status,
        "parse_status": row.parse_status,
        "raw_text": row.raw_text,
        "error": row.error,
        "image_w": row.image_w,
        "image_h": row.image_h,
        "input_w": row.input_w,
        "input_h": row.input_h,
        "prompt_tokens": row.prompt_tokens,
        "generated_tokens": row.generated_tokens,
        "latency_ms": row.latency_ms,
        "extra": row.extra or {},
        "regions": [
            {"bbox": [r.x1, r.y1, r.x2, r.y2], "phrase": r.phrase, "score": r.score}
            for r in sorted(row.regions, key=lambda r: r.id)
        ],
    }


def load_job(job_id: int) -> dict[str, Any]:
    """The job's id, kind, state and spec; JobNotFound when there is none."""
    from vlmjobs.db.models import Job
    from vlmjobs.db.session import session

    with session() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id}: see `vlmjobs status` for the ids")
        return {"id": job.id, "kind": job.kind, "state": job.state, "spec": job.spec}


def iter_outputs(job_id: int, chunk: int = 500) -> Iterator[dict[str, Any]]:
    """The job's outputs in commit order, read ``chunk`` rows (and their regions) at a time."""
    from sqlalchemy import select
    from sqlalchemy.orm import selectinload

    from vlmjobs.db.models import Output
    from vlmjobs.db.session import session

    last = 0
    while True:
        with session() as s:
            rows = s.scalars(
                select(Output)
                .where(Output.job_id == job_id, Output.id > last)
                .order_by(Output.id)
                .limit(chunk)
                .options(selectinload(Output.regions))
            ).all()
            batch = [output_dict(r) for r in rows]
        if not batch:
            return
        last = rows[-1].id
        yield from batch


def throughput_line(s: Any, job: Any) -> str:
    """``images  done/total, N images/s, parse ok P%, ETA T`` for `vlmjobs status JOB` of an
    infer job, from its latest metrics; ETA only while it runs and the total is known."""
    from sqlalchemy import desc, select

    from vlmjobs.db.models import Metric

    latest: dict[str, float] = {}
    for name in ("images_per_s", "parse_ok_rate"):
        value = s.scalars(
            select(Metric.value)
            .where(Metric.job_id == job.id, Metric.name == name)
            .order_by(desc(Metric.id))
            .limit(1)
        ).first()
        if value is not None:
            latest[name] = value
    total = job.progress_total if job.progress_total is not None else "?"
    parts = [f"{job.progress_done}/{total} done"]
    rate = latest.get("images_per_s")
    if rate is not None:
        parts.append(f"{rate:.2f} images/s")
    if "parse_ok_rate" in latest:
        parts.append(f"parse ok {100 * latest['parse_ok_rate']:.1f}%")
    if rate and job.state == "running" and job.progress_total is not None:
        parts.append(f"ETA {max(job.progress_total - job.progress_done, 0) / rate:.0f} s")
    return "  images    " + ", ".join(parts)


def model_version(job: dict[str, Any]) -> str:
    """``<model dir name>[+<adapter>]`` as the job's spec names them."""
    model = job["spec"].get("model", {})
    name = Path(str(model.get("path", "model"))).name
    adapter = model.get("adapter")
    if not adapter:
        return name
    return f"{name}+{adapter if str(adapter).startswith('job:') else Path(adapter).name}"


def _infer_job(job_id: int) -> dict[str, Any]:
    job = load_job(job_id)
    if job["kind"] != "infer":
        raise JobNotFound(f"job {job_id} is a {job['kind']} job: results come from infer jobs")
    return job


@cli.command()
@click.argument("job_id", type=int)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="jsonl", show_default=True)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="file (default: stdout)"
)
@friendly_errors
def results(job_id: int, fmt: str, out: Path | None) -> None:
    """Export an infer job's outputs: boxes in original pixels (Label Studio: percent)."""
    job = _infer_job(job_id)
    outputs = iter_outputs(job_id)
    if out is None:
        export(outputs, fmt, sys.stdout, model_version(job))
        return
    tmp = out.with_name(out.name + ".partial")
    with tmp.open("w", encoding="utf-8", newline="") as stream:
        export(outputs, fmt, stream, model_version(job))
    tmp.replace(out)  # a reader never sees half a file
    click.echo(f"wrote {out}", err=True)


@cli.command("render")
@click.argument("job_id", type=int)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--limit", type=click.IntRange(min=1), default=None, help="at most N images")
@friendly_errors
def render_cmd(job_id: int, out_dir: Path, limit: int | None) -> None:
    """Draw an infer job's boxes and phrases onto its images: one PNG each under DIR."""
    _infer_job(job_id)
    written = render(iter_outputs(job_id), out_dir, limit)
    click.echo(f"wrote {len(written)} image(s) to {out_dir}", err=True)
