"""manifest.json: how a data set's targets were made, so train and infer read them the same way.

Written by clean next to train.jsonl, copied by train into the adapter dir, read by
infer. The pixel budget fixes the frame the boxes in the targets live in
(vision/frames.py); a model trained on one budget must be run with the same one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmjobs.errors import DataError
from vlmjobs.vision.family import FAMILIES, Family
from vlmjobs.vision.frames import Convention
from vlmjobs.vision.tasks import TASKS

FILENAME = "manifest.json"
VERSION = 1
# Qwen2.5-VL: absolute pixels of the smart_resize'd image. Qwen2-VL and Qwen3-VL: 0-1000 of
# the image. The names are what manifests on disk say; vision/frames.py's names follow.
CONVENTIONS = ("qwen2.5-vl-absolute-resized", "qwen2-vl-1000")
FRAME_CONVENTION: dict[str, Convention] = {CONVENTIONS[0]: "absolute", CONVENTIONS[1]: "1000"}
MANIFEST_CONVENTION = {v: k for k, v in FRAME_CONVENTION.items()}


def convention_for(family: Family) -> str:
    """The manifest's name of the box convention ``family`` writes."""
    return MANIFEST_CONVENTION[family.convention]


@dataclass(kw_only=True)
class Manifest:
    """What a set of targets means: base model, family, pixel budget, box convention, prompts.

    ``family`` (a model_type, vision/family.py) fixes the frame factor (28 or 32);
    ``convention`` how the targets' boxes are written. Manifests written before families
    existed carry neither and read as Qwen2.5-VL.
    """

    base_model: str | None
    min_pixels: int
    max_pixels: int
    family: str = "qwen2_5_vl"
    convention: str = CONVENTIONS[0]
    task: str
    prompt: str
    system: str | None = None
    source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if not (isinstance(self.min_pixels, int) and isinstance(self.max_pixels, int)):
            problems.append(f"min_pixels/max_pixels {self.min_pixels!r}/{self.max_pixels!r}: ints")
        elif not 0 < self.min_pixels <= self.max_pixels:
            problems.append(
                f"need 0 < min_pixels {self.min_pixels} <= max_pixels {self.max_pixels}"
            )
        if self.family not in FAMILIES:
            problems.append(f"family {self.family!r} is not one of {', '.join(FAMILIES)}")
        if self.convention not in CONVENTIONS:
            problems.append(
                f"convention {self.convention!r} is not one of {', '.join(CONVENTIONS)}"
            )
        if self.task not in TASKS:
            problems.append(f"task {self.task!r} is not one of {', '.join(TASKS)}")
        if not isinstance(self.prompt, str) or not self.prompt:
            problems.append("prompt must be a non-empty string")
        if problems:
            raise DataError("invalid manifest: " + "; ".join(problems))

    def input_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """(w, h) of the frame the model sees for an original (w, h) image under this budget."""
        return FAMILIES[self.family].input_size(image_size, self.min_pixels, self.max_pixels)

    @property
    def frame_convention(self) -> Convention:
        """The convention as vision/frames.py and vision/parse.py name it."""
        return FRAME_CONVENTION[self.convention]

    def to_dict(self) -> dict[str, Any]:
        return {"version": VERSION, **dataclasses.asdict(self)}

    def write(self, directory: str | Path) -> Path:
        """Write ``directory/manifest.json`` atomically (a reader never sees half a file)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".manifest-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.to_dict(), f, indent=2, ensure_ascii=False)
                f.write("\n")
            os.replace(tmp, directory / FILENAME)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return directory / FILENAME

    @classmethod
    def read(cls, path: str | Path) -> Manifest:
        """Read ``path/manifest.json`` (or ``path`` itself if it is the file).

        Raises DataError naming the file when it is missing, not JSON, or invalid.
        Keys this version does not know are kept in ``extra`` (newer writers).
        """
        path = Path(path)
        file = path / FILENAME if path.is_dir() else path
        if not file.is_file():
            raise DataError(
                f"no {FILENAME} at {str(path)!r}: point at a clean job's output or a train "
                "job's adapter dir (both carry one)"
            )
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"{file} is not valid JSON: {err}") from err
        if not isinstance(data, dict):
            raise DataError(f"{file} must hold a JSON object, got {type(data).__name__}")
        data.pop("version", None)
        known = {f.name for f in dataclasses.fields(cls)}
        extra = dict(data.pop("extra", None) or {})
        extra.update({k: data.pop(k) for k in list(data) if k not in known})
        try:
            return cls(**data, extra=extra)
        except TypeError as err:  # a required key is missing
            raise DataError(f"{file}: {err}") from err
        except DataError as err:
            raise DataError(f"{file}: {err}") from err
