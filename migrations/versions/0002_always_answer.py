"""Per-conversation "always answer" switch (Discord's /chat always|mention).

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-29 00:00:00

Existing conversations keep the old behaviour (answer only when addressed): the column is
added NOT NULL with a server-side default of false, so no row needs a data migration.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(
            sa.Column("always_answer", sa.Boolean(), server_default=sa.false(), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("always_answer")
