"""``job:42``: one job's output as another job's input.

| where                 | refers to                 | result key  |
| --------------------- | ------------------------- | ----------- |
| train ``data.path``   | a clean job's data folder | ``data_dir`` |
| infer ``model.adapter`` | a train job's adapter   | ``adapter`` |

The reference stays ``job:42`` in the stored spec and is resolved where it is
used, against that host's ``VLMJOBS_ARTIFACTS``: result paths are relative to
the artifact root, so every host that mounts the root finds the same files.
"""

from __future__ import annotations

from pathlib import Path

from vlmjobs import settings
from vlmjobs.specs.common import JOB_REF, is_job_ref

__all__ = ["is_job_ref", "resolve_job_ref"]


def resolve_job_ref(ref: str, *, kind: str, key: str, what: str) -> Path:
    """The artifact ``result[key]`` of the succeeded ``kind`` job ``ref`` names.

    Raises ValueError saying what is wrong (no such job, another kind, not done yet).
    """
    found = JOB_REF.match(ref)
    if not found:
        raise ValueError(f"{what} {ref!r} is not a job reference: write job:ID")
    from vlmjobs.db.models import Job
    from vlmjobs.db.session import session

    job_id = int(found.group(1))
    with session() as s:
        job = s.get(Job, job_id)
        found_kind, state, result = (job.kind, job.state, job.result) if job else (None, None, None)
    if found_kind != kind:
        which = "no such job" if found_kind is None else f"job {job_id} is a {found_kind} job"
        raise ValueError(f"{what} {ref!r}: {which}; name a {kind} job's id")
    if state != "succeeded" or not result or not result.get(key):
        raise ValueError(
            f"{what} {ref!r}: {kind} job {job_id} is {state} and has no {key} yet; "
            "wait for it to succeed (`vlmjobs status`, or submit it with --wait)"
        )
    path = Path(result[key])
    return path if path.is_absolute() else settings.artifacts_root() / path
