"""Engines, sessions and schema upgrades.

One engine per process per URL. SQLite gets WAL (readers never block the
writer), foreign keys ON and a busy timeout, so several local workers and the
CLI can share one file. The schema is brought to Alembic's head on first use
in a process (a cheap version check; the upgrade itself runs under a lock).
"""

from __future__ import annotations

import fcntl
import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session

from vlmjobs import settings
from vlmjobs.errors import ConfigError, VlmjobsError

MIGRATIONS = Path(__file__).parent / "migrations"
# An arbitrary constant: the key of the PostgreSQL advisory lock held while upgrading.
_PG_LOCK_KEY = 7_346_211
SQLITE_BUSY_MS = 30_000  # how long a SQLite write waits for another writer
_engines: dict[str, Engine] = {}
_upgraded: set[str] = set()


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, safe to print or log.

    The password ends at the LAST ``@`` before the query (a password with an unencoded
    ``@`` is how redis-py and kombu read it; SQLAlchemy's own masking splits at the first
    and would print the tail). Lists such as Redis sentinels
    (``sentinel://:pw@h1;sentinel://:pw@h2``) are masked part by part.
    """
    return ";".join(_mask_one(part) for part in url.split(";"))


def _mask_one(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    query = rest.find("?")
    at = rest.rfind("@", 0, query if query >= 0 else len(rest))
    if at < 0:
        return url
    user, colon, _password = rest[:at].partition(":")
    if not colon:
        return url  # a user name alone is no secret
    return f"{scheme}://{user}:***@{rest[at + 1 :]}"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")  # workers and the CLI write concurrently
    cur.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; fsync per checkpoint, not commit
    cur.close()


# PostgreSQL drivers SQLAlchemy knows -> the module each imports and what to install.
_PG_DRIVERS = {
    "psycopg": ("psycopg", "psycopg[binary]"),
    "psycopg2": ("psycopg2", "psycopg2-binary"),
    "asyncpg": ("asyncpg", "asyncpg"),
    "pg8000": ("pg8000", "pg8000"),
}


def normalize_url(url: str) -> URL:
    """``url`` as SQLAlchemy should read it, or VlmjobsError in one line saying what to do.

    ``postgres://`` (Heroku, many PaaS) and ``postgresql://`` both mean psycopg 3, the
    driver vlmjobs depends on (SQLAlchemy 2.0 read a bare ``postgresql://`` as psycopg2,
    2.1 as psycopg 3: naming it makes the same URL work on both). An explicit driver
    (``postgresql+psycopg2://``) is kept, and must be installed.
    """
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(
            f"database URL {mask_url(url)!r} is not a URL: write sqlite:///PATH or "
            "postgresql://USER:PASSWORD@HOST:PORT/DB"
        ) from None
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    backend, _, driver = parsed.drivername.partition("+")
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(
            f"database URL {mask_url(url)!r}: vlmjobs supports sqlite:/// and postgresql:// "
            f"(got {backend!r})"
        )
    if backend == "postgresql":
        module, package = _PG_DRIVERS.get(driver, (driver, driver))
        if importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"database URL {mask_url(url)!r} needs the PostgreSQL driver {module!r}, which "
                f"is not installed: pip install '{package}', or write postgresql:// (psycopg 3)"
            )
    return parsed


def get_engine(url: str | None = None) -> Engine:
    """The process's engine for ``url`` (default: ``settings.db_url()``), created once."""
    url = url or settings.db_url()
    if url not in _engines:
        parsed = normalize_url(url)
        if parsed.get_backend_name() == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(parsed, connect_args={"timeout": 30})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(parsed, pool_pre_ping=True)
        _engines[url] = engine
    return _engines[url]


def dispose_engines() -> None:
    """Close every pooled connection (tests that drop databases; after fork)."""
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()
    _upgraded.clear()


@contextmanager
def session(url: str | None = None) -> Iterator[Session]:
    """A session on the (upgraded) database; commits on success, rolls back on error."""
    engine = ensure_schema(url)
    with Session(engine, expire_on_commit=False) as s, s.begin():
        yield s


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    # ConfigParser interpolation treats % specially: escape it in passwords.
    full = normalize_url(url).render_as_string(hide_password=False)
    cfg.set_main_option("sqlalchemy.url", full.replace("%", "%%"))
    return cfg


def current_revision(url: str | None = None) -> tuple[str | None, str | None]:
    """(the database's revision, the code's head revision)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    url = url or settings.db_url()
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    with get_engine(url).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision(), head


def upgrade(url: str | None = None) -> None:
    """Run Alembic to head, serialized across processes (two workers may start at once)."""
    from alembic import command

    url = url or settings.db_url()
    engine = get_engine(url)
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
            try:
                if current_revision(url)[0] != current_revision(url)[1]:
                    command.upgrade(alembic_config(url), "head")
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
                conn.commit()
    else:
        lock = Path(str(engine.url.database or "sqlite-memory") + ".migrate-lock")
        with open(lock, "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            if current_revision(url)[0] != current_revision(url)[1]:
                command.upgrade(alembic_config(url), "head")
    _upgraded.add(url)


def known_revision(revision: str | None) -> bool:
    """Whether this vlmjobs ships ``revision`` (None: an empty database, also known)."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    if revision is None:
        return True
    try:
        ScriptDirectory(str(MIGRATIONS)).get_revision(revision)
    except CommandError:
        return False
    return True


def _refuse_newer_schema(url: str, have: str | None, head: str | None) -> None:
    """A host still on an older release must not try to "upgrade" a newer schema down."""
    if not known_revision(have):
        raise VlmjobsError(
            f"database {mask_url(url)} is at schema revision {have!r}, newer than this "
            f"vlmjobs knows (head {head!r}): upgrade vlmjobs on this host"
        )


def ensure_schema(url: str | None = None) -> Engine:
    """The engine, with the schema at head (checked once per process per URL)."""
    url = url or settings.db_url()
    engine = get_engine(url)
    if url not in _upgraded:
        have, head = current_revision(url)
        if have != head:
            _refuse_newer_schema(url, have, head)
            upgrade(url)
        _upgraded.add(url)
    return engine
