"""Credentials in VLMJOBS_DB_URL / VLMJOBS_BROKER_URL never reach the output, on any error."""

from __future__ import annotations

import pytest
from conftest import PostgresServer, free_port

from vlmjobs.db.session import mask_url

SECRET = "Pw-0f-7he-Db"


@pytest.mark.parametrize(
    "url, masked",
    [
        (
            "postgresql://u:pw@db:5432/x",
            "postgresql://u:***@db:5432/x",
        ),  # case: pg
        ("redis://:pw@r:6379/0", "redis://:***@r:6379/0"),  # case: redis, password only
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),  # case: nothing to mask
        (
            "rediss://:pw@r:6380/0?ssl_cert_reqs=required",
            "rediss://:***@r:6380/0?ssl_cert_reqs=required",
        ),  # case: TLS with a query
        (
            "sentinel://:pw@h1:26379;sentinel://u:pw@h2:26379",
            "sentinel://:***@h1:26379;sentinel://u:***@h2:26379",
        ),  # case: a sentinel list SQLAlchemy cannot parse
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url  # replaced per test below; the fixture wants a backend


def _bad_db_urls(pg: PostgresServer | None) -> list[str]:
    urls = [f"postgresql://vlm:{SECRET}@127.0.0.1:{free_port()}/vlmjobs"]
    if pg is not None:  # a real server answering with an error of its own
        urls.append(f"postgresql://postgres:{SECRET}@127.0.0.1:{pg.port}/no_such_db")
    return urls


@pytest.mark.postgres
@pytest.mark.parametrize("command", [["status"], ["workers"], ["db", "upgrade"], ["status", "1"]])
def test_database_errors_mask_the_password(
    postgres_server: PostgresServer, vlmjobs_cli, monkeypatch, command: list[str]
) -> None:
    for url in _bad_db_urls(postgres_server):
        monkeypatch.setenv("VLMJOBS_DB_URL", url)
        res = vlmjobs_cli(*command)
        assert res.exit_code == 1, res.output
        assert "database postgresql://" in res.stderr and ":***@" in res.stderr
        assert SECRET not in res.output + res.stderr


def test_broker_errors_mask_the_password(vlmjobs_cli, monkeypatch) -> None:
    monkeypatch.setenv("VLMJOBS_BROKER_URL", f"redis://:{SECRET}@127.0.0.1:{free_port()}/0")
    res = vlmjobs_cli("submit", "sleepy", "--set", "items=1")
    assert res.exit_code == 1, res.output
    assert "broker is unreachable" in res.stderr and "VLMJOBS_BROKER_URL" in res.stderr
    assert SECRET not in res.output + res.stderr


@pytest.mark.postgres
@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+psycopg"])
def test_postgres_urls_as_users_write_them(
    postgres_server: PostgresServer, vlmjobs_cli, monkeypatch, scheme: str
) -> None:
    url = postgres_server.create_database().replace("postgresql://", f"{scheme}://", 1)
    monkeypatch.setenv("VLMJOBS_DB_URL", url)
    res = vlmjobs_cli("status")
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize(
    "url, says",
    [
        pytest.param(
            "postgresql+pg8000://u:pw@db/x", "pip install 'pg8000'", id="driver-not-installed"
        ),
        pytest.param("mysql://u:pw@db/x", "supports sqlite:/// and postgresql://", id="backend"),
        pytest.param("not a url", "is not a URL", id="garbage"),
    ],
)
def test_unusable_db_urls_are_one_line_with_what_to_do(
    vlmjobs_cli, monkeypatch, url: str, says: str
) -> None:
    monkeypatch.setenv("VLMJOBS_DB_URL", url)
    res = vlmjobs_cli("status")
    assert res.exit_code == 2, res.output
    assert says in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "pw" not in res.stderr
