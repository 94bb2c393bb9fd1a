"""Reading an infer (or eval) job's outputs back, as the export dicts of ``vlmjobs.exports``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def output_dict(row: Any) -> dict[str, Any]:
    """An ``Output`` row (with its regions) as an export dict."""
    return {
        "key": row.item_key,
        "source": row.source,
        "status": row.status,
        "parse_status": row.parse_status,
        "raw_text": row.raw_text,
        "error": row.error,
        "image_w": row.image_w,
        "image_h": row.image_h,
        "input_w": row.input_w,
        "input_h": row.input_h,
        "prompt_tokens": row.prompt_tokens,
        "generated_tokens": row.generated_tokens,
        "latency_ms": row.latency_ms,
        "t_start": row.t_start,
        "t_end": row.t_end,
        "extra": row.extra or {},
        "regions": [
            {"bbox": [r.x1, r.y1, r.x2, r.y2], "phrase": r.phrase, "score": r.score}
            for r in sorted(row.regions, key=lambda r: r.id)
        ],
    }


def iter_outputs(job_id: int, chunk: int = 500) -> Iterator[dict[str, Any]]:
    """The job's outputs in commit order, read ``chunk`` rows (and their regions) at a time."""
    from sqlalchemy import select
    from sqlalchemy.orm import selectinload

    from vlmjobs.db.models import Output
    from vlmjobs.db.session import session

    last = 0
    while True:
        with session() as s:
            rows = s.scalars(
                select(Output)
                .where(Output.job_id == job_id, Output.id > last)
                .order_by(Output.id)
                .limit(chunk)
                .options(selectinload(Output.regions))
            ).all()
            batch = [output_dict(r) for r in rows]
        if not batch:
            return
        last = rows[-1].id
        yield from batch
