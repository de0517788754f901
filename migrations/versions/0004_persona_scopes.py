"""Personas belong to a community: personas.scope, and grants for private personas.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 00:00:00

A persona made in a Discord server or a Telegram chat is listed and usable only there
(``scope``), and names are unique per scope instead of globally. The personas made before
recorded who made them (``created_by``, a user) but not where, so none can be moved to the
community it came from: they stay global (scope ''), as the operator's, and keep working
everywhere. ``persona_grants`` lists the scopes allowed to use a private persona (one with
its own adapter). Downgrading refuses while two scopes share a persona name, which the old
schema cannot hold.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("personas") as batch:
        batch.add_column(
            sa.Column("scope", sa.String(length=255), server_default="", nullable=False)
        )
        batch.drop_constraint(op.f("uq_personas_name"), type_="unique")
        batch.create_unique_constraint(op.f("uq_personas_scope_name"), ["scope", "name"])
    op.create_table(
        "persona_grants",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("persona", sa.String(length=64), nullable=False),
        sa.Column("scope", sa.String(length=255), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_persona_grants")),
        sa.UniqueConstraint("persona", "scope", name=op.f("uq_persona_grants_persona_scope")),
    )


def downgrade() -> None:
    shared = op.get_bind().execute(
        sa.text("SELECT name FROM personas GROUP BY name HAVING COUNT(*) > 1")
    )
    names = [row[0] for row in shared]
    if names:
        raise RuntimeError(
            "Cannot downgrade: personas of the same name exist in several scopes "
            f"({', '.join(names)}); delete or rename them first."
        )
    op.drop_table("persona_grants")
    with op.batch_alter_table("personas") as batch:
        batch.drop_constraint(op.f("uq_personas_scope_name"), type_="unique")
        batch.create_unique_constraint(op.f("uq_personas_name"), ["name"])
        batch.drop_column("scope")
