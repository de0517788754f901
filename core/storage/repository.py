"""Conversation history, per-conversation settings and custom personas, as plain values.

Every method runs in its own short session and transaction: the engine awaits generation
between storage calls, and holding a transaction (and, on SQLite, a write lock) across that
would block every other conversation. Nothing returned here is an ORM object, so callers
cannot trigger lazy loads outside a session.

Every method also rides out a database outage for the database's retry budget (see
``core.storage.retry``), which is safe because each one is idempotent: reads, updates that
set a value, deletes, an upsert, and ``add_message``, which checks whether an interrupted
commit landed before inserting again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeVar, cast

from sqlalchemy import CursorResult, Row, delete, func, insert, or_, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from core.errors import StorageError
from core.storage.database import Database, one_line
from core.storage.models import Conversation, Message, PersonaGrant, StoredPersona, utcnow
from core.storage.retry import RetryPolicy, describe, is_transient, retrying
from core.types import Author, ConversationRef, LengthPreset, Mood, MoodResult, StoredMessage

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ConversationState:
    """A conversation's database id and its current settings."""

    id: int
    ref: ConversationRef
    persona: str
    length: LengthPreset
    always_answer: bool = False


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

        async def attempt() -> ConversationState:
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
                async with self._db.transaction() as session:
                    session.add(row)
            except IntegrityError:
                found = await self._find(ref)
                if found is None:
                    raise
                return found
            return _state(row, ref)

        return await self._run("load the conversation", attempt)

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

    async def set_always_answer(
        self, ref: ConversationRef, always: bool, *, default_persona: str
    ) -> None:
        state = await self.get_or_create(ref, default_persona=default_persona)
        await self._update_conversation(
            state.id, "change when the bot answers", always_answer=always
        )

    async def always_answer(self, ref: ConversationRef) -> bool:
        """Whether the bot answers every message here; never creates the conversation.

        Chat frontends ask this for every group message they see, most of them in channels
        the bot never talks in, which must not each get a conversation row.
        """
        found = await self._run("load the conversation", lambda: self._find(ref), patient=False)
        return found is not None and found.always_answer

    async def find(self, ref: ConversationRef) -> ConversationState | None:
        """The conversation's state, or ``None`` if it was never used; never creates it."""
        return await self._run("load the conversation", lambda: self._find(ref))

    async def _find(self, ref: ConversationRef) -> ConversationState | None:
        # A Core query, not ORM objects: it runs for every message (see add_message).
        table = Conversation.__table__
        query = select(table).where(
            table.c.platform == ref.platform, table.c.channel_id == ref.channel_id
        )
        async with self._db.engine.connect() as connection:
            row = (await connection.execute(query)).first()
        return None if row is None else _state(row, ref)

    async def _update_conversation(
        self, conversation_id: int, action: str, **values: str | bool
    ) -> None:

        async def attempt() -> None:
            async with self._db.transaction() as session:
                await session.execute(
                    update(Conversation)
                    .where(Conversation.id == conversation_id)
                    .values(updated_at=utcnow(), **values)
                )

        await self._run(action, attempt)

    async def move_conversation(self, old: ConversationRef, new: ConversationRef) -> bool:
        """Give ``old``'s conversation (settings and history) the id ``new``: a platform
        changed a chat's id. When ``new`` already has a conversation (a message arrived
        there first), ``old``'s history joins it and ``old``'s settings win. False when
        ``old`` was never used (or was moved already)."""

        def lookup(ref: ConversationRef) -> Any:
            return select(Conversation).where(
                Conversation.platform == ref.platform, Conversation.channel_id == ref.channel_id
            )

        async def attempt() -> bool:
            async with self._db.transaction() as session:
                source = await session.scalar(lookup(old))
                if source is None:
                    return False
                target = await session.scalar(lookup(new))
                if target is None:
                    source.channel_id = new.channel_id
                    source.updated_at = utcnow()
                    return True
                await session.execute(
                    update(Message)
                    .where(Message.conversation_id == source.id)
                    .values(conversation_id=target.id)
                )
                target.persona = source.persona
                target.length_preset = source.length_preset
                target.always_answer = source.always_answer
                target.updated_at = utcnow()
                await session.delete(source)
            return True

        return await self._run("move the conversation", attempt)

    async def move_scope(self, old: str, new: str) -> None:
        """Hand ``old``'s own personas and grants to ``new`` (a chat's id changed)."""

        async def attempt() -> None:
            async with self._db.transaction() as session:
                await session.execute(
                    update(StoredPersona).where(StoredPersona.scope == old).values(scope=new)
                )
                await session.execute(
                    update(PersonaGrant).where(PersonaGrant.scope == old).values(scope=new)
                )

        await self._run("move the personas", attempt)

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
        """Store one message and commit before returning, so a crash right after loses nothing.

        Exactly once, even across a lost connection: the row's id is known (flushed) before
        the commit, so when the connection drops during the commit a retry first looks for
        that id, and inserts again only if the commit did not land. (Ids are never handed
        out twice by PostgreSQL's sequences; the content is compared too, for SQLite.)
        """
        pending: list[int] = []

        async def attempt() -> StoredMessage:
            if pending:
                landed = await self._message_if_stored(pending[-1], conversation_id, text)
                if landed is not None:
                    return landed
            # A Core insert on a plain connection: every message and every reply is stored
            # this way, and under load a session's unit of work cost more than the insert
            # (docs/benchmarks.md#storage-under-concurrency).
            table = Message.__table__
            insert_row = (
                insert(Message)
                .values(
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
                .returning(*table.c)
            )
            async with self._db.writing() as connection:
                row = (await connection.execute(insert_row)).one()
                pending.append(row.id)
            return _stored(row)

        return await self._run("store the message", attempt)

    async def add_reply(
        self, conversation_id: int, *, author: Author, text: str, persona: str, reply_to_id: int
    ) -> StoredMessage | None:
        """Store a reply, or nothing (None) when the message it answers was deleted while
        it was written (/forget everywhere does not wait for replies in flight)."""
        try:
            return await self.add_message(
                conversation_id,
                role="assistant",
                author=author,
                text=text,
                persona=persona,
                reply_to_id=reply_to_id,
            )
        except StorageError as exc:
            if not isinstance(exc.__cause__, IntegrityError) or await self._exists(reply_to_id):
                raise
            log.info("Message %d was deleted while it was answered; reply not stored.", reply_to_id)
            return None

    async def _exists(self, message_id: int) -> bool:
        async def attempt() -> bool:
            async with self._db.session() as session:
                return await session.get(Message, message_id) is not None

        return await self._run("look up the message", attempt)

    async def _message_if_stored(
        self, message_id: int, conversation_id: int, text: str
    ) -> StoredMessage | None:
        async with self._db.session() as session:
            row = await session.get(Message, message_id)
        if row is None or row.conversation_id != conversation_id or row.text != text:
            return None
        log.info(
            "Message %d was committed before the connection dropped; not storing it again.",
            message_id,
        )
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
        table = Message.__table__
        thread = func.coalesce(table.c.reply_to_id, table.c.id)
        query = select(table).where(table.c.conversation_id == conversation_id)
        if up_to_id is not None:
            query = query.where(thread <= up_to_id)
        query = query.order_by(thread.desc(), table.c.id.desc()).limit(limit)

        async def attempt() -> list[StoredMessage]:
            # Core rows, not ORM objects: read twice for every message (see add_message).
            async with self._db.engine.connect() as connection:
                rows = (await connection.execute(query)).all()
            return [_stored(row) for row in reversed(rows)]

        return await self._run("read the conversation history", attempt)

    async def rewrite_reply(
        self, message_id: int, *, text: str, author: Author, persona: str
    ) -> bool:
        """Put a regenerated reply in place of the old one (/retry); False if it is gone.

        Updated in place, not deleted and added again: the reply keeps its id and its place
        in the history, so the history holds one answer to the message, never two.
        """

        async def attempt() -> bool:
            async with self._db.transaction() as session:
                result = await session.execute(
                    update(Message)
                    .where(Message.id == message_id, Message.role == "assistant")
                    .values(text=text, author_name=author.display_name, persona=persona)
                )
            return _rowcount(result) > 0

        return await self._run("store the new reply", attempt)

    async def replied_with(self, conversation_id: int, text: str, *, since: datetime) -> bool:
        """Whether a reply here since ``since`` contains ``text`` (a notice given once)."""
        query = (
            select(Message.id)
            .where(
                Message.conversation_id == conversation_id,
                Message.role == "assistant",
                Message.created_at >= since,
                Message.text.contains(text, autoescape=True),
            )
            .limit(1)
        )

        async def attempt() -> bool:
            async with self._db.session() as session:
                return await session.scalar(query) is not None

        return await self._run("read the conversation history", attempt)

    async def clear_history(self, conversation_id: int) -> int:
        """Delete the conversation's messages (not its settings); returns how many."""

        async def attempt() -> int:
            async with self._db.transaction() as session:
                result = await session.execute(
                    delete(Message).where(Message.conversation_id == conversation_id)
                )
            return _rowcount(result)

        return await self._run("clear the conversation history", attempt)

    async def forget_author(
        self,
        author_id: str,
        *,
        conversation_id: int | None = None,
        platform: str | None = None,
    ) -> int:
        """Delete one person's messages, and the replies to them; returns how many rows.

        Scoped to one conversation, or to every conversation of one platform (user ids are
        only unique per platform). Other people's messages in a group stay; replies go too
        because they were written from, and often repeat, what the person said.
        """
        if (conversation_id is None) == (platform is None):
            raise ValueError("give exactly one of conversation_id and platform")
        scope = (
            Message.conversation_id == conversation_id
            if conversation_id is not None
            else Message.conversation_id.in_(
                select(Conversation.id).where(Conversation.platform == platform)
            )
        )
        theirs = select(Message.id).where(
            scope, Message.author_id == author_id, Message.role == "user"
        )

        async def attempt() -> int:
            async with self._db.transaction() as session:
                replies = await session.execute(
                    delete(Message).where(Message.reply_to_id.in_(theirs))
                )
                own = await session.execute(delete(Message).where(Message.id.in_(theirs)))
            return _rowcount(replies) + _rowcount(own)

        return await self._run("forget your messages", attempt)

    async def purge_before(self, cutoff: datetime) -> int:
        """Delete every message older than ``cutoff``, with any reply to one; returns how many.

        Conversation settings (persona, length) stay: they are not history.
        """
        old = select(Message.id).where(Message.created_at < cutoff)

        async def attempt() -> int:
            async with self._db.transaction() as session:
                result = await session.execute(
                    delete(Message).where(
                        or_(Message.created_at < cutoff, Message.reply_to_id.in_(old))
                    )
                )
            return _rowcount(result)

        return await self._run("delete expired history", attempt)

    async def message_count(self, conversation_id: int) -> int:
        async def attempt() -> int:
            async with self._db.session() as session:
                count = await session.scalar(
                    select(func.count())
                    .select_from(Message)
                    .where(Message.conversation_id == conversation_id)
                )
            return int(count or 0)

        return await self._run("count the conversation's messages", attempt)

    # -- custom personas ----------------------------------------------------------------------

    async def save_persona(
        self, name: str, definition: str, created_by: str | None, scope: str = ""
    ) -> None:
        """Insert the persona in ``scope``, or replace the definition of the one with that
        name there.

        ``created_by`` is kept from the first save: it records who made the persona. A
        concurrent first save of the same name is retried once as an update.
        """

        async def attempt() -> None:
            try:
                await self._upsert_persona(scope, name, definition, created_by)
            except IntegrityError:
                await self._upsert_persona(scope, name, definition, created_by)

        await self._run(f"save the persona {name!r}", attempt)

    async def _upsert_persona(
        self, scope: str, name: str, definition: str, created_by: str | None
    ) -> None:
        async with self._db.transaction() as session:
            row = await session.scalar(
                select(StoredPersona).where(
                    StoredPersona.scope == scope, StoredPersona.name == name
                )
            )
            if row is None:
                session.add(
                    StoredPersona(
                        scope=scope, name=name, definition=definition, created_by=created_by
                    )
                )
            else:
                row.definition = definition
                row.updated_at = utcnow()

    async def list_personas(self) -> list[tuple[str, str, str]]:
        """Every stored persona as (scope, name, definition JSON), by scope and name."""

        async def attempt() -> list[tuple[str, str, str]]:
            async with self._db.session() as session:
                result = await session.execute(
                    select(
                        StoredPersona.scope, StoredPersona.name, StoredPersona.definition
                    ).order_by(StoredPersona.scope, StoredPersona.name)
                )
                return [(scope, name, definition) for scope, name, definition in result]

        return await self._run("load the custom personas", attempt)

    async def delete_persona(self, name: str, scope: str = "") -> bool:
        """Remove a stored persona of ``scope``; ``False`` when there was none by that name."""

        async def attempt() -> bool:
            async with self._db.transaction() as session:
                result = await session.execute(
                    delete(StoredPersona).where(
                        StoredPersona.scope == scope, StoredPersona.name == name
                    )
                )
            return _rowcount(result) > 0

        return await self._run(f"delete the persona {name!r}", attempt)

    async def publish_persona(self, name: str, scope: str) -> bool:
        """Make ``scope``'s persona global; False when the scope has none by that name."""

        async def attempt() -> bool:
            async with self._db.transaction() as session:
                result = await session.execute(
                    update(StoredPersona)
                    .where(StoredPersona.scope == scope, StoredPersona.name == name)
                    .values(scope="", updated_at=utcnow())
                )
            return _rowcount(result) > 0

        return await self._run(f"publish the persona {name!r}", attempt)

    async def grant_persona(self, name: str, scope: str) -> None:
        """Let ``scope`` use the private persona ``name`` (granting twice is harmless)."""

        async def attempt() -> None:
            async with self._db.transaction() as session:
                found = await session.scalar(
                    select(PersonaGrant).where(
                        PersonaGrant.persona == name, PersonaGrant.scope == scope
                    )
                )
                if found is None:
                    session.add(PersonaGrant(persona=name, scope=scope))

        await self._run(f"grant the persona {name!r}", attempt)

    async def persona_grants(self) -> list[tuple[str, str]]:
        """Every grant as (persona name, scope)."""

        async def attempt() -> list[tuple[str, str]]:
            async with self._db.session() as session:
                result = await session.execute(
                    select(PersonaGrant.persona, PersonaGrant.scope).order_by(
                        PersonaGrant.persona, PersonaGrant.scope
                    )
                )
                return [(persona, scope) for persona, scope in result]

        return await self._run("load the persona grants", attempt)

    # -- errors -------------------------------------------------------------------------------

    async def _run(
        self, action: str, operation: Callable[[], Awaitable[T]], *, patient: bool = True
    ) -> T:
        """Run with the database's outage retries (``patient``; else one attempt); failures
        become a readable StorageError."""
        policy = self._db.retry if patient else RetryPolicy()
        try:
            return await retrying(operation, policy=policy, action=action, where=self._db.url)
        except DBAPIError as exc:
            raise StorageError(_describe(action, self._db.url, exc)) from exc
        except (OSError, PoolTimeoutError) as exc:
            if not is_transient(exc):
                raise
            raise StorageError(
                f"Could not {action}: the database {self._db.url} is unreachable "
                f"({describe(exc)}). Please try again in a moment."
            ) from exc


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
    elif is_transient(exc):
        hint = " The database is unreachable at the moment; please try again shortly."
    else:
        hint = ""
    return f"Could not {action} in the database {where}: {cause}.{hint}"


def _rowcount(result: object) -> int:
    return cast(CursorResult[Any], result).rowcount


def _state(row: Conversation | Row[Any], ref: ConversationRef) -> ConversationState:
    try:
        length = LengthPreset(row.length_preset)
    except ValueError:
        log.warning(
            "Conversation %s has unknown length %r; using medium.", ref.key(), row.length_preset
        )
        length = LengthPreset.MEDIUM
    return ConversationState(
        id=row.id,
        ref=ref,
        persona=row.persona,
        length=length,
        always_answer=bool(row.always_answer),
    )


def _stored(row: Message | Row[Any]) -> StoredMessage:
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
        mood_confidence=row.mood_confidence,
    )
