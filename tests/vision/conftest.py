"""Shared fixtures for the vision tests: one tiny checkpoint per session, built offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmjobs.dev.build import make_model


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight tiny Qwen2.5-VL saved like a real checkpoint (~1 s)."""
    return make_model(tmp_path_factory.mktemp("tiny") / "model", arch="tiny", seed=0)
