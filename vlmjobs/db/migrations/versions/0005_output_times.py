"""outputs.t_start / t_end: the seconds of a video a row covers (a window or a frame)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outputs") as batch:  # batch: SQLite cannot ALTER much
        batch.add_column(sa.Column("t_start", sa.Float(), nullable=True))
        batch.add_column(sa.Column("t_end", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outputs") as batch:
        batch.drop_column("t_end")
        batch.drop_column("t_start")
