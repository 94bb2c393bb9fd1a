"""Where things live: every location comes from an environment variable with an embedded default.

| variable             | default                                   |
| -------------------- | ----------------------------------------- |
| VLMJOBS_HOME         | the user's data dir (~/.local/share/vlmjobs) |
| VLMJOBS_DB_URL       | sqlite:///$VLMJOBS_HOME/vlmjobs.db        |
| VLMJOBS_BROKER_URL   | redis://127.0.0.1:6379/0                  |
| VLMJOBS_ARTIFACTS    | $VLMJOBS_HOME/artifacts                   |
| VLMJOBS_ALLOWED_ROOTS| unset: any path (os.pathsep-separated)    |

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
    """The one artifact root every host shares: a local path or a shared mount (NFS, CephFS).

    fsspec URLs (s3://, gs://) are refused: checkpoints, adapters and clean outputs are
    written with plain file APIs (safetensors, save_pretrained, atomic renames), so an
    object store has to be mounted (s3fs, gcsfuse, mountpoint-s3) and named by its path.
    """
    raw = os.environ.get("VLMJOBS_ARTIFACTS") or str(home() / "artifacts")
    if "://" in raw:
        raise ValueError(
            f"VLMJOBS_ARTIFACTS={raw!r} is a URL; vlmjobs writes artifacts through the file "
            "system: mount it (s3fs, gcsfuse, NFS) at the same path on every host and set that path"
        )
    path = Path(raw).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def allowed_roots() -> list[Path] | None:
    """Directories spec paths must lie under (symlinks resolved), or None for no limit.

    VLMJOBS_ALLOWED_ROOTS is os.pathsep-separated; the artifact root is always allowed,
    because clean outputs and adapters live there and train/infer read them.
    """
    raw = os.environ.get("VLMJOBS_ALLOWED_ROOTS", "").strip()
    if not raw:
        return None
    roots = [Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p.strip()]
    return [*roots, artifacts_root().resolve()]
