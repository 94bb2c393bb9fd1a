"""workers: GPU memory seen by the heartbeat (`vlmjobs workers` on several hosts)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = ("gpu_mem_allocated_mb", "gpu_mem_reserved_mb", "gpu_mem_total_mb")


def upgrade() -> None:
    with op.batch_alter_table("workers") as batch:  # batch: SQLite cannot ALTER much
        for name in _COLUMNS:
            batch.add_column(sa.Column(name, sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("workers") as batch:
        for name in reversed(_COLUMNS):
            batch.drop_column(name)
