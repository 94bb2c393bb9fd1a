"""Where things live: every location comes from an environment variable with an embedded default.

| variable             | default                                   |
| -------------------- | ----------------------------------------- |
| VLMJOBS_HOME         | the user's data dir (~/.local/share/vlmjobs) |
| VLMJOBS_DB_URL       | sqlite:///$VLMJOBS_HOME/vlmjobs.db        |
| VLMJOBS_BROKER_URL   | redis://127.0.0.1:6379/0                  |
| VLMJOBS_ARTIFACTS    | $VLMJOBS_HOME/artifacts                   |

Read at call time, not import time, so tests and `vlmjobs up` can point a
process elsewhere by setting the environment.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def home() -> Path:
    path = Path(os.environ.get("VLMJOBS_HOME") or platformdirs.user_data_dir("vlmjobs"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def db_url() -> str:
    return os.environ.get("VLMJOBS_DB_URL") or f"sqlite:///{home() / 'vlmjobs.db'}"


def broker_url() -> str:
    return os.environ.get("VLMJOBS_BROKER_URL") or "redis://127.0.0.1:6379/0"


def artifacts_root() -> Path:
    path = Path(os.environ.get("VLMJOBS_ARTIFACTS") or home() / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path
