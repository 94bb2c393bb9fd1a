"""`vlmjobs dev ...`: developer tools (offline tiny models, synthetic data)."""

from __future__ import annotations

import click

from vlmjobs.cli.main import cli


@cli.group()
def dev() -> None:
    """Developer tools: random-weight models and synthetic data, built offline."""
