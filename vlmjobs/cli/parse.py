"""`vlmjobs parse`: read boxes out of model text, print them in original-image pixels."""

from __future__ import annotations

import json
import re
from typing import IO

import click

from vlmjobs.cli.app import cli

_SIZE = re.compile(r"^\s*(-?\d+)\s*[xX]\s*(-?\d+)\s*$")


def parse_size(value: str, what: str) -> tuple[int, int]:
    """'WxH' -> (w, h); a click.BadParameter (exit 2) naming the value when malformed or <= 0."""
    match = _SIZE.match(value)
    if not match:
        raise click.BadParameter(f"{value!r} is not WxH (e.g. 640x480)", param_hint=what)
    w, h = int(match.group(1)), int(match.group(2))
    if w <= 0 or h <= 0:
        raise click.BadParameter(f"{value!r}: width and height must be positive", param_hint=what)
    return w, h


@cli.command("parse")
@click.option("--input-size", required=True, help="WxH of the frame the model saw (resized image)")
@click.option("--image-size", required=True, help="WxH of the original image")
@click.option(
    "--convention",
    type=click.Choice(["absolute", "1000"]),
    default="absolute",
    show_default=True,
    help="absolute: input-frame pixels (Qwen2.5-VL); 1000: 0-1000 (Qwen-VL, Qwen2-VL, Qwen3-VL)",
)
@click.option("--no-clip", is_flag=True, help="keep boxes that reach outside the image")
@click.argument("file", type=click.File("r", encoding="utf-8"), default="-")
def parse_cmd(
    input_size: str, image_size: str, convention: str, no_clip: bool, file: IO[str]
) -> None:
    """Print the regions in FILE (or stdin) as JSON, boxes in ORIGINAL image pixels.

    Output: {"regions": [{"bbox": [x1, y1, x2, y2], "phrase": ...}], "status": ..., "dropped": N}
    """
    from vlmjobs.vision.parse import parse_regions

    result = parse_regions(
        file.read(),
        input_size=parse_size(input_size, "--input-size"),
        image_size=parse_size(image_size, "--image-size"),
        convention=convention,  # type: ignore[arg-type]
        clip=not no_clip,
    )
    click.echo(json.dumps(result.to_json(), ensure_ascii=False))
