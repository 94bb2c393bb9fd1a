"""`vlmjobs dashboard`: the web dashboard over the same database the CLI reads.

Loopback by default. Read-only unless VLMJOBS_DASHBOARD_TOKEN is set: then the job
page offers cancel and retry to whoever gives that token.
"""

from __future__ import annotations

import os
import socket

import click

from vlmjobs.cli.app import cli, friendly_errors
from vlmjobs.errors import VlmjobsError

DEFAULT_PORT = 8265


def dashboard_port() -> int:
    """VLMJOBS_DASHBOARD_PORT, else 8265."""
    raw = os.environ.get("VLMJOBS_DASHBOARD_PORT", str(DEFAULT_PORT))
    try:
        return int(raw)
    except ValueError:
        raise VlmjobsError(f"VLMJOBS_DASHBOARD_PORT={raw!r} is not a port number") from None


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option(
    "--port", type=click.IntRange(1, 65535), help="default: VLMJOBS_DASHBOARD_PORT or 8265"
)
@friendly_errors
def dashboard(host: str, port: int | None) -> None:
    """Serve the web dashboard: jobs, curves, overlays, workers, schedules."""
    import uvicorn

    from vlmjobs.dashboard.app import create_app
    from vlmjobs.db.session import ensure_schema

    if port is None:
        try:
            port = dashboard_port()
        except VlmjobsError as e:
            click.echo(f"error: {e}", err=True)
            raise SystemExit(2) from None
    if not port_free(host, port):
        click.echo(
            f"error: {host}:{port} is in use: pass --port or stop what listens there", err=True
        )
        raise SystemExit(2)
    token = os.environ.get("VLMJOBS_DASHBOARD_TOKEN") or None
    ensure_schema()
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(
            f"warning: serving on {host}: whoever reaches it can read jobs and images", err=True
        )
    mode = "cancel/retry with the token" if token else "read-only (set VLMJOBS_DASHBOARD_TOKEN)"
    click.echo(f"dashboard: http://{host}:{port}/  ({mode})", err=True)
    uvicorn.run(create_app(token), host=host, port=port, log_level="warning")
