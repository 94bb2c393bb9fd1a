"""`vlmjobs results JOB --format jsonl|coco|labelstudio|csv` and `vlmjobs render JOB --out DIR`.

The exporters themselves are pure functions in ``vlmjobs.exports``; this module reads
an infer job's outputs from the database (``iter_outputs``) and hands them over.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click

from vlmjobs.cli.app import cli, friendly_errors
from vlmjobs.cli.params import JOB_ID
from vlmjobs.db.outputs import iter_outputs
from vlmjobs.errors import JobNotFound
from vlmjobs.exports import FORMATS, LS_MODES, export, image_url, labelstudio_config

# --- render: boxes and phrases drawn on the original image --------------------------------------


def render(outputs: Iterable[dict[str, Any]], out_dir: Path, limit: int | None) -> list[Path]:
    """Draw up to ``limit`` ok outputs onto their images, re-read from the sources (archive
    members too); one PNG each, named ``<n>_<key12>.png``. A video's row is drawn on its
    frame at ``t_start`` (``<n>_<key12>_t<seconds>.png``). Returns the written paths."""
    from vlmjobs.recipes.infer.inputs import decode_image, read_sources
    from vlmjobs.render import draw_regions

    chosen = []
    for out in outputs:
        if out["status"] == "ok":
            chosen.append(out)
            if limit is not None and len(chosen) >= limit:
                break
    out_dir.mkdir(parents=True, exist_ok=True)
    by_source: dict[str, list[dict[str, Any]]] = {}
    for o in chosen:
        by_source.setdefault(o["source"], []).append(o)
    written: list[Path] = []
    for source, data, error in read_sources(list(by_source)):
        if data is None:
            click.echo(f"render: skipped {source}: {error}", err=True)
            continue
        rows = by_source[source]
        if rows[0].get("t_start") is not None:
            pictures = _video_frames(data, rows)
        else:
            decoded = decode_image(data, max_image_pixels=sys.maxsize)
            pictures = [(rows[0], decoded.image, decoded.error)]
        for out, image, why in pictures:
            if image is None:
                click.echo(f"render: skipped {source}: {why}", err=True)
                continue
            stem = f"{len(written):05d}_{out['key'][:12]}"
            if out.get("t_start") is not None:
                stem += f"_t{out['t_start']:.2f}"
            path = out_dir / f"{stem}.png"
            draw_regions(image, out["regions"]).save(path)
            written.append(path)
    return written


def _video_frames(data: bytes, rows: list[dict[str, Any]]) -> list[tuple[dict, Any, str | None]]:
    """(row, its frame at t_start or None, why not) for each row of one video."""
    from vlmjobs.vision.video import VideoError, frames_at

    try:
        frames = frames_at(data, [float(r["t_start"]) for r in rows])
    except VideoError as e:
        return [(r, None, str(e)) for r in rows]
    return [
        (r, f, None if f is not None else "no frame at that time")
        for r, f in zip(rows, frames, strict=True)
    ]


# --- database side ------------------------------------------------------------------------------


def load_job(job_id: int) -> dict[str, Any]:
    """The job's id, kind, state and spec; JobNotFound when there is none."""
    from vlmjobs.db import lifecycle
    from vlmjobs.db.session import session

    with session() as s:
        job = lifecycle.get(s, job_id)
        return {"id": job.id, "kind": job.kind, "state": job.state, "spec": job.spec}


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
    if job["kind"] not in ("infer", "eval"):
        raise JobNotFound(
            f"job {job_id} is a {job['kind']} job: results come from infer and eval jobs"
        )
    return job


@cli.command()
@click.argument("job_id", type=JOB_ID)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="jsonl", show_default=True)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="file (default: stdout)"
)
@click.option(
    "--gt",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="coco: take image ids, file names and categories from this ground truth",
)
@click.option("--class-agnostic", is_flag=True, help="coco: one category; phrase in `caption`")
@click.option(
    "--ls-mode",
    type=click.Choice(LS_MODES),
    default="captions",
    show_default=True,
    help="labelstudio: a per-region phrase TextArea, or a Label per phrase",
)
@click.option("--config", is_flag=True, help="labelstudio: print the labeling config instead")
@click.option("--image-root-url", help="labelstudio: URL prefix Label Studio serves images from")
@click.option(
    "--image-root",
    help="labelstudio: the directory --image-root-url serves (default: the images' common parent)",
)
@friendly_errors
def results(
    job_id: int,
    fmt: str,
    out: Path | None,
    gt: Path | None,
    class_agnostic: bool,
    ls_mode: str,
    config: bool,
    image_root_url: str | None,
    image_root: str | None,
) -> None:
    """Export an infer job's outputs: boxes in original pixels (Label Studio: percent)."""
    job = _infer_job(job_id)
    if config:
        phrases = (r["phrase"] for o in iter_outputs(job_id) for r in o["regions"])
        click.echo(labelstudio_config(ls_mode, phrases if ls_mode == "labels" else ()), nl=False)
        return
    options: dict[str, Any] = {"class_agnostic": class_agnostic, "ls_mode": ls_mode}
    if gt is not None:
        options["truth"] = _read_truth(gt)
    if image_root_url:
        root = image_root or _common_parent(o["source"] for o in iter_outputs(job_id))
        options["url"] = lambda source: image_url(source, root, image_root_url)
    outputs = iter_outputs(job_id)
    if out is None:
        export(outputs, fmt, sys.stdout, model_version(job), **options)
        return
    tmp = out.with_name(out.name + ".partial")
    with tmp.open("w", encoding="utf-8", newline="") as stream:
        export(outputs, fmt, stream, model_version(job), **options)
    tmp.replace(out)  # a reader never sees half a file
    click.echo(f"wrote {out}", err=True)


def _read_truth(path: Path) -> Any:
    from vlmjobs.eval.data import load_truth

    try:
        return load_truth(path)
    except (ValueError, KeyError, json.JSONDecodeError) as e:
        raise click.BadParameter(str(e), param_hint="--gt") from e


def _common_parent(sources: Iterable[str]) -> str:
    paths = [s.split("!", 1)[0] for s in sources]
    if not paths:
        return "/"
    return os.path.commonpath([os.path.dirname(p) for p in paths])


@cli.command("render")
@click.argument("job_id", type=JOB_ID)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--limit", type=click.IntRange(min=1), default=None, help="at most N images")
@friendly_errors
def render_cmd(job_id: int, out_dir: Path, limit: int | None) -> None:
    """Draw an infer job's boxes and phrases onto its images: one PNG each under DIR."""
    _infer_job(job_id)
    written = render(iter_outputs(job_id), out_dir, limit)
    click.echo(f"wrote {len(written)} image(s) to {out_dir}", err=True)
