"""Conversation history, per-conversation settings and custom personas, as plain values.

Every method runs in its own short session and transaction: the engine awaits generation
between storage calls, and holding a transaction (and, on SQLite, a write lock) across that
would block every other conversation. Nothing returned here is an ORM object, so callers
cannot trigger lazy loads outside a session.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, cast

from sqlalchemy import CursorResult, delete, func, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from core.errors import StorageError
from core.storage.database import Database, one_line
from core.storage.models import Conversation, Message, StoredPersona, utcnow
from core.types import Author, ConversationRef, LengthPreset, Mood, MoodResult, StoredMessage

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ConversationState:
    """A conversation's database id and its current settings."""

    id: int
    ref: ConversationRef
    persona: str
    length: LengthPreset


class ConversationStore:
    """The engine's only way into the database."""

    def __init__(self, database: Database) -> None:
        self._db = database

    # -- conversations ------------------------------------------------------------------------

    async def get_or_create(
        self, ref: ConversationRef, *, default_persona: str
    ) -> ConversationState:
        """The conversation's state, creating it with ``default_persona`` on first use.

        Two messages arriving together in a new channel both try to create the row; the one
        that loses the race on the unique (platform, channel_id) constraint reads the
        winner's row instead of failing.
        """
        with self._errors("load the conversation"):
            found = await self._find(ref)
            if found is not None:
                return found
            row = Conversation(
                platform=ref.platform,
                channel_id=ref.channel_id,
                persona=default_persona,
                length_preset=LengthPreset.MEDIUM.value,
            )
            try:
                async with self._db.session() as session, session.begin():
                    session.add(row)
            except IntegrityError:
                found = await self._find(ref)
                if found is None:
                    raise
                return found
            return _state(row, ref)

    async def set_persona(
        self, ref: ConversationRef, persona: str, *, default_persona: str
    ) -> None:
        state = await self.get_or_create(ref, default_persona=default_persona)
        await self._update_conversation(state.id, "change the persona", persona=persona)

    async def set_length(
        self, ref: ConversationRef, preset: LengthPreset, *, default_persona: str
    ) -> None:
        state = await self.get_or_create(ref, default_persona=default_persona)
        await self._update_conversation(
            state.id, "change the reply length", length_preset=preset.value
        )

    async def _find(self, ref: ConversationRef) -> ConversationState | None:
        async with self._db.session() as session:
            row = await session.scalar(
                select(Conversation).where(
                    Conversation.platform == ref.platform,
                    Conversation.channel_id == ref.channel_id,
                )
            )
        return None if row is None else _state(row, ref)

    async def _update_conversation(self, conversation_id: int, action: str, **values: str) -> None:
        with self._errors(action):
            async with self._db.session() as session, session.begin():
                await session.execute(
                    update(Conversation)
                    .where(Conversation.id == conversation_id)
                    .values(updated_at=utcnow(), **values)
                )

    # -- messages -----------------------------------------------------------------------------

    async def add_message(
        self,
        conversation_id: int,
        *,
        role: Literal["user", "assistant"],
        author: Author,
        text: str,
        mood: MoodResult | None = None,
        persona: str | None = None,
        reply_to_id: int | None = None,
    ) -> StoredMessage:
        """Store one message and commit before returning, so a crash right after loses nothing."""
        row = Message(
            conversation_id=conversation_id,
            role=role,
            author_id=author.id,
            author_name=author.display_name,
            text=text,
            mood=None if mood is None else mood.mood.value,
            mood_confidence=None if mood is None else mood.confidence,
            persona=persona,
            reply_to_id=reply_to_id,
        )
        with self._errors("store the message"):
            async with self._db.session() as session, session.begin():
                session.add(row)
        return _stored(row)

    async def history(
        self, conversation_id: int, *, limit: int, up_to_id: int | None = None
    ) -> list[StoredMessage]:
        """The latest ``limit`` messages, oldest first, each reply right after its question.

        Messages are stored on arrival and replies only once generated, so with several
        messages in flight the id order interleaves exchanges; ordering by the thread key
        (the answered message's id, or the message's own) restores question-answer pairs.
        ``up_to_id`` cuts the history at a message's thread, so the prompt for message N
        never contains messages (or replies) that came after it.
        """
        if limit <= 0:
            return []
        thread = func.coalesce(Message.reply_to_id, Message.id)
        query = select(Message).where(Message.conversation_id == conversation_id)
        if up_to_id is not None:
            query = query.where(thread <= up_to_id)
        query = query.order_by(thread.desc(), Message.id.desc()).limit(limit)
        with self._errors("read the conversation history"):
            async with self._db.session() as session:
                rows = (await session.scalars(query)).all()
        return [_stored(row) for row in reversed(rows)]

    async def clear_history(self, conversation_id: int) -> int:
        """Delete the conversation's messages (not its settings); returns how many."""
        with self._errors("clear the conversation history"):
            async with self._db.session() as session, session.begin():
                result = await session.execute(
                    delete(Message).where(Message.conversation_id == conversation_id)
                )
        return _rowcount(result)

    async def message_count(self, conversation_id: int) -> int:
        with self._errors("count the conversation's messages"):
            async with self._db.session() as session:
                count = await session.scalar(
                    select(func.count())
                    .select_from(Message)
                    .where(Message.conversation_id == conversation_id)
                )
        return int(count or 0)

    # -- custom personas ----------------------------------------------------------------------

    async def save_persona(self, name: str, definition: str, created_by: str | None) -> None:
        """Insert the persona, or replace the definition of the one with that name.

        ``created_by`` is kept from the first save: it records who made the persona. A
        concurrent first save of the same name is retried once as an update.
        """
        with self._errors(f"save the persona {name!r}"):
            try:
                await self._upsert_persona(name, definition, created_by)
            except IntegrityError:
                await self._upsert_persona(name, definition, created_by)

    async def _upsert_persona(self, name: str, definition: str, created_by: str | None) -> None:
        async with self._db.session() as session, session.begin():
            row = await session.scalar(select(StoredPersona).where(StoredPersona.name == name))
            if row is None:
                session.add(StoredPersona(name=name, definition=definition, created_by=created_by))
            else:
                row.definition = definition
                row.updated_at = utcnow()

    async def list_personas(self) -> list[tuple[str, str]]:
        """Every stored persona as (name, definition JSON), by name."""
        with self._errors("load the custom personas"):
            async with self._db.session() as session:
                result = await session.execute(
                    select(StoredPersona.name, StoredPersona.definition).order_by(
                        StoredPersona.name
                    )
                )
                return [(name, definition) for name, definition in result]

    async def delete_persona(self, name: str) -> bool:
        """Remove a stored persona; ``False`` when there was none by that name."""
        with self._errors(f"delete the persona {name!r}"):
            async with self._db.session() as session, session.begin():
                result = await session.execute(
                    delete(StoredPersona).where(StoredPersona.name == name)
                )
        return _rowcount(result) > 0

    # -- errors -------------------------------------------------------------------------------

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Turn driver errors into a StorageError an operator can read and act on."""
        try:
            yield
        except DBAPIError as exc:
            raise StorageError(_describe(action, self._db.url, exc)) from exc


def _describe(action: str, where: str, exc: DBAPIError) -> str:
    cause = one_line(str(exc.orig) if exc.orig is not None else str(exc))
    lowered = cause.lower()
    if "locked" in lowered or "busy" in lowered:
        hint = " Another process kept the database busy for too long; try again."
    elif "readonly" in lowered or "read-only" in lowered:
        hint = (
            " The database is read-only: fix the file's permissions, or set "
            "PERSONABOT_DATA_DIR or PERSONABOT_DATABASE_URL to a writable location."
        )
    elif "disk" in lowered and "full" in lowered:
        hint = " The disk holding the database is full; free some space."
    else:
        hint = ""
    return f"Could not {action} in the database {where}: {cause}.{hint}"


def _rowcount(result: object) -> int:
    return cast(CursorResult[Any], result).rowcount


def _state(row: Conversation, ref: ConversationRef) -> ConversationState:
    try:
        length = LengthPreset(row.length_preset)
    except ValueError:
        log.warning(
            "Conversation %s has unknown length %r; using medium.", ref.key(), row.length_preset
        )
        length = LengthPreset.MEDIUM
    return ConversationState(id=row.id, ref=ref, persona=row.persona, length=length)


def _stored(row: Message) -> StoredMessage:
    mood: Mood | None = None
    if row.mood is not None:
        try:
            mood = Mood(row.mood)
        except ValueError:
            log.warning("Message %d has unknown mood %r; ignoring it.", row.id, row.mood)
    return StoredMessage(
        id=row.id,
        role=cast(Literal["user", "assistant"], row.role),
        author_id=row.author_id,
        author_name=row.author_name,
        text=row.text,
        mood=mood,
        persona=row.persona,
        created_at=row.created_at,
        reply_to_id=row.reply_to_id,
    )
