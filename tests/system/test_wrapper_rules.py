"""Pure rules of the run wrapper and the queue: what is retried, how priorities map."""

from __future__ import annotations

import errno
import logging

import pytest
import sqlalchemy.exc

from vlmjobs.errors import DataError, ModelLoadError, SpecError
from vlmjobs.scheduler.app import broker_priority
from vlmjobs.worker.context import _JobLogHandler
from vlmjobs.worker.wrapper import retryable


class OutOfMemoryError(RuntimeError):
    """Same name as torch.cuda.OutOfMemoryError: the wrapper matches by name (no torch import)."""


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ConnectionError("reset"), True),  # case: lost connection
        (TimeoutError("slow"), True),  # case: timeout
        (OSError(errno.ENOSPC, "No space left"), False),  # case: a full disk stays full
        (OSError(errno.EDQUOT, "Disk quota exceeded"), False),  # case: so does a quota
        (OSError(errno.EIO, "I/O error"), True),  # case: another OS error may pass
        (OutOfMemoryError("CUDA out of memory"), True),  # case: GPU busy with another process
        (sqlalchemy.exc.OperationalError("x", {}, Exception("db gone")), True),  # case: db blip
        (FileNotFoundError("no such file"), False),  # case: a missing file stays missing
        (PermissionError("denied"), False),  # case: permissions do not fix themselves
        (ValueError("bad"), False),  # case: a bug
        (KeyError("k"), False),  # case: a bug
        (SpecError([("a", "b")]), False),  # case: the user's spec
        (DataError("empty dataset"), False),  # case: the user's data
        (ModelLoadError("no model dir"), False),  # case: the user's model path
    ],
)
def test_retryable(exc: BaseException, expected: bool) -> None:
    assert retryable(exc) is expected


@pytest.mark.parametrize(
    ("ours", "redis"),
    [
        (9, 0),  # case: highest is served first by Redis (0)
        (5, 4),  # case: the default
        (0, 9),  # case: lowest
        (12, 0),  # case: clamped above
        (-3, 9),  # case: clamped below
    ],
)
def test_broker_priority(ours: int, redis: int) -> None:
    assert broker_priority(ours) == redis


def test_unwritable_job_log_warns_once(caplog: pytest.LogCaptureFixture, capsys) -> None:
    log = logging.getLogger("test.joblog")
    handler = _JobLogHandler("/dev/full")  # every write: ENOSPC, as on a full disk
    log.addHandler(handler)
    try:
        with caplog.at_level(logging.WARNING, logger="vlmjobs.worker"):
            for i in range(3):
                log.warning("line %s", i)
    finally:
        log.removeHandler(handler)
        handler.close()
    warnings = [r.getMessage() for r in caplog.records if r.name == "vlmjobs.worker"]
    assert len(warnings) == 1 and "cannot write /dev/full" in warnings[0]
    assert "Logging error" not in capsys.readouterr().err
