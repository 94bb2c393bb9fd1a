"""What a recipe (``recipes/<kind>/recipe.py``) may ask of the worker while it runs.

The worker (``worker/context.py``) implements this; recipes only see the
protocol, so they never touch job state themselves: ``db/lifecycle.py`` moves a
job between queued / running / succeeded / failed / cancelled. Every write
below is fenced: once another attempt owns the job it raises ``LostOwnership``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


@dataclass
class RegionRecord:
    """One region of one output, box xyxy in ORIGINAL image pixels."""

    x1: float
    y1: float
    x2: float
    y2: float
    phrase: str
    score: float | None = None


@dataclass
class OutputRecord:
    """One processed item (an image of an infer job). ``item_key`` is unique per job."""

    item_key: str  # content hash (sha256 hex) of the item's bytes
    source: str  # where it came from: a path, or "archive.tar!member/name.jpg"
    status: str  # ok | failed
    raw_text: str | None = None
    parse_status: str | None = None  # ok | repaired | truncated | empty | unparseable
    error: str | None = None  # reason when status == failed
    image_w: int | None = None
    image_h: int | None = None
    input_w: int | None = None  # the resized frame the model saw
    input_h: int | None = None
    prompt_tokens: int | None = None
    generated_tokens: int | None = None
    latency_ms: float | None = None
    # A video's row: the seconds it covers (a window; a sampled frame: t_start == t_end).
    t_start: float | None = None
    t_end: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    regions: list[RegionRecord] = field(default_factory=list)


class JobContext(Protocol):
    job_id: int
    attempt: int  # 1 on the first run, 2 after one redelivery / requeue, ...
    workdir: Path  # this job's folder under the artifact root; survives attempts
    device: str  # "cuda" (the worker's one pinned GPU) or "cpu"
    log: logging.Logger  # goes to the job's log (`vlmjobs logs`)

    def progress(self, done: int, total: int | None = None) -> None:
        """Record progress; also the heartbeat. Call at least every few seconds."""

    def metrics(self, values: dict[str, float], step: int | None = None) -> None:
        """Record metric values (loss, lr, samples_per_s, gpu_mem_gib, ...) at a step."""

    def event(self, message: str, level: str = "info") -> None:
        """A line in the job's event list (shown by `status JOB` and `logs`)."""

    def should_stop(self) -> bool:
        """True when the job was cancelled or the worker is shutting down.

        Check it at every step / batch boundary; when True, save what you have
        (a checkpoint, the committed outputs) and return. The wrapper decides
        whether that ends as cancelled or is re-queued to resume.
        """

    def record_checkpoint(
        self, step: int, path: Path, metrics: dict[str, float], is_best: bool = False
    ) -> None:
        """One row per checkpoint written (atomically) under ``workdir``."""

    def publish(self, tmp: Path, final: Path) -> Path:
        """Rename the finished directory ``tmp`` (named private to this attempt, under
        ``workdir``) to ``final``, replacing it, only while this attempt owns the job;
        otherwise delete ``tmp`` and raise LostOwnership. Returns ``final``."""

    def forget_checkpoint(self, path: Path) -> None:
        """Drop the row of a checkpoint the recipe deleted (keep-last-k)."""

    def done_keys(self) -> set[str]:
        """Item keys this job already committed (resume skips them); for a scheduled run,
        also the keys other runs of its schedule labeled ok (so each run labels only new items)."""

    def add_sources(self, aliases: Iterable[tuple[str, str]]) -> None:
        """Record more sources of already saved items: ``(item_key, source)`` pairs of
        identical images read from elsewhere, kept in the row's ``extra["sources"]``
        (the first source included) so every file shows up in exports."""

    def output_counts(self) -> dict[str, int]:
        """This job's committed outputs by status (``{"ok": 130, "failed": 2}``), over
        every attempt: what a result reports, not just the last attempt's share."""

    def save_outputs(self, outputs: Iterable[OutputRecord]) -> int:
        """Commit outputs and their regions in one transaction; keys already saved are skipped.

        Returns how many were new.
        """

    def resident(self, key: str, factory: Callable[[], T]) -> T:
        """A worker-lifetime cache (loaded base models): same key, same object, across jobs."""
