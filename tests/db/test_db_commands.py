"""`vlmjobs db current | check | upgrade | downgrade`, through `python -m vlmjobs` as a user runs
it, on both backends; and the built wheel carries what Alembic needs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def vlmjobs(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vlmjobs", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_db_commands_walk_the_schema(vlmjobs_env: dict[str, str]) -> None:
    res = vlmjobs(vlmjobs_env, "db", "current")
    assert res.returncode == 0 and "at revision None" in res.stdout and "behind" in res.stdout
    assert vlmjobs(vlmjobs_env, "db", "check").returncode == 1  # empty: not at head

    res = vlmjobs(vlmjobs_env, "db", "upgrade")
    assert res.returncode == 0, res.stderr
    head = res.stdout.split("at revision ")[-1].strip()
    assert "up to date" in vlmjobs(vlmjobs_env, "db", "current").stdout
    res = vlmjobs(vlmjobs_env, "db", "check")
    assert res.returncode == 0 and "matching the models" in res.stdout, res.stderr

    res = vlmjobs(vlmjobs_env, "db", "downgrade", "--", "-1")
    assert res.returncode == 2 and "--yes" in res.stderr  # refuses without consent
    res = vlmjobs(vlmjobs_env, "db", "downgrade", "--yes", "--", "-1")
    assert res.returncode == 0, res.stderr
    before = res.stdout.split("at revision ")[-1].strip()
    assert before != head
    res = vlmjobs(vlmjobs_env, "db", "check")
    assert res.returncode == 1 and "run `vlmjobs db upgrade`" in res.stderr
    assert vlmjobs(vlmjobs_env, "db", "upgrade").returncode == 0
    assert vlmjobs(vlmjobs_env, "db", "check").returncode == 0


@pytest.mark.slow
def test_the_wheel_ships_the_migrations(tmp_path: Path) -> None:
    src = tmp_path / "src"  # a copy: setuptools builds in the source tree
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "vlmjobs", src / "vlmjobs", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path), str(src)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("vlmjobs-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    migrations = "vlmjobs/db/migrations/"
    assert {migrations + f for f in ("env.py", "script.py.mako")} <= names
    assert any(n.startswith(migrations + "versions/0001") for n in names)
    assert "vlmjobs/__main__.py" in names and "vlmjobs/py.typed" in names
