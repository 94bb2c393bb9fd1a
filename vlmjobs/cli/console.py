"""Terminal output: rich tables, colours and progress on a terminal; plain lines otherwise.

On a terminal a user gets what peers (pip, huggingface-cli, Celery's own tools) show:
coloured states, tables, a progress bar with rate, elapsed time and ETA. Piped into a
file or a log, the same commands print plain aligned text and one line per progress
update, never ``\\r`` frames or escape codes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from vlmjobs.cli.view import STATE_STYLE


def console(err: bool = False) -> Console:
    """A console on the CURRENT stdout/stderr (click's test runner swaps them per call);
    no wrapping of long lines, no guessing of numbers to colour."""
    return Console(
        file=sys.stderr if err else sys.stdout, highlight=False, soft_wrap=True, emoji=False
    )


def styled_state(state: str) -> str:
    """Rich markup for a job state (plain text when the console is not a terminal)."""
    return f"[{STATE_STYLE.get(state, 'white')}]{escape(state)}[/]"


def print_table(head: Sequence[str], rows: Sequence[Sequence[str]], state_col: int = -1) -> None:
    """A table on stdout: rich on a terminal; plain columns, two spaces apart, otherwise
    (scripts split on whitespace). ``state_col`` is coloured by job state."""
    out = console()
    if not out.is_terminal:
        table = [list(head)] + [list(r) for r in rows]
        widths = [max(len(r[i]) for r in table) for i in range(len(head))]
        for line in table:
            click.echo("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        return
    t = Table(header_style="bold", box=None, pad_edge=False)
    for name in head:
        t.add_column(name)
    for r in rows:
        cells = [Text(c) for c in r]
        if 0 <= state_col < len(r):
            cells[state_col].stylize(STATE_STYLE.get(r[state_col], "white"))
        t.add_row(*cells)
    out.print(t)


class RateColumn(ProgressColumn):
    """Items per second, from rich's moving estimate."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-/s" if speed is None else f"{speed:.2f}/s", style="progress.data.speed")


def terminal_progress(label: str) -> Progress:
    """A rich progress bar on stderr: bar, done/total, rate, elapsed, ETA."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console(err=True),
        transient=False,
    )


class PlainProgress:
    """Progress for logs: one line when progress moves, at most every ``every_s`` seconds,
    with the same figures as the bar (done/total, rate, elapsed, ETA)."""

    def __init__(self, label: str, every_s: float = 5.0) -> None:
        self.label = label
        self.every_s = every_s
        self.t0 = time.monotonic()
        self.first: int | None = None
        self.shown_at = -1e9
        self.shown: int | None = None

    def line(self, done: int, total: int | None, state: str) -> str:
        elapsed = time.monotonic() - self.t0
        if self.first is None:
            self.first = done
        rate = (done - self.first) / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.label} {state}", f"{done}/{total if total else '?'}"]
        parts.append(f"{rate:.2f}/s" if done > self.first else "-/s")
        parts.append(f"elapsed {clock(elapsed)}")
        if total and rate > 0:
            parts.append(f"ETA {clock(max(total - done, 0) / rate)}")
        return "  ".join(parts)

    def update(self, done: int, total: int | None, state: str, final: bool = False) -> None:
        now = time.monotonic()
        moved = done != self.shown
        if final or (moved and now - self.shown_at >= self.every_s):
            click.echo(self.line(done, total, state), err=True)
            self.shown, self.shown_at = done, now


def clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
