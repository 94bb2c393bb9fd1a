"""The producer side and the services around the queue: Celery app, submit, reconcile, schedules."""
