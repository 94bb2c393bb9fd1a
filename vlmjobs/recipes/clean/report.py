"""Counting for the clean job's report: per image, in total, and a histogram.

The report says what cleaning did, so that a surprising number ("removed 99%")
is seen before a GPU hour is spent training on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Regions-per-image histogram bins: [lo, hi) each; the last is open.
HIST_EDGES = (0, 1, 2, 6, 11, 21, 51, 101, 201)
LIST_IN_RESULT = 20  # skipped images named in the job's result (report.json has all)


def hist_labels() -> list[str]:
    labels = []
    for lo, hi in zip(HIST_EDGES, (*HIST_EDGES[1:], None), strict=True):
        if hi is None:
            labels.append(f"{lo}+")
        elif hi - lo == 1:
            labels.append(str(lo))
        else:
            labels.append(f"{lo}-{hi - 1}")
    return labels


def histogram(counts: list[int]) -> list[int]:
    """How many images fall in each bin of :data:`HIST_EDGES`."""
    edges = np.asarray((*HIST_EDGES, np.iinfo(np.int64).max))
    return np.histogram(np.asarray(counts, dtype=np.int64), bins=edges)[0].tolist()


@dataclass
class Tally:
    """Counts accumulated image by image."""

    images_total: int = 0
    per_image: list[dict[str, Any]] = field(default_factory=list)  # key, split, before, after
    skipped: list[dict[str, str]] = field(default_factory=list)  # key, image, kind, reason
    empty: int = 0  # images left with no regions (not written unless keep_empty)
    prompts: dict[str, int] = field(default_factory=dict)  # per-record prompts (JSONL prefixes)
    panels: int = 0  # before/after panels drawn
    records: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0, "test": 0})
    regions: dict[str, int] = field(
        default_factory=lambda: {
            "before": 0,  # regions read from the annotations (well-formed ones)
            "malformed": 0,  # regions with a missing or non-numeric field (not in before)
            "too_small": 0,  # dropped by min_box_size / degenerate after clipping
            "merged": 0,  # folded into another region of the same group and meaning
            "capped": 0,  # dropped by max_regions_per_image
            "after": 0,  # regions in the written targets
        }
    )

    def skip(self, key: str, image: str, kind: str, reason: str) -> None:
        """kind: bad_record | outside_roots | missing | unreadable | wrong_size | bad_size."""
        self.skipped.append({"key": key, "image": image, "kind": kind, "reason": reason})

    def image(self, key: str, split: str | None, counts: dict[str, int]) -> None:
        """Record one processed image; ``split`` None: not written (empty)."""
        for name, n in counts.items():
            self.regions[name] += n
        self.per_image.append(
            {"key": key, "split": split, "before": counts["before"], "after": counts["after"]}
        )

    def common_prompt(self) -> str | None:
        """The most frequent per-record prompt (the manifest's prompt for prefix JSONL)."""
        return max(self.prompts, key=lambda p: self.prompts[p]) if self.prompts else None

    def summary(self) -> dict[str, Any]:
        """The job's result: totals, removed %, histogram, the first skipped images."""
        before, after = self.regions["before"], self.regions["after"]
        reasons: dict[str, int] = {}
        for s in self.skipped:
            reasons[s["kind"]] = reasons.get(s["kind"], 0) + 1
        return {
            "images": {
                "total": self.images_total,
                "processed": len(self.per_image),
                "written": sum(1 for p in self.per_image if p["split"]),
                "empty": self.empty,
                "skipped": len(self.skipped),
                "skipped_by_reason": reasons,
            },
            "records": dict(self.records),
            "regions": dict(self.regions),
            "removed_pct": round(100.0 * (before - after) / before, 2) if before else 0.0,
            "regions_per_image": {
                "bins": hist_labels(),
                "before": histogram([p["before"] for p in self.per_image]),
                "after": histogram([p["after"] for p in self.per_image if p["split"]]),
            },
            "skipped_first": self.skipped[:LIST_IN_RESULT],
        }

    def full(self) -> dict[str, Any]:
        """report.json: the summary plus every image's counts and every skipped image."""
        return {**self.summary(), "skipped": self.skipped, "per_image": self.per_image}
