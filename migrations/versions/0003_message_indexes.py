"""Indexes for deleting history: messages.reply_to_id and messages.created_at.

Revision ID: 0003
Revises: 0002
Create Date: 2025-11-30 00:00:00

Deleting a message makes the database look for replies that point at it (the foreign key's
ON DELETE SET NULL); without an index on reply_to_id that is a full scan of the table for
every deleted row, so /reset, /forget and the retention purge grow quadratically with the
history. The retention purge (PERSONABOT_HISTORY_RETENTION_DAYS) selects by created_at.
Plain CREATE INDEX on both databases; no data changes.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(op.f("ix_messages_reply_to_id"), "messages", ["reply_to_id"])
    op.create_index(op.f("ix_messages_created_at"), "messages", ["created_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_messages_created_at"), table_name="messages")
    op.drop_index(op.f("ix_messages_reply_to_id"), table_name="messages")
