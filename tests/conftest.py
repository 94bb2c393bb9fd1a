"""Shared fixtures: real Redis and PostgreSQL servers, fresh databases, real worker processes.

Typical end-to-end test::

    def test_my_kind(vlmjobs_env, start_worker, vlmjobs_cli, wait_for_state):
        start_worker()                                   # a real `vlmjobs worker` process
        res = vlmjobs_cli("submit", "infer", str(cfg))   # the real CLI, in-process
        job = wait_for_state(int(res.output), {"succeeded"}, timeout=60)

``db_url`` (and so ``vlmjobs_env``) is parametrized over SQLite and PostgreSQL:
a test using it runs once per backend (ids ``[sqlite]`` / ``[postgres]``).
Use ``sqlite_url`` or ``postgres_url`` to pin one. Servers listen on free
random ports, so several suites can run side by side.

Needs: apt packages redis-server and postgresql (15; binaries under
/usr/lib/postgresql/*/bin). PostgreSQL tests are skipped, with the reason,
only when those binaries are absent.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Test-only job kinds (sleepy, noop) live here; workers import them via VLMJOBS_PLUGINS.
PLUGIN_DIR = REPO / "tests" / "system"
PLUGINS = "vlmjobs_testkinds"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


# ---------------------------------------------------------------- Redis


class RedisServer:
    """A real redis-server on 127.0.0.1:<free port>, no persistence (a restart loses all)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        argv = [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
        ]
        log = open(self.workdir / "redis.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        _wait(self.ping, 10, f"redis on port {self.port}")

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_timeout=1).ping())
        except redis.exceptions.ConnectionError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def restart(self) -> None:
        """Stop and start on the same port: every queued message is gone."""
        self.stop()
        self.start()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """Session-wide real Redis (apt redis-server). Tests get their own DB via ``broker_url``."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


_redis_dbs = itertools.cycle(range(1, 16))


@pytest.fixture
def broker_url(redis_server: RedisServer) -> str:
    """A broker URL on the session Redis, a logical DB of its own, flushed for this test."""
    import redis

    if not redis_server.ping():  # a test restarted it and failed halfway
        redis_server.restart()
    db = next(_redis_dbs)
    redis.Redis(port=redis_server.port, db=db).flushdb()
    return redis_server.url(db)


# ---------------------------------------------------------------- PostgreSQL


def _pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PostgresServer:
    """A real PostgreSQL cluster in a temp dir on a free port, trust auth, fsync off.

    As root, the server runs as the ``postgres`` user (PostgreSQL refuses root).
    """

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="vlmjobs-pg-"))
        self.data = self.dir / "data"
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        )
        opts = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            opts,
            "-l",
            str(self.dir / "pg.log"),
            "-w",
            "start",
        )
        self._names = itertools.count(1)

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self.as_user, str(self.bindir / tool), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=self.dir,
        )

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A new empty database; its SQLAlchemy URL."""
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """Session-wide real PostgreSQL (apt postgresql), started only if a test asks for it."""
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    server = PostgresServer(bindir)
    yield server
    server.stop()


# ---------------------------------------------------------------- databases


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh SQLite file database (schema created on first use)."""
    return f"sqlite:///{tmp_path / 'db' / 'vlmjobs.db'}"


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the session PostgreSQL server."""
    return postgres_server.create_database()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh database URL, once per backend: SQLite file, then PostgreSQL."""
    return str(request.getfixturevalue(f"{request.param}_url"))


# ---------------------------------------------------------------- environment


@pytest.fixture
def vlmjobs_env(
    tmp_path: Path, db_url: str, broker_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """Point vlmjobs at this test's database, Redis DB and folders; returns the full env.

    Sets, in os.environ (for in-process calls and CliRunner) and in the returned
    dict (for subprocesses): VLMJOBS_HOME, VLMJOBS_DB_URL, VLMJOBS_BROKER_URL,
    VLMJOBS_ARTIFACTS, VLMJOBS_PLUGINS (the test kinds) with PYTHONPATH, and fast
    timings: heartbeat 0.5 s, stale after 3 s, reconcile every 1 s, re-send a
    queued job's missing message after 2 s.
    """
    from vlmjobs.db.session import dispose_engines

    values = {
        "VLMJOBS_HOME": str(tmp_path / "home"),
        "VLMJOBS_DB_URL": db_url,
        "VLMJOBS_BROKER_URL": broker_url,
        "VLMJOBS_ARTIFACTS": str(tmp_path / "artifacts"),
        "VLMJOBS_PLUGINS": PLUGINS,
        "VLMJOBS_HEARTBEAT_S": "0.5",
        "VLMJOBS_STALE_AFTER_S": "3",
        "VLMJOBS_RECONCILE_S": "1",
        "VLMJOBS_REQUEUE_GRACE_S": "2",
        "PYTHONPATH": os.pathsep.join(
            p for p in [str(PLUGIN_DIR), os.environ.get("PYTHONPATH", "")] if p
        ),
        "PYTHONUNBUFFERED": "1",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    yield dict(os.environ)
    dispose_engines()  # release connections so the next test starts clean


@pytest.fixture
def vlmjobs_cli(vlmjobs_env: dict[str, str]) -> Callable[..., object]:
    """Run ``vlmjobs ARGS...`` in-process (click's CliRunner); returns the click Result.

    ``result.exit_code``, ``result.output`` (stdout) and ``result.stderr``. An
    unexpected Python exception (not SystemExit) is re-raised, so tracebacks
    leaking to users fail the test.
    """
    from click.testing import CliRunner

    from vlmjobs.cli.main import cli

    def run(*args: str) -> object:
        result = CliRunner().invoke(cli, list(args))
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result

    return run


# ---------------------------------------------------------------- workers


@dataclass
class WorkerProcess:
    """A real `vlmjobs worker` subprocess; its output goes to ``log``."""

    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def start_worker(
    vlmjobs_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory: ``start_worker(queues="cpu,gpu", env=None, gpu=None)`` starts a real worker
    process (`vlmjobs worker --cpu-only`, or `--gpu N` when ``gpu`` is given) with
    ``vlmjobs_env`` (plus ``env``), waits until it is ready (it registered in the workers
    table), and returns a WorkerProcess. All are SIGKILLed at teardown.
    """
    from vlmjobs.cli.stack import wait_worker_ready

    started: list[WorkerProcess] = []

    def start(
        queues: str = "cpu,gpu", env: dict[str, str] | None = None, gpu: int | None = None
    ) -> WorkerProcess:
        log = tmp_path / f"worker-{len(started)}.log"
        device = ["--cpu-only"] if gpu is None else ["--gpu", str(gpu)]
        argv = [sys.executable, "-c", "from vlmjobs.cli.main import cli; cli()", "worker"]
        argv += [*device, "--queues", queues]
        proc = subprocess.Popen(
            argv,
            env={**vlmjobs_env, **(env or {})},
            stdout=open(log, "wb"),
            stderr=subprocess.STDOUT,
        )  # noqa: SIM115
        worker = WorkerProcess(proc, log)
        started.append(worker)
        try:
            wait_worker_ready(proc.pid, timeout=60)
        except Exception as e:
            raise RuntimeError(f"worker did not start:\n{worker.output()[-3000:]}") from e
        return worker

    yield start
    for w in started:
        w.kill()
        w.proc.wait(10)


@pytest.fixture
def wait_for_state(vlmjobs_env: dict[str, str]) -> Callable[..., object]:
    """``wait_for_state(job_id, {"succeeded"}, timeout=30) -> Job``: poll the database.

    On timeout the AssertionError shows the job's state, error and events.
    """
    from sqlalchemy import select

    from vlmjobs.db.models import Job, JobEvent
    from vlmjobs.db.session import session

    def wait(job_id: int, states: set[str] | str, timeout: float = 30) -> Job:
        wanted = {states} if isinstance(states, str) else set(states)
        deadline = time.monotonic() + timeout
        while True:
            with session() as s:
                job = s.get(Job, job_id)
                if job is not None and job.state in wanted:
                    return job
                if time.monotonic() > deadline:
                    events = s.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id))
                    state = job.state if job else "missing"
                    raise AssertionError(
                        f"job {job_id} is {state}, not {sorted(wanted)} after {timeout} s; "
                        f"error={job.error if job else None!r}; events={list(events)}"
                    )
            time.sleep(0.1)

    return wait
