"""Named ranges a profile shows (``profile:`` in a spec, see ``recipes/profile.py``).

``record_function`` costs about a microsecond when no profiler runs, so the ranges stay
in the code; ``module_range`` names a whole submodule's forward (the vision tower inside
a transformers model we do not edit).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.profiler import record_function

__all__ = ["module_range", "record_function"]


@contextmanager
def module_range(module: torch.nn.Module, name: str) -> Iterator[None]:
    """Every forward of ``module`` inside the block is a range called ``name``."""
    opened: list[Any] = []

    def enter(*_: Any) -> None:
        rf = record_function(name)
        rf.__enter__()
        opened.append(rf)

    def leave(*_: Any) -> None:
        opened.pop().__exit__(None, None, None)

    handles = [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        while opened:  # a forward that raised left its range open
            opened.pop().__exit__(None, None, None)
