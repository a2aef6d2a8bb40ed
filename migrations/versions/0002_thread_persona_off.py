"""a thread can switch its parent channel's persona off for itself

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 12:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "channel_settings",
        sa.Column("persona_off", sa.Boolean(), server_default=sa.false(), nullable=False),
    )


def downgrade() -> None:
    # Batch mode: SQLite before 3.35 cannot drop a column in place.
    with op.batch_alter_table("channel_settings") as batch:
        batch.drop_column("persona_off")
