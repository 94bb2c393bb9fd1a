"""A host still on an older release meets a database another host already upgraded."""

from __future__ import annotations

from sqlalchemy import text

from vlmjobs.db.session import dispose_engines, ensure_schema, get_engine


def test_newer_schema_is_refused_with_a_clear_message(vlmjobs_env, vlmjobs_cli) -> None:
    url = vlmjobs_env["VLMJOBS_DB_URL"]
    ensure_schema(url)
    with get_engine(url).begin() as conn:  # as if a later release had migrated it
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    dispose_engines()  # a fresh process: the schema check runs again
    res = vlmjobs_cli("status")
    assert res.exit_code == 1
    assert "schema revision '9999', newer than this vlmjobs knows" in res.stderr
    assert "upgrade vlmjobs on this host" in res.stderr
    with get_engine(url).connect() as conn:  # and nothing tried to migrate it "down"
        assert conn.scalar(text("SELECT version_num FROM alembic_version")) == "9999"
