"""The worker process: Celery tasks, the run wrapper, and the context a recipe writes through."""
