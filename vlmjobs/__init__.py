"""vlmjobs: fine-tune and run Qwen vision-language models as jobs on Celery GPU workers.

Flow of one job: YAML spec -> ``specs`` (validated) -> ``scheduler.submit`` (a
``db`` row, then a Celery message) -> ``worker`` (the run wrapper owns job
state) -> ``recipes.<kind>.recipe.run(spec, ctx)`` -> ``vision`` (model,
frames, regions, parsing).
"""

import logging

__version__ = "0.3.0"

# bitsandbytes' CPU backend warns on import, on CPUs with AVX512-BF16, that it could not
# fetch an optional kernel from the Hugging Face hub. vlmjobs never downloads at run time,
# so the warning only alarms users: keep its errors, drop that warning.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
