"""Several worker "hosts" on one machine: network namespaces sharing one Redis, one
PostgreSQL and one artifact root.

Layout (created here, removed at teardown; addresses exist only inside the namespaces)::

    <svc> redis :6379, postgres :5432      10.203.1.1 -- veth -- 10.203.1.2  <host-a>
                                           10.203.2.1 -- veth -- 10.203.2.2  <host-b>

Each host runs `vlmjobs worker` in its own namespace and UTS namespace (so its
hostname differs), with its own VLMJOBS_HOME scratch dir and the shared
VLMJOBS_ARTIFACTS. The test process talks to the services through their unix
sockets (which ignore network namespaces), so nothing is added to the machine's
own network.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from conftest import PLUGIN_DIR, PLUGINS, _pg_bindir, _wait
from sqlalchemy import select

from vlmjobs.db.models import Checkpoint, Job, JobEvent, Metric, Worker
from vlmjobs.db.session import dispose_engines, session
from vlmjobs.scheduler.submit import submit
from vlmjobs.specs import load_spec
from vlmjobs.worker.context import workdir_for

pytestmark = pytest.mark.slow
HOSTS = ("host-a", "host-b")
PG_PORT, REDIS_PORT = 5432, 6379


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _netns_refused() -> str | None:
    """Why network namespaces cannot be used here, or None when they can."""
    if shutil.which("ip") is None or os.geteuid() != 0:
        return "needs root and iproute2 (`ip netns`)"
    probe = f"vjprobe{os.getpid()}"
    try:
        _ip("netns", "add", probe)
        _ip("netns", "del", probe)
    except subprocess.CalledProcessError as e:
        return f"`ip netns add` is not permitted here: {e.stderr.decode().strip()}"
    return None


@dataclass
class Cluster:
    """Namespaces, the shared services, and the worker processes started on the hosts."""

    tmp: Path
    prefix: str
    namespaces: list[str] = field(default_factory=list)
    servers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def svc(self) -> str:
        return f"{self.prefix}-svc"

    @property
    def artifacts(self) -> Path:
        return self.tmp / "artifacts"

    def client_env(self) -> dict[str, str]:
        """The test process's view: the services' unix sockets."""
        return {
            "VLMJOBS_DB_URL": f"postgresql://postgres@/vlmjobs?host={self.tmp}&port={PG_PORT}",
            "VLMJOBS_BROKER_URL": f"redis+socket://{self.tmp / 'redis.sock'}",
            "VLMJOBS_ARTIFACTS": str(self.artifacts),
            "VLMJOBS_HOME": str(self.tmp / "client-home"),
        }

    def host_env(self, index: int, host: str) -> dict[str, str]:
        """A worker host's view: the services over its veth link, its own scratch home."""
        svc_ip = f"10.203.{index}.1"
        return {
            **os.environ,
            "VLMJOBS_DB_URL": f"postgresql://postgres@{svc_ip}:{PG_PORT}/vlmjobs",
            "VLMJOBS_BROKER_URL": f"redis://{svc_ip}:{REDIS_PORT}/0",
            "VLMJOBS_ARTIFACTS": str(self.artifacts),
            "VLMJOBS_HOME": str(self.tmp / host / "home"),
            "VLMJOBS_PLUGINS": PLUGINS,
            "PYTHONPATH": os.pathsep.join([str(PLUGIN_DIR), os.environ.get("PYTHONPATH", "")]),
            "VLMJOBS_HEARTBEAT_S": "0.5",
            "VLMJOBS_STALE_AFTER_S": "3",
            "VLMJOBS_RECONCILE_S": "1",
            "VLMJOBS_REQUEUE_GRACE_S": "2",
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }

    def start_worker(self, host: str) -> subprocess.Popen[bytes]:
        index = HOSTS.index(host) + 1
        ns = f"{self.prefix}-{host}"
        # unshare --uts: a hostname of its own, as a real second host has; exec keeps the pid.
        argv = ["ip", "netns", "exec", ns, "unshare", "--uts", "sh", "-c"]
        argv += [f'hostname {host} && exec "$0" "$@"', sys.executable, "-c"]
        argv += ["from vlmjobs.cli.main import cli; cli()", "worker", "--cpu-only"]
        log = open(self.tmp / f"{host}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [*argv, "--queues", "cpu,gpu"],
            env=self.host_env(index, host),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.workers[host] = proc
        _wait(lambda: _registered(proc), 60, f"the worker on {host}: {self.log(host)[-2000:]}")
        return proc

    def log(self, host: str) -> str:
        path = self.tmp / f"{host}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _registered(proc: subprocess.Popen[bytes]) -> bool:
    assert proc.poll() is None, f"worker exited with {proc.returncode}"
    with session() as s:
        return s.scalar(select(Worker.name).where(Worker.pid == proc.pid)) is not None


def _make_network(c: Cluster) -> None:
    """One veth pair per host, both ends created inside their namespaces (never in the
    machine's own): svc end 10.203.i.1/24, host end 10.203.i.2/24."""
    for name in (c.svc, *(f"{c.prefix}-{h}" for h in HOSTS)):
        _ip("netns", "add", name)
        c.namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
    for i, host in enumerate(HOSTS, start=1):
        ns = f"{c.prefix}-{host}"
        pair = ["name", f"svc{i}", "netns", c.svc, "type", "veth", "peer", "name", "eth0"]
        _ip("link", "add", *pair, "netns", ns)
        _ip("-n", c.svc, "addr", "add", f"10.203.{i}.1/24", "dev", f"svc{i}")
        _ip("-n", ns, "addr", "add", f"10.203.{i}.2/24", "dev", "eth0")
        for where, dev in ((c.svc, f"svc{i}"), (ns, "eth0")):
            _ip("-n", where, "link", "set", dev, "up")


def _start_redis(c: Cluster) -> None:
    import redis

    argv = ["ip", "netns", "exec", c.svc, shutil.which("redis-server") or "redis-server"]
    argv += ["--bind", "0.0.0.0", "--port", str(REDIS_PORT), "--protected-mode", "no"]
    argv += ["--unixsocket", str(c.tmp / "redis.sock"), "--save", "", "--dir", str(c.tmp)]
    log = open(c.tmp / "redis.log", "ab")  # noqa: SIM115
    c.servers.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
    client = redis.Redis(unix_socket_path=str(c.tmp / "redis.sock"), socket_timeout=1)

    def pings() -> bool:
        try:
            return bool(client.ping())
        except redis.exceptions.ConnectionError:
            return False

    _wait(pings, 10, "redis in the services namespace")


def _pg(c: Cluster, bindir: Path, tool: str, *args: str, netns: bool = False) -> None:
    wrap = ["ip", "netns", "exec", c.svc] if netns else []
    subprocess.run(
        [*wrap, "runuser", "-u", "postgres", "--", str(bindir / tool), *args],
        check=True,
        capture_output=True,
        cwd=c.tmp,
    )


def _start_postgres(c: Cluster, bindir: Path) -> None:
    import psycopg

    data = c.tmp / "pgdata"
    _pg(c, bindir, "initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    with open(data / "pg_hba.conf", "a") as fh:
        fh.write("host all all 10.203.0.0/16 trust\n")  # the hosts' links, nothing else
    opts = f"-p {PG_PORT} -k {c.tmp} -c listen_addresses=* -c fsync=off"
    log = str(c.tmp / "pg.log")
    _pg(c, bindir, "pg_ctl", "-D", str(data), "-o", opts, "-l", log, "-w", "start", netns=True)
    with psycopg.connect(
        host=str(c.tmp), port=PG_PORT, user="postgres", dbname="postgres", autocommit=True
    ) as conn:
        conn.execute("CREATE DATABASE vlmjobs")


def _teardown(c: Cluster, bindir: Path) -> None:
    for proc in [*c.workers.values(), *c.servers]:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    if (c.tmp / "pgdata" / "postmaster.pid").exists():
        _pg(c, bindir, "pg_ctl", "-D", str(c.tmp / "pgdata"), "-m", "immediate", "stop")
    for name in c.namespaces:  # deleting a namespace deletes its veth ends
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    reason = _netns_refused()
    if reason:
        pytest.skip(reason)
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    # Not pytest's tmp_path: the postgres user must reach the data dir and socket.
    tmp = Path(tempfile.mkdtemp(prefix="vlmjobs-hosts-"))
    os.chmod(tmp, 0o755)
    shutil.chown(tmp, "postgres", "postgres")
    c = Cluster(tmp, f"vj{os.getpid() % 100000}")
    try:
        _make_network(c)
        _start_redis(c)
        _start_postgres(c, bindir)
        for key, value in c.client_env().items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("VLMJOBS_PLUGINS", PLUGINS)
        monkeypatch.syspath_prepend(str(PLUGIN_DIR))
        yield c
    finally:
        dispose_engines()
        _teardown(c, bindir)
        shutil.rmtree(tmp, ignore_errors=True)


def _wait_states(ids: list[int], states: set[str], timeout: float, c: Cluster) -> list[Job]:
    deadline = time.monotonic() + timeout
    while True:
        with session() as s:
            jobs = [s.get_one(Job, i) for i in ids]
        if all(j.state in states for j in jobs):
            return jobs
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {h}\n{c.log(h)[-1500:]}" for h in HOSTS)
            raise AssertionError(f"{[(j.id, j.state, j.error) for j in jobs]}\n{logs}")
        time.sleep(0.2)


def _host_of(job: Job) -> str:
    return (job.worker or "").rsplit("@", 1)[-1]


def test_jobs_spread_over_hosts_and_run_once(cluster: Cluster, vlmjobs_cli_args: Callable) -> None:
    for host in HOSTS:
        cluster.start_worker(host)
    listed = json.loads(vlmjobs_cli_args("workers", "--json"))
    assert sorted(w["host"] for w in listed) == list(HOSTS)

    ids = [submit(load_spec("sleepy", None, ["items=4", "sleep_s=0.25"])) for _ in range(8)]
    jobs = _wait_states(ids, {"succeeded", "failed"}, 90, cluster)
    assert all(j.state == "succeeded" and j.attempts == 1 for j in jobs)
    assert {_host_of(j) for j in jobs} == set(HOSTS), [j.worker for j in jobs]
    for j in jobs:  # exactly one execution each: runs.txt gets a line per run
        runs = (workdir_for(j.id) / "runs.txt").read_text().splitlines()
        assert len(runs) == 1, (j.id, runs)
    for host in HOSTS:  # the hosts' scratch homes hold no job artifacts
        assert not (cluster.tmp / host / "home" / "artifacts").exists()


def _write_train_data(folder: Path, n: int) -> Path:
    """``n`` images with one box each, as prefix/suffix JSONL (what the seeds' data looks like)."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True)
    lines = []
    for i in range(n):
        w, h = 56 + 28 * (i % 3), 84
        x, y = 4 + i % 7, 6 + i % 5
        image = Image.new("RGB", (w, h), "white")
        ImageDraw.Draw(image).rectangle([x, y, x + 20, y + 16], fill="red")
        image.save(folder / f"{i:03d}.png")
        answer = json.dumps([{"bbox_2d": [x, y, x + 20, y + 16], "label": "red box"}])
        lines.append({"image": f"{i:03d}.png", "prefix": "Find the box.", "suffix": answer})
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _train_config(c: Cluster) -> Path:
    from vlmjobs.dev.build import make_model

    model = make_model(c.tmp / "models" / "tiny", "tiny", seed=0)
    data = _write_train_data(c.tmp / "inputs", 12)  # 10 train samples -> 5 steps an epoch
    config = {
        "model": {"path": str(model), "quantization": "none", "dtype": "fp32"}
        | {"min_pixels": 28 * 28, "max_pixels": 112 * 112},
        "data": {"path": str(data), "val_fraction": 0.2, "task": "dense_caption"},
        "micro_batch_size": 2,
        "epochs": 4,
        "optim": {"lr": 2e-2, "warmup_steps": 1},
        "eval": {"max_samples": 2, "generate": False},
        "checkpoint": {"every_steps": 2, "keep_last": 2},
        "gradient_checkpointing": "none",
    }
    path = c.tmp / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _rows(model: type, job_id: int) -> list:
    with session() as s:
        return list(s.scalars(select(model).where(model.job_id == job_id)))


def test_train_killed_on_one_host_resumes_on_the_other(cluster: Cluster) -> None:
    config = _train_config(cluster)
    for host in HOSTS:
        cluster.start_worker(host)
    job_id = submit(load_spec("train", config, []))
    deadline = time.monotonic() + 120
    while not any(ck.step >= 2 for ck in _rows(Checkpoint, job_id)):
        assert time.monotonic() < deadline, [cluster.log(h)[-1500:] for h in HOSTS]
        time.sleep(0.1)
    with session() as s:
        first = _host_of(s.get_one(Job, job_id))
    victim = cluster.workers[first]
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)

    (job,) = _wait_states([job_id], {"succeeded", "failed"}, 180, cluster)
    assert job.state == "succeeded", job.error
    assert job.attempts == 2
    assert _host_of(job) != first  # the other host finished it
    assert job.result["steps"] == job.result["total_steps"] == 20
    events = [e.message for e in _rows(JobEvent, job_id)]
    resumed = [e for e in events if e.startswith("resumed from step-")]
    assert len(resumed) == 1, events
    resumed_at = int(re.match(r"resumed from step-(\d+)", resumed[0]).group(1))
    assert resumed_at >= 2  # from the shared checkpoint, not from scratch
    losses = [m.step for m in _rows(Metric, job_id) if m.name == "loss"]
    assert set(losses) == set(range(1, 21))
    assert all(losses.count(st) == 1 for st in range(1, resumed_at + 1))  # not redone
    # Stored locations are relative to the shared root and resolve there on any host.
    for ck in _rows(Checkpoint, job_id):
        assert not ck.path.startswith("/") and (cluster.artifacts / ck.path).is_dir()
    assert (cluster.artifacts / job.result["adapter"]).is_dir()


@pytest.fixture
def vlmjobs_cli_args() -> Callable[..., str]:
    """``vlmjobs ARGS`` in-process with the test's environment; its stdout (exit 0 asserted)."""
    from click.testing import CliRunner

    from vlmjobs.cli.main import cli

    def run(*args: str) -> str:
        res = CliRunner().invoke(cli, list(args))
        assert res.exit_code == 0, (res.output, res.exception)
        return res.stdout

    return run
