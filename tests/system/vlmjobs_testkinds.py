"""Test-only job kinds, loaded by workers through ``VLMJOBS_PLUGINS=vlmjobs_testkinds``.

``sleepy`` behaves like a small infer job: N items, one output row (with a
region) per item, progress and a metric per item, resume by ``done_keys``,
stop at item boundaries. Every run appends a line to ``workdir/runs.txt``
so tests can count executions across attempts and workers.
"""

from __future__ import annotations

import os
import time
from typing import Any, Literal

from pydantic import Field, field_validator

from vlmjobs.kinds import Kind, register
from vlmjobs.recipes.context import JobContext, OutputRecord, RegionRecord
from vlmjobs.specs.common import JobSpec, Strict, existing_path


class SleepyOptions(Strict):
    r: int = Field(4, ge=1, description="a nested field, for dotted error paths (opts.r)")


class SleepySpec(JobSpec):
    kind: Literal["sleepy"] = "sleepy"
    items: int = Field(3, ge=0)
    sleep_s: float = Field(0.0, ge=0)
    # value: a ValueError (a bug: not retried); flaky: ConnectionError on attempt 1 only;
    # disk-full: a write that gets ENOSPC (to /dev/full).
    fail: Literal["value", "flaky", "disk-full"] | None = None
    data_dir: str | None = None
    # Write workdir/out/owner.txt through ctx.publish at the end (an artifact, as train's
    # adapter): the soak checks that the succeeded attempt's copy is the one on disk.
    publish: bool = False
    opts: SleepyOptions = SleepyOptions()

    @field_validator("data_dir")
    @classmethod
    def _exists(cls, v: str | None) -> str | None:
        return None if v is None else str(existing_path(v, "data_dir"))


def run_sleepy(spec: SleepySpec, ctx: JobContext) -> dict[str, Any]:
    with open(ctx.workdir / "runs.txt", "a") as fh:
        cuda = os.environ.get("CUDA_VISIBLE_DEVICES")
        fh.write(f"attempt={ctx.attempt} pid={os.getpid()} device={ctx.device} cuda={cuda}\n")
    if spec.fail == "value":
        raise ValueError("sleepy was told to fail")
    if spec.fail == "flaky" and ctx.attempt == 1:
        raise ConnectionError("sleepy's first attempt lost its connection")
    if spec.fail == "disk-full":
        with open("/dev/full", "w") as full:  # every write: ENOSPC, as on a full disk
            full.write("a checkpoint")
            full.flush()
    done = ctx.done_keys()
    ctx.event(f"resuming with {len(done)} of {spec.items} items done")
    for i in range(spec.items):
        key = f"item-{i:05d}"
        if key in done:
            continue
        if ctx.should_stop():
            ctx.event(f"stopping at item {i}")
            break
        time.sleep(spec.sleep_s)
        ctx.save_outputs(
            [
                OutputRecord(
                    key,
                    f"mem://{i}",
                    "ok",
                    raw_text=f"text {i}",
                    regions=[RegionRecord(0, 0, i + 1, i + 1, f"box {i}", 0.5)],
                )
            ]
        )
        ctx.progress(i + 1, spec.items)
        ctx.metrics({"loss": 1.0 / (i + 1)}, step=i)
    if spec.publish and not ctx.should_stop():
        tmp = ctx.workdir / f".tmp-out-{os.getpid()}"
        tmp.mkdir(exist_ok=True)
        (tmp / "owner.txt").write_text(f"attempt={ctx.attempt}\n")
        ctx.publish(tmp, ctx.workdir / "out")
    return {"items": len(ctx.done_keys())}


def run_noop(spec: SleepySpec, ctx: JobContext) -> dict[str, Any]:
    return {}


register(Kind("sleepy", "vlmjobs_testkinds:SleepySpec", "vlmjobs_testkinds:run_sleepy", "cpu"))
register(Kind("noop", "vlmjobs_testkinds:NoopSpec", "vlmjobs_testkinds:run_noop", "cpu"))


class NoopSpec(JobSpec):
    kind: Literal["noop"] = "noop"


class ReplaySpec(JobSpec):
    """Replays a regions.jsonl (make-shapes' ground truth) as if a model had predicted it:
    an infer-like job with real image files and boxes, for UI tests, without a model."""

    kind: Literal["replay"] = "replay"
    regions_file: str
    sleep_s: float = Field(0.0, ge=0)


def run_replay(spec: ReplaySpec, ctx: JobContext) -> dict[str, Any]:
    import json
    from pathlib import Path

    path = Path(spec.regions_file)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for i, row in enumerate(rows):
        time.sleep(spec.sleep_s)
        regions = [
            RegionRecord(*r["bbox"], r["phrase"], score=round(0.5 + 0.45 * ((i + j) % 5) / 4, 2))
            for j, r in enumerate(row["regions"])
        ]
        source = str(path.parent / row["image"])
        record = OutputRecord(
            f"replay-{i:05d}", source, "ok", parse_status="ok", regions=regions,
            image_w=row["width"], image_h=row["height"],
        )  # fmt: skip
        ctx.save_outputs([record])
        ctx.progress(i + 1, len(rows))
    return {"images": len(rows)}


register(Kind("replay", "vlmjobs_testkinds:ReplaySpec", "vlmjobs_testkinds:run_replay", "cpu"))
