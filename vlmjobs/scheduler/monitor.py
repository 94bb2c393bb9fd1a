"""The Celery app for monitors: ``celery -A vlmjobs.scheduler.monitor flower``.

Flower must use our app, not a bare ``celery --broker=URL``: our Redis transport
options (priority sub-queues and their separator) change how control replies are
routed, so a bare app gets no answer from the workers, and it would not know the
``cpu``/``gpu`` queues either. The broker URL comes from VLMJOBS_BROKER_URL, so no
password appears on a command line.
"""

from __future__ import annotations

from vlmjobs.scheduler.app import get_app

app = get_app()
