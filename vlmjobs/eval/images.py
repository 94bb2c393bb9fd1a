"""Which prediction belongs to which ground-truth image: matched by file name.

A ground-truth image is named by its path relative to the ground truth's image root
("images/000001.png"); a prediction by where infer read it ("/data/set/images/000001.png",
or "/data/shots.tar!images/000001.png" for an archive member). The longest common tail of
path parts decides: the whole relative path when it lines up, else the base name when
only one ground-truth image has it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

_SEPARATORS = re.compile(r"[/\\!]")  # posix, windows, and archive!member


def _parts(name: str) -> tuple[str, ...]:
    return tuple(p for p in _SEPARATORS.split(name) if p and p != ".")


@dataclass
class ImageMatch:
    """``pairs`` maps a prediction's name to a ground-truth image name; the rest did not match."""

    pairs: dict[str, str] = field(default_factory=dict)
    unmatched_pred: list[str] = field(default_factory=list)
    unmatched_gt: list[str] = field(default_factory=list)
    ambiguous: list[str] = field(default_factory=list)

    def summary(self, limit: int = 5) -> str:
        """One paragraph for people: counts, then a few names of each kind of miss."""
        n_gt = len(set(self.pairs.values())) + len(self.unmatched_gt)
        lines = [
            f"images: {len(self.pairs)} prediction(s) matched {len(set(self.pairs.values()))} "
            f"of {n_gt} ground-truth image(s) by file name"
        ]
        for what, names in (
            ("predictions with no ground truth", self.unmatched_pred),
            (
                "ground-truth images with no prediction (their regions count as missed)",
                self.unmatched_gt,
            ),
            ("predictions whose base name fits several ground-truth images", self.ambiguous),
        ):
            if names:
                shown = ", ".join(sorted(names)[:limit])
                more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
                lines.append(f"  {len(names)} {what}: {shown}{more}")
        return "\n".join(lines)


def match_images(pred_names: Iterable[str], gt_names: Iterable[str]) -> ImageMatch:
    """Pair each prediction with the ground-truth image whose path is the longest tail of its own.

    Two predictions of one image (a re-run, a duplicate file): the first one read wins and the
    others are reported as unmatched.
    """
    gt_list = list(dict.fromkeys(gt_names))
    by_tail: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for name in gt_list:
        parts = _parts(name)
        for k in range(1, len(parts) + 1):
            by_tail[parts[-k:]].append(name)
    result = ImageMatch()
    taken: set[str] = set()
    for pred in pred_names:
        parts = _parts(pred)
        found: str | None = None
        for k in range(len(parts), 0, -1):
            hits = by_tail.get(parts[-k:], [])
            if len(hits) == 1:
                found = hits[0]
                break
            if hits and k == 1:
                result.ambiguous.append(pred)
        if found is None or found in taken:
            if pred not in result.ambiguous:
                result.unmatched_pred.append(pred)
            continue
        taken.add(found)
        result.pairs[pred] = found
    result.unmatched_gt = [g for g in gt_list if g not in taken]
    return result
