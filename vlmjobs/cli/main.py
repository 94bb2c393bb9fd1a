"""The `vlmjobs` command: a click group; each sub-module adds its commands."""

from __future__ import annotations

import click

from vlmjobs import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vlmjobs")
def cli() -> None:
    """Fine-tune and run Qwen2.5-VL as jobs on Celery GPU workers."""


# Each module below adds its commands to `cli` (one name per module).
from vlmjobs.cli import (  # noqa: E402, F401
    dev,
    eval,
    jobs,
    parse,
    results,
    schedule,
    stack,
    workers,
)
