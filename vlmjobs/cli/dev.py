"""`vlmjobs dev ...`: developer tools (offline tiny models, synthetic data)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from vlmjobs.cli.app import cli, friendly_errors


@cli.group()
def dev() -> None:
    """Developer tools: random-weight models and synthetic data, built offline."""


@dev.command("make-model")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--arch",
    type=click.Choice(
        ["tiny", "demo", "3b", "7b"]
        + ["tiny-qwen2vl", "tiny-qwen3vl", "tiny-qwen3vlmoe"]
        + ["qwen3vl-2b", "qwen3vl-4b", "qwen3vl-8b"]
        + ["tiny-qwen35", "tiny-qwen35moe", "qwen35-9b"]
    ),
    default="tiny",
    show_default=True,
    help="tiny: tests (~0.45 M params, random); demo: a ~2.5 M-param Qwen3-VL pre-trained on demo "
    "shapes (2-3 min on CPU); 3b/7b: the real Qwen2.5-VL architectures, random weights; "
    "tiny-qwen2vl / tiny-qwen3vl / tiny-qwen3vlmoe: tiny Qwen2-VL / Qwen3-VL / Qwen3-VL-MoE; "
    "qwen3vl-2b/4b/8b: the real Qwen3-VL architectures, random weights; "
    "tiny-qwen35 / tiny-qwen35moe / qwen35-9b: a tiny Qwen3.5 (hybrid linear attention) / "
    "its MoE / Qwen3.5-9B's architecture",
)
@click.option("--seed", type=int, default=0, show_default=True, help="same seed, same weights")
@click.option(
    "--device", default="cpu", show_default=True, help="where to build (cuda: fast 3b/7b)"
)
def make_model_cmd(out: Path, arch: str, seed: int, device: str) -> None:
    """Write a random-weight Qwen-VL checkpoint to OUT, built offline."""
    from vlmjobs.dev.build import make_model

    started = time.monotonic()
    path = make_model(out, arch=arch, seed=seed, device=device, log=click.echo)
    size = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    click.echo(
        f"{arch} checkpoint at {path} ({size / 2**20:.1f} MiB, "
        f"{time.monotonic() - started:.1f} s, seed {seed})"
    )


@dev.command("quantize")
@click.argument("model", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--nf4",
    "scheme",
    flag_value="nf4",
    required=True,
    help="bitsandbytes 4-bit NormalFloat + double quantization (QLoRA's; the only scheme)",
)
@click.option("--device", default="cpu", show_default=True, help="where to quantize (cuda: fast)")
def quantize_cmd(model: Path, out: Path, scheme: str, device: str) -> None:
    """Write MODEL (a bf16 Qwen-VL checkpoint dir) as a pre-quantized nf4 checkpoint to OUT.

    Loading OUT reads the 4-bit weights as saved: no bf16 weights on the card while loading.
    """
    from vlmjobs.errors import ModelLoadError
    from vlmjobs.vision.quantize import quantize_checkpoint

    started = time.monotonic()
    try:
        path = quantize_checkpoint(model, out, device=device)
    except (ModelLoadError, FileExistsError) as err:
        raise click.UsageError(str(err)) from None
    size = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    click.echo(
        f"{scheme} checkpoint at {path} ({size / 2**20:.1f} MiB, "
        f"{time.monotonic() - started:.1f} s)"
    )


@dev.command("make-shapes")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--n", "n", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--duplicates",
    type=click.FloatRange(0, 1),
    default=0.1,
    show_default=True,
    help="share of images with one near-duplicate annotation (for clean to remove)",
)
@click.option(
    "--style",
    type=click.Choice(["full", "demo"]),
    default="full",
    show_default=True,
    help="full: 200-700 px, 1-5 shapes of 7 kinds, graded backgrounds; demo: ~128 px, one "
    "shape of 4 kinds on plain grey (what the demo model learns)",
)
@click.option(
    "--video",
    is_flag=True,
    help="write N mp4 videos of moving shapes instead, with the boxes of every frame "
    "(video_truth.jsonl; truth.jsonl: one line per frame, named VIDEO#t=SECONDS)",
)
@click.option(
    "--seconds",
    type=click.FloatRange(min=0.1, max=3600),
    default=3.0,
    show_default=True,
    help="--video: length of each video",
)
@click.option(
    "--fps",
    type=click.IntRange(min=1, max=60),
    default=10,
    show_default=True,
    help="--video: frames per second",
)
def make_shapes_cmd(
    out: Path,
    n: int,
    seed: int,
    duplicates: float,
    style: str,
    video: bool,
    seconds: float,
    fps: int,
) -> None:
    """Write N synthetic images (or, with --video, videos) of coloured shapes with exact
    boxes to OUT."""
    from vlmjobs.dev.shapes import make_shapes

    started = time.monotonic()
    if video:
        from vlmjobs.dev.shapes_video import make_shape_videos

        path = make_shape_videos(out, n=n, seed=seed, seconds=seconds, fps=fps)
        click.echo(
            f"{n} videos of {seconds:g} s at {fps} fps at {path} (videos/, video_truth.jsonl, "
            f"truth.jsonl; {time.monotonic() - started:.1f} s)"
        )
        return
    path = make_shapes(out, n=n, seed=seed, duplicates=duplicates, style=style)
    click.echo(
        f"{n} images at {path} (regions.jsonl, region_descriptions.json, image_data.json, "
        f"truth.jsonl; {time.monotonic() - started:.1f} s)"
    )


@dev.command("score-shapes")
@click.argument("job_id", type=int)
@click.argument("truth", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@friendly_errors
def score_shapes_cmd(job_id: int, truth: Path) -> None:
    """Score infer job JOB_ID on a make-shapes data set (its TRUTH file, truth.jsonl).

    Prints one line: parse ok (answers read as written), mean IoU of matched boxes,
    F1 at IoU 0.5 with phrase match (as train's evaluation counts it).
    """
    from vlmjobs.cli.results import _infer_job, iter_outputs
    from vlmjobs.dev.shapes_score import score_outputs

    _infer_job(job_id)
    try:
        score = score_outputs(iter_outputs(job_id), truth)
    except ValueError as error:
        click.echo(f"error: job {job_id}: {error}", err=True)
        sys.exit(2)
    click.echo(score.line())
