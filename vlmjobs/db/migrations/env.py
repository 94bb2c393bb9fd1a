"""Alembic environment: the URL comes from the caller (``db/session.py``), never a file."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from vlmjobs.db.models import Base

config = context.config
url = config.get_main_option("sqlalchemy.url")


def run() -> None:
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(url)  # type: ignore[arg-type]
    with engine.connect() as conn:
        # render_as_batch: SQLite can only ALTER a table by copying it.
        context.configure(connection=conn, target_metadata=Base.metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run()
