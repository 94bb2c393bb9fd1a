"""The recipes: one module per job kind, each exposing ``run(spec, ctx) -> dict``.

The registry of kinds lives in ``vlmjobs.kinds``; its names are re-exported here so
that plugins written against ``vlmjobs.jobs.register`` keep working.
"""

from vlmjobs.kinds import KINDS, Kind, register, resolve

__all__ = ["KINDS", "Kind", "register", "resolve"]
