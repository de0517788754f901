"""The database schema as typed ORM classes.

The initial Alembic revision re-states this schema by hand, so any change here needs a new
revision as well; ``tests/test_migrations.py`` compares the two and fails when they drift.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Every constraint gets a predictable name: Alembic cannot drop or alter an unnamed
# constraint, and SQLite's batch mode has to recreate tables with the same names.
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that always comes back timezone-aware in UTC.

    SQLite has no timezone type and returns naive values; without this, timestamps would
    compare differently depending on which database is configured.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use an aware UTC value")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Conversation(Base):
    """One chat channel or thread on one platform, with its per-conversation settings."""

    __tablename__ = "conversations"
    __table_args__ = (UniqueConstraint("platform", "channel_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    channel_id: Mapped[str] = mapped_column(String(255))
    persona: Mapped[str] = mapped_column(String(64))
    length_preset: Mapped[str] = mapped_column(
        String(16), default="medium", server_default="medium"
    )
    # Chat frontends answer in group channels only when addressed; an admin can switch a
    # channel to answering every message (Discord's /chat always). Added in revision 0002.
    always_answer: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, server_default=func.now()
    )
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow, server_default=func.now()
    )


class Message(Base):
    """A stored chat message; assistant replies point at the user message they answer."""

    __tablename__ = "messages"
    # sqlite_autoincrement: SQLite would otherwise reuse the ids of deleted newest messages,
    # and ids are what replies, thread order and frontends refer to. (A batch-mode revision
    # touching this table must pass table_kwargs={"sqlite_autoincrement": True}.)
    __table_args__ = (
        CheckConstraint("role IN ('user', 'assistant')", name="role"),
        Index("ix_messages_conversation_id_id", "conversation_id", "id"),
        # Revision 0003. reply_to_id: deleting a message makes the database find the replies
        # pointing at it (ON DELETE SET NULL), a full scan per deleted row without an index,
        # which turns /reset, /forget and retention into quadratic work on a big table.
        # created_at: the retention purge's range scan.
        Index("ix_messages_reply_to_id", "reply_to_id"),
        Index("ix_messages_created_at", "created_at"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    conversation_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("conversations.id", ondelete="CASCADE")
    )
    role: Mapped[str] = mapped_column(String(16))
    author_id: Mapped[str] = mapped_column(String(255))
    author_name: Mapped[str] = mapped_column(String(255))
    text: Mapped[str] = mapped_column(Text)
    mood: Mapped[str | None] = mapped_column(String(16))
    mood_confidence: Mapped[float | None] = mapped_column(Float)
    persona: Mapped[str | None] = mapped_column(String(64))
    reply_to_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("messages.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, server_default=func.now()
    )


class StoredPersona(Base):
    """A persona made at runtime; ``definition`` is owned by ``core.personas``.

    ``scope`` is the community it belongs to (``discord:server:<id>``, ``telegram:chat:<id>``
    ...), or empty for a global one (the operator's, or published). Names are unique per
    scope.
    """

    __tablename__ = "personas"
    __table_args__ = (UniqueConstraint("scope", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scope: Mapped[str] = mapped_column(String(255), default="", server_default="")
    name: Mapped[str] = mapped_column(String(64))
    definition: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, server_default=func.now()
    )
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow, server_default=func.now()
    )


class PersonaGrant(Base):
    """A scope allowed to use a private persona (one with its own adapter)."""

    __tablename__ = "persona_grants"
    __table_args__ = (UniqueConstraint("persona", "scope"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    persona: Mapped[str] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, server_default=func.now()
    )
