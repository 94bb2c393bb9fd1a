"""vlmjobs: fine-tune and run Qwen2.5-VL as jobs on Celery GPU workers.

Flow of one job: YAML spec -> ``specs`` (validated) -> ``scheduler.submit`` (a
``db`` row, then a Celery message) -> ``worker`` (the run wrapper owns job
state) -> ``jobs.<kind>.run(spec, ctx)`` (the recipe) -> ``vision`` (model,
frames, regions, parsing).
"""

__version__ = "0.1.0"
