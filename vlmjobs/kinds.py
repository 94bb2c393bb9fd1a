"""The job kinds: name -> spec model, recipe, preflight and default queue.

A leaf module: it imports nothing of vlmjobs, and its references are strings
("module:attr"), so the CLI reads the registry without importing torch.
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
    # "module:function", preflight(spec): fail fast before any model loads, raising a
    # VlmjobsError that says what to change. Submit calls it once, the recipe's setup
    # once per attempt (and may use what it returns).
    preflight: str | None = None


KINDS: dict[str, Kind] = {
    k.name: k
    for k in [
        Kind("clean", "vlmjobs.specs.clean:CleanSpec", "vlmjobs.recipes.clean.recipe:run", "cpu"),
        Kind(
            "train",
            "vlmjobs.specs.train:TrainSpec",
            "vlmjobs.recipes.train.recipe:run",
            "gpu",
            preflight="vlmjobs.recipes.train.preflight:preflight",
        ),
        Kind(
            "infer",
            "vlmjobs.specs.infer:InferSpec",
            "vlmjobs.recipes.infer.recipe:run",
            "gpu",
            preflight="vlmjobs.recipes.infer.memory:preflight",
        ),
        Kind("eval", "vlmjobs.specs.eval:EvalSpec", "vlmjobs.recipes.eval.recipe:run", "gpu"),
    ]
}


def register(kind: Kind) -> None:
    """Add a kind (the test suite registers test-only kinds this way)."""
    KINDS[kind.name] = kind


def resolve(ref: str) -> Any:
    """Import "module:attr"."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def preflight(spec: Any) -> None:
    """Submit's call of the kind's preflight: what it refuses becomes a SpecError (exit 2)."""
    from vlmjobs.errors import SpecError, VlmjobsError

    ref = KINDS[spec.kind].preflight
    if ref is None:
        return
    try:
        resolve(ref)(spec)
    except SpecError:
        raise
    except VlmjobsError as error:
        raise SpecError([("preflight", str(error))]) from None
