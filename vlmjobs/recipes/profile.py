"""torch.profiler around a few steps of a job, when its spec asks (``profile:``).

Train records optimizer steps, infer batches. What lands under the job's work dir:

    profile/ops.txt      ops and kernels by self time (device time on a GPU), then the
                         phases the recipes mark (``vlmjobs.*`` record_function ranges)
    profile/trace.json   the timeline: open it in https://ui.perfetto.dev

The folder is published like any artifact (written aside, renamed in while the attempt
owns the job). A resumed attempt past ``start_step`` records nothing; a job that ends
inside the window writes what it recorded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from vlmjobs.recipes.context import JobContext
from vlmjobs.specs.common import ProfileSpec

_ROWS = 40


class StepProfiler:
    """Call ``step(n)`` before step ``n`` runs, ``close()`` after the last step, and
    ``abandon()`` on the way out (it does nothing after ``close``)."""

    def __init__(self, spec: ProfileSpec, ctx: JobContext) -> None:
        self.spec = spec
        self.ctx = ctx
        self.cuda = ctx.device.startswith("cuda") and torch.cuda.is_available()
        self._prof: Any = None
        self._last_run = 0  # the last step recorded so far
        self.written: Path | None = None

    def step(self, n: int) -> None:
        if self.spec.steps == 0 or self.written is not None:
            return
        first, last = self.spec.start_step, self.spec.start_step + self.spec.steps - 1
        if self._prof is None and n == first:
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
            self._prof = profile(activities=activities, record_shapes=False)
            self._prof.__enter__()
        elif self._prof is not None and n > last:
            self.close()
            return
        if self._prof is not None:
            self._last_run = n

    def close(self) -> Path | None:
        """Stop recording and write the files; their folder, or None when nothing ran."""
        if self._prof is None:
            return self.written
        prof, self._prof = self._prof, None
        if self.cuda:
            torch.cuda.synchronize()
        prof.__exit__(None, None, None)
        tmp = self.ctx.workdir / f".tmp-profile-{os.getpid()}"
        tmp.mkdir(parents=True, exist_ok=True)
        averages = prof.key_averages()
        sort = "self_device_time_total" if self.cuda else "self_cpu_time_total"
        phases = [e for e in averages if e.key.startswith("vlmjobs.")]
        first, last = self.spec.start_step, self._last_run  # fewer when the job ended first
        text = (
            f"steps {first}-{last}, sorted by {sort}\n\n"
            + averages.table(sort_by=sort, row_limit=_ROWS)
            + "\n\nphases (vlmjobs.* ranges): count, CPU time (wall, launches included)"
            + (", device time (kernels inside)" if self.cuda else "")
            + "\n"
            + "\n".join(
                f"{e.key:36s} {e.count:5d} x  cpu {e.cpu_time_total / 1e3:10.1f} ms"
                + (f"  device {e.device_time_total / 1e3:10.1f} ms" if self.cuda else "")
                for e in sorted(phases, key=lambda e: -e.cpu_time_total)
            )
            + "\n"
        )
        (tmp / "ops.txt").write_text(text)
        prof.export_chrome_trace(str(tmp / "trace.json"))
        self.written = self.ctx.publish(tmp, self.ctx.workdir / "profile")
        self.ctx.event(
            f"profiled steps {first}-{last}: profile/ops.txt, profile/trace.json (Perfetto)"
        )
        return self.written

    def abandon(self) -> None:
        """Stop recording and write nothing (the attempt failed or was told to stop)."""
        if self._prof is not None:
            prof, self._prof = self._prof, None
            prof.__exit__(None, None, None)
