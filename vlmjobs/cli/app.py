"""The `vlmjobs` click group and the error handling every command shares.

Command modules import ``cli`` and ``friendly_errors`` from here and add their commands;
``main.py`` only imports them all, so no command module imports another at load time.
Exit codes: 2 for invalid input (a bad spec, an unknown job id), 1 for runtime failures
(a job that failed under --wait, an unreachable database or broker). Errors are one
readable message, never a traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from vlmjobs import __version__, settings
from vlmjobs.db.session import mask_url
from vlmjobs.errors import ConfigError, JobNotFound, SpecError, VlmjobsError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vlmjobs")
def cli() -> None:
    """Fine-tune and run Qwen vision-language models as jobs on Celery GPU workers."""


F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(f: F) -> F:
    """Turn our errors (and unreachable services) into a message and an exit code."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import redis.exceptions
        import sqlalchemy.exc
        from kombu.exceptions import OperationalError as KombuOperationalError

        try:
            return f(*args, **kwargs)
        except SpecError as e:
            click.echo("invalid spec:", err=True)
            for path, msg in e.problems:
                click.echo(f"  {path}: {msg}", err=True)
            sys.exit(2)
        except (JobNotFound, ConfigError) as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except VlmjobsError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as e:
            where = mask_url(settings.db_url())  # never the password
            click.echo(f"error: database {where} unreachable: {e.orig}", err=True)
            click.echo("check VLMJOBS_DB_URL (or run `vlmjobs up`)", err=True)
            sys.exit(1)
        except (redis.exceptions.ConnectionError, KombuOperationalError) as e:
            where = mask_url(settings.broker_url())
            click.echo(f"error: broker {where} unreachable: {e}", err=True)
            click.echo("check VLMJOBS_BROKER_URL (or run `vlmjobs up`)", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]
