"""Parameter types shared by the commands: each refuses a bad value with exit 2 and the choices."""

from __future__ import annotations

import click

from vlmjobs.db.models import State

# Job ids are INTEGER columns: PostgreSQL's is 32-bit. A larger id cannot exist, and
# asking for one must be a usage error, not an overflow deep in the driver.
JOB_ID = click.IntRange(1, 2**31 - 1)
STATES = [s.value for s in State]


def kinds() -> list[str]:
    """The job kinds this installation knows (built-in and VLMJOBS_PLUGINS ones)."""
    from vlmjobs.jobs import KINDS
    from vlmjobs.specs import load_plugins

    load_plugins()
    return sorted(KINDS)


def check_kind(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A click callback: ``value`` must be a known kind (checked at run time: plugins add kinds)."""
    if value is not None and value not in kinds():
        raise click.BadParameter(f"{value!r} is not a job kind: choose one of {', '.join(kinds())}")
    return value
