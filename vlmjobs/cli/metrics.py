"""`vlmjobs metrics JOB [--csv] [--plot out.png]`: every metric a job recorded.

One row per step, one column per metric name (loss, lr, grad_norm, samples_per_s,
val_loss, val_region_f1, ...). A step a job ran twice (a resumed attempt) shows the
value written last. Metrics without a step (an infer job's totals) come as step "-".
The plot draws loss and every eval metric against step (matplotlib, headless).
"""

from __future__ import annotations

import csv
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import click

from vlmjobs.cli.app import cli, friendly_errors
from vlmjobs.errors import JobNotFound


@dataclass
class MetricTable:
    """``values[i][j]``: metric ``names[j]`` at ``steps[i]`` (None: not recorded there)."""

    steps: list[int | None]
    names: list[str]
    values: list[list[float | None]]

    def column(self, name: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one metric where it was recorded at a step."""
        j = self.names.index(name)
        pairs = [
            (s, row[j])
            for s, row in zip(self.steps, self.values, strict=True)
            if s is not None and row[j] is not None
        ]
        return [s for s, _ in pairs], [v for _, v in pairs if v is not None]


def pivot(rows: list[tuple[int | None, str, float]]) -> MetricTable:
    """(step, name, value) rows in write order -> a table; later writes win."""
    latest: dict[tuple[int | None, str], float] = {}
    for step, name, value in rows:
        latest[(step, name)] = value
    names = sorted({name for _, name in latest}, key=_column_order)
    # Step-less metrics first: they are a job's totals, not points of a curve.
    steps = sorted({step for step, _ in latest}, key=lambda s: (s is not None, s or 0))
    values = [[latest.get((step, name)) for name in names] for step in steps]
    return MetricTable(steps, names, values)


def _column_order(name: str) -> tuple[int, str]:
    """loss, lr, grad_norm first (what people look for), then train metrics, then val_*."""
    first = ("loss", "lr", "grad_norm", "samples_per_s", "epoch")
    if name in first:
        return (first.index(name), name)
    return (len(first) + name.startswith("val_"), name)


def fmt(value: float | None) -> str:
    if value is None:
        return ""
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6) and math.isfinite(value):
        return f"{value:.3e}"
    return f"{value:.4f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))


def write_table(table: MetricTable, stream: TextIO) -> None:
    """Aligned columns, right-justified numbers, blank where a metric has no value."""
    header = ["step", *table.names]
    rows = [
        ["-" if s is None else str(s), *(fmt(v) for v in row)]
        for s, row in zip(table.steps, table.values, strict=True)
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        stream.write("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        stream.write("\n")


def write_csv(table: MetricTable, stream: TextIO) -> None:
    """``step,loss,lr,...``: full precision (repr), empty cells where nothing was recorded."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(["step", *table.names])
    for step, row in zip(table.steps, table.values, strict=True):
        writer.writerow(
            ["" if step is None else step, *("" if v is None else repr(v) for v in row)]
        )


def plot(table: MetricTable, out: Path, title: str) -> Path:
    """PNG of the training loss (with val_loss) and of each other eval metric vs step."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on workers and CI
    import matplotlib.pyplot as plt

    evals = [n for n in table.names if n.startswith("val_") and n != "val_loss"]
    panels = 1 + ("lr" in table.names) + (1 if evals else 0)
    fig, axes = plt.subplots(panels, 1, figsize=(8, 3 * panels), sharex=True, squeeze=False)
    loss_ax = axes[0][0]
    for name in ("loss", "val_loss"):
        if name in table.names:
            loss_ax.plot(
                *table.column(name), marker="." if name == "val_loss" else None, label=name
            )
    loss_ax.set_ylabel("loss (nats / answer token)")
    loss_ax.legend(loc="upper right")
    loss_ax.set_title(title)
    row = 1
    if "lr" in table.names:
        axes[row][0].plot(*table.column("lr"), color="tab:gray")
        axes[row][0].set_ylabel("learning rate")
        row += 1
    if evals:
        for name in evals:
            axes[row][0].plot(*table.column(name), marker="o", label=name)
        axes[row][0].set_ylabel("eval metrics")
        axes[row][0].legend(loc="best")
    axes[-1][0].set_xlabel("optimizer step")
    for ax in axes[:, 0]:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def read_rows(job_id: int) -> tuple[str, list[tuple[int | None, str, float]]]:
    """The job's kind and its (step, name, value) rows in write order."""
    from sqlalchemy import select

    from vlmjobs.db.models import Job, Metric
    from vlmjobs.db.session import session

    with session() as s:
        job = s.get(Job, job_id)
        if job is None:
            raise JobNotFound(f"no job {job_id}: see `vlmjobs status` for the ids")
        rows = s.execute(
            select(Metric.step, Metric.name, Metric.value)
            .where(Metric.job_id == job_id)
            .order_by(Metric.time, Metric.id)
        ).all()
        return job.kind, [(step, name, value) for step, name, value in rows]


@cli.command("metrics")
@click.argument("job_id", type=int)
@click.option("--csv", "as_csv", is_flag=True, help="CSV on stdout instead of a table")
@click.option(
    "--plot",
    "plot_to",
    type=click.Path(dir_okay=False, path_type=Path),
    help="also write a PNG of loss and eval metrics vs step",
)
@friendly_errors
def metrics_cmd(job_id: int, as_csv: bool, plot_to: Path | None) -> None:
    """Every metric JOB recorded: one row per step, one column per metric."""
    kind, rows = read_rows(job_id)
    if plot_to is not None and plot_to.suffix.lower() != ".png":
        click.echo(f"error: --plot {plot_to}: name a .png file", err=True)
        sys.exit(2)
    if not rows:
        click.echo(f"job {job_id} ({kind}) has recorded no metrics yet", err=True)
        sys.exit(1 if plot_to else 0)
    table = pivot(rows)
    (write_csv if as_csv else write_table)(table, sys.stdout)
    if plot_to is not None:
        if not any(s is not None for s in table.steps):
            click.echo(f"job {job_id} has no per-step metrics to plot", err=True)
            sys.exit(1)
        path = plot(table, plot_to, f"job {job_id} ({kind})")
        click.echo(f"plot: {path}", err=True)
