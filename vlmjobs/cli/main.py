"""The `vlmjobs` command: the group (cli/app.py) with every module's commands added."""

from __future__ import annotations

# Each module below adds its commands to `cli` when imported (one name per module).
from vlmjobs.cli import (  # noqa: F401
    dashboard,
    dev,
    eval,
    jobs,
    metrics,
    parse,
    results,
    schedule,
    stack,
    workers,
)
from vlmjobs.cli.app import cli

__all__ = ["cli"]
