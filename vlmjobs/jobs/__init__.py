"""The job kinds: one recipe module per kind, each exposing ``run(spec, ctx) -> dict``.

The registry is strings so that importing it (the CLI does) never imports torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Kind:
    name: str
    spec: str  # "module:Class", a subclass of specs.common.JobSpec
    run: str  # "module:function", run(spec, ctx) -> dict (the job's result summary)
    queue: str  # default Celery queue: cpu | gpu


KINDS: dict[str, Kind] = {
    k.name: k
    for k in [
        Kind("clean", "vlmjobs.specs.clean:CleanSpec", "vlmjobs.jobs.clean:run", "cpu"),
        Kind("train", "vlmjobs.specs.train:TrainSpec", "vlmjobs.jobs.train:run", "gpu"),
        Kind("infer", "vlmjobs.specs.infer:InferSpec", "vlmjobs.jobs.infer:run", "gpu"),
        Kind("eval", "vlmjobs.specs.eval:EvalSpec", "vlmjobs.jobs.eval:run", "gpu"),
    ]
}


def register(kind: Kind) -> None:
    """Add a kind (the test suite registers test-only kinds this way)."""
    KINDS[kind.name] = kind


def resolve(ref: str) -> Any:
    """Import "module:attr"."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)
