"""Redis with a password and with TLS, real servers; no password ever reaches the output."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import _wait, free_port

from vlmjobs.scheduler.submit import submit
from vlmjobs.specs import load_spec

pytestmark = pytest.mark.slow
SECRET = "s3cret-Pw-7781"  # must never appear in any output


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url  # the broker is under test here, one backend is enough


def _redis(workdir: Path, *args: str) -> subprocess.Popen[bytes]:
    argv = ["redis-server", "--bind", "127.0.0.1", "--save", "", "--dir", str(workdir), *args]
    log = open(workdir / "redis.log", "ab")  # noqa: SIM115
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)


@pytest.fixture
def auth_redis(tmp_path: Path) -> Iterator[int]:
    """A redis-server with requirepass SECRET; yields its port."""
    import redis

    port = free_port()
    proc = _redis(tmp_path, "--port", str(port), "--requirepass", SECRET)
    client = redis.Redis(port=port, password=SECRET, socket_timeout=1)
    _wait(lambda: _pings(client), 10, "redis with requirepass")
    yield port
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A TLS-only redis-server (self-signed cert for 127.0.0.1) with requirepass; (port, ca)."""
    import redis

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )
    port = free_port()
    proc = _redis(
        tmp_path,
        *("--port", "0", "--tls-port", str(port), "--requirepass", SECRET),
        *("--tls-cert-file", str(cert), "--tls-key-file", str(key)),
        *("--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"),
    )
    url = f"rediss://:{SECRET}@127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={cert}"
    _wait(lambda: _pings(redis.Redis.from_url(url, socket_timeout=1)), 10, "redis with TLS")
    yield port, cert
    proc.terminate()
    proc.wait(10)


def _pings(client: object) -> bool:
    import redis

    try:
        return bool(client.ping())  # type: ignore[attr-defined]
    except redis.exceptions.ConnectionError:
        return False


def _worker_exit(env: dict[str, str], broker: str) -> tuple[int, str]:
    argv = [sys.executable, "-c", "from vlmjobs.cli.main import cli; cli()", "worker"]
    proc = subprocess.run(
        [*argv, "--cpu-only"],
        env={**env, "VLMJOBS_BROKER_URL": broker},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return proc.returncode, proc.stdout + proc.stderr


def _run_one_job(broker: str, env: dict[str, str], start_worker, wait_for_state, mp) -> str:
    mp.setenv("VLMJOBS_BROKER_URL", broker)
    worker = start_worker(env={"VLMJOBS_BROKER_URL": broker})
    job_id = submit(load_spec("sleepy", None, ["items=2"]))
    assert wait_for_state(job_id, "succeeded").attempts == 1
    return worker.output()


@pytest.mark.parametrize(
    "password, message",
    [
        ("wrong-" + SECRET[::-1], "refused the credentials"),  # case: wrong password
        (None, "refused the credentials"),  # case: no password at all
    ],
)
def test_worker_with_bad_password_exits_clearly(
    auth_redis: int, vlmjobs_env: dict[str, str], password: str | None, message: str
) -> None:
    userinfo = f":{password}@" if password else ""
    code, out = _worker_exit(vlmjobs_env, f"redis://{userinfo}127.0.0.1:{auth_redis}/0")
    assert code == 1, out
    assert message in out and "VLMJOBS_BROKER_URL" in out
    assert "Traceback" not in out
    if password:
        assert password not in out and "***" in out


def test_worker_with_right_password_runs_a_job(
    auth_redis: int, vlmjobs_env, start_worker, wait_for_state, monkeypatch
) -> None:
    broker = f"redis://:{SECRET}@127.0.0.1:{auth_redis}/0"
    out = _run_one_job(broker, vlmjobs_env, start_worker, wait_for_state, monkeypatch)
    assert SECRET not in out  # Celery's banner and our logs mask it


def test_tls_broker_runs_a_job(
    tls_redis: tuple[int, Path], vlmjobs_env, start_worker, wait_for_state, monkeypatch
) -> None:
    port, ca = tls_redis
    broker = f"rediss://:{SECRET}@127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={ca}"
    out = _run_one_job(broker, vlmjobs_env, start_worker, wait_for_state, monkeypatch)
    assert SECRET not in out


def test_tls_broker_with_untrusted_cert_exits_clearly(
    tls_redis: tuple[int, Path], vlmjobs_env: dict[str, str]
) -> None:
    port, _ = tls_redis  # no ssl_ca_certs: the self-signed certificate is not trusted
    code, out = _worker_exit(
        vlmjobs_env, f"rediss://:{SECRET}@127.0.0.1:{port}/0?ssl_cert_reqs=required"
    )
    assert code == 1, out
    assert "TLS failed" in out and "ssl_ca_certs" in out
    assert SECRET not in out


@pytest.mark.parametrize(
    "url",
    [
        "redis+socket:///nonexistent/redis.sock",  # case: kombu's socket form
        "sentinel://:pw@127.0.0.1:1;sentinel://:pw@127.0.0.1:2",  # case: sentinel list
    ],
)
def test_broker_check_leaves_other_url_forms_to_celery(url: str) -> None:
    from vlmjobs.worker.main import check_broker

    check_broker(url)  # no ValueError from redis-py's parser: the worker still starts
