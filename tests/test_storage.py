"""Database opening and the conversation store, on real SQLite files and a real PostgreSQL.

Tests that take the ``database``/``store`` fixtures run once per database (see
``tests/postgres.py``); the rest are about one database's own behaviour.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from core.errors import StorageError
from core.storage import ConversationState, ConversationStore, Database, sqlite_url
from core.types import Author, ConversationRef, LengthPreset, Mood, MoodResult

REF = ConversationRef("discord", "channel-1")
OTHER = ConversationRef("telegram", "chat-9")
ALICE = Author("u1", "Alice")
BOT = Author("personabot", "Friend")


@pytest_asyncio.fixture(loop_scope="function")
async def database(database_url: str) -> AsyncIterator[Database]:
    database = await Database.open(database_url)
    yield database
    await database.close()


@pytest_asyncio.fixture(loop_scope="function")
async def sqlite_database(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(sqlite_url(tmp_path / "data" / "personabot.db"))
    yield database
    await database.close()


@pytest.fixture
def store(database: Database) -> ConversationStore:
    return ConversationStore(database)


async def pragma(database: Database, name: str) -> object:
    async with database.engine.connect() as conn:
        return (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()


# -- opening --------------------------------------------------------------------------------


async def test_file_databases_are_tuned_for_concurrent_use(sqlite_database: Database) -> None:
    database = sqlite_database
    assert await pragma(database, "journal_mode") == "wal"
    assert await pragma(database, "foreign_keys") == 1
    assert await pragma(database, "busy_timeout") == 5000
    assert await pragma(database, "synchronous") == 1  # NORMAL


async def test_sqlite_writers_take_turns_instead_of_sleeping_on_the_lock(
    sqlite_database: Database,
) -> None:
    """Write transactions on a SQLite file run one at a time in this process, so a burst of
    writes (32 conversations storing messages at once) never meets SQLite's busy handler,
    which sleeps up to 100 ms between retries; and every write of the burst lands."""
    inside: list[int] = []
    overlaps = 0

    async def write(i: int) -> None:
        nonlocal overlaps
        async with sqlite_database.transaction() as session:
            overlaps += bool(inside)
            inside.append(i)
            await session.execute(text("SELECT 1"))
            await asyncio.sleep(0.001)  # another writer would get in here
            inside.remove(i)

    await asyncio.gather(*(write(i) for i in range(16)))
    assert overlaps == 0
    store = ConversationStore(sqlite_database)
    state = await store.get_or_create(REF, default_persona="friend")
    await asyncio.gather(
        *(store.add_message(state.id, role="user", author=ALICE, text=f"m{i}") for i in range(32))
    )
    stored = await store.history(state.id, limit=100)
    assert sorted(m.text for m in stored) == sorted(f"m{i}" for i in range(32))


async def test_in_memory_database_works_without_wal() -> None:
    database = await Database.open("sqlite+aiosqlite://")
    try:
        assert await pragma(database, "journal_mode") == "memory"
        store = ConversationStore(database)
        state = await store.get_or_create(REF, default_persona="friend")
        await store.add_message(state.id, role="user", author=ALICE, text="hi")
        assert await store.message_count(state.id) == 1
    finally:
        await database.close()


async def test_unusable_folder_names_the_path_and_the_settings(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    path = blocker / "sub" / "personabot.db"

    with pytest.raises(StorageError) as caught:
        await Database.open(sqlite_url(path))

    message = str(caught.value)
    assert str(blocker / "sub") in message
    assert "PERSONABOT_DATA_DIR" in message
    assert "PERSONABOT_DATABASE_URL" in message


async def test_a_file_that_is_not_a_database_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not sqlite" * 100)

    with pytest.raises(StorageError, match="Cannot open the database") as caught:
        await Database.open(sqlite_url(path))
    # The driver's own error, whether met through SQLAlchemy or when switching to WAL.
    assert isinstance(caught.value.__cause__, (DBAPIError, sqlite3.DatabaseError))


async def test_sync_driver_urls_are_refused_with_a_hint(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="async driver"):
        await Database.open(f"sqlite:///{tmp_path / 'x.db'}")


async def test_invalid_url_is_a_storage_error() -> None:
    with pytest.raises(StorageError, match="PERSONABOT_DATABASE_URL"):
        await Database.open("not a url at all")


async def test_error_messages_hide_the_password() -> None:
    url = "postgresql+asyncpg://bob:hunter2@127.0.0.1:1/personabot"

    with pytest.raises(StorageError) as caught:
        await Database.open(url)

    assert "hunter2" not in str(caught.value)
    assert "bob:***@127.0.0.1" in str(caught.value)


async def test_data_survives_closing_and_reopening(database_url: str) -> None:
    url = database_url
    database = await Database.open(url)
    store = ConversationStore(database)
    state = await store.get_or_create(REF, default_persona="friend")
    await store.set_persona(REF, "pirate", default_persona="friend")
    await store.set_length(REF, LengthPreset.SHORT, default_persona="friend")
    sent = await store.add_message(state.id, role="user", author=ALICE, text="ahoy")
    await store.save_persona("captain", '{"name": "captain"}', "u1")
    await database.close()

    database = await Database.open(url, auto_migrate=False)
    try:
        store = ConversationStore(database)
        again = await store.get_or_create(REF, default_persona="friend")
        assert again == ConversationState(state.id, REF, "pirate", LengthPreset.SHORT)
        assert await store.history(state.id, limit=10) == [sent]
        assert await store.list_personas() == [("", "captain", '{"name": "captain"}')]
    finally:
        await database.close()


# -- conversations --------------------------------------------------------------------------


async def test_new_conversation_starts_with_the_defaults(store: ConversationStore) -> None:
    state = await store.get_or_create(REF, default_persona="friend")

    assert state.ref == REF
    assert state.persona == "friend"
    assert state.length is LengthPreset.MEDIUM
    # The default only applies on creation.
    assert await store.get_or_create(REF, default_persona="bard") == state


async def test_get_or_create_is_race_safe(store: ConversationStore) -> None:
    states = await asyncio.gather(
        *(store.get_or_create(REF, default_persona="friend") for _ in range(10))
    )

    assert len({s.id for s in states}) == 1
    assert len(set(states)) == 1


async def test_get_or_create_survives_losing_the_insert_race(
    store: ConversationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Force the worst interleaving: every caller looks before any of them inserts."""
    callers = 10
    barrier = asyncio.Barrier(callers)
    looks = 0
    real_find = ConversationStore._find

    async def find_then_wait(
        self: ConversationStore, ref: ConversationRef
    ) -> ConversationState | None:
        nonlocal looks
        looks += 1
        found = await real_find(self, ref)
        if looks <= callers:
            await barrier.wait()
        return found

    monkeypatch.setattr(ConversationStore, "_find", find_then_wait)

    states = await asyncio.gather(
        *(store.get_or_create(REF, default_persona="friend") for _ in range(callers))
    )

    assert len(set(states)) == 1
    assert looks == callers + (callers - 1)  # every loser looked again after its insert failed


async def test_settings_are_per_conversation_and_create_it(store: ConversationStore) -> None:
    await store.set_persona(REF, "pirate", default_persona="friend")
    await store.set_length(OTHER, LengthPreset.LONG, default_persona="friend")

    first = await store.get_or_create(REF, default_persona="friend")
    second = await store.get_or_create(OTHER, default_persona="friend")
    assert (first.persona, first.length) == ("pirate", LengthPreset.MEDIUM)
    assert (second.persona, second.length) == ("friend", LengthPreset.LONG)
    assert first.id != second.id


# -- messages -------------------------------------------------------------------------------


async def test_add_message_returns_what_was_stored(store: ConversationStore) -> None:
    state = await store.get_or_create(REF, default_persona="friend")

    question = await store.add_message(
        state.id,
        role="user",
        author=ALICE,
        text="I'm so happy today!",
        mood=MoodResult(Mood.HAPPINESS, 0.8),
        persona="friend",
    )
    answer = await store.add_message(
        state.id, role="assistant", author=BOT, text="Great!", reply_to_id=question.id
    )

    assert question.role == "user"
    assert (question.author_id, question.author_name) == ("u1", "Alice")
    assert question.mood is Mood.HAPPINESS
    assert question.persona == "friend"
    assert question.created_at.tzinfo is not None
    assert question.created_at.utcoffset() == UTC.utcoffset(None)
    assert answer.reply_to_id == question.id
    assert answer.mood is None
    assert await store.history(state.id, limit=10) == [question, answer]


async def test_history_keeps_replies_next_to_their_questions(store: ConversationStore) -> None:
    state = await store.get_or_create(REF, default_persona="friend")
    cid = state.id

    async def ask(text: str) -> int:
        return (await store.add_message(cid, role="user", author=ALICE, text=text)).id

    async def answer(question: int, text: str) -> int:
        stored = await store.add_message(
            cid, role="assistant", author=BOT, text=text, reply_to_id=question
        )
        return stored.id

    # Three messages arrive before the first reply is written: ids interleave.
    q1, q2, q3 = await ask("q1"), await ask("q2"), await ask("q3")
    await answer(q1, "a1")
    await answer(q2, "a2")

    texts = [m.text for m in await store.history(cid, limit=50)]
    assert texts == ["q1", "a1", "q2", "a2", "q3"]

    # The prompt for q2 sees q1's exchange and q2, but neither q3 nor a reply to q2 yet.
    assert [m.text for m in await store.history(cid, limit=50, up_to_id=q2)] == [
        "q1",
        "a1",
        "q2",
        "a2",
    ]
    assert [m.text for m in await store.history(cid, limit=50, up_to_id=q1)] == ["q1", "a1"]

    # limit keeps the most recent messages, still oldest first.
    assert [m.text for m in await store.history(cid, limit=3)] == ["q2", "a2", "q3"]
    assert [m.text for m in await store.history(cid, limit=2, up_to_id=q2)] == ["q2", "a2"]
    assert await store.history(cid, limit=0) == []
    assert q3 > q2 > q1


async def test_history_is_per_conversation(store: ConversationStore) -> None:
    mine = await store.get_or_create(REF, default_persona="friend")
    theirs = await store.get_or_create(OTHER, default_persona="friend")
    await store.add_message(mine.id, role="user", author=ALICE, text="mine")
    await store.add_message(theirs.id, role="user", author=ALICE, text="theirs")

    assert [m.text for m in await store.history(mine.id, limit=10)] == ["mine"]
    assert await store.message_count(theirs.id) == 1


async def test_concurrent_writes_all_land(store: ConversationStore) -> None:
    state = await store.get_or_create(REF, default_persona="friend")

    await asyncio.gather(
        *(store.add_message(state.id, role="user", author=ALICE, text=f"m{i}") for i in range(25))
    )

    assert await store.message_count(state.id) == 25


async def test_clear_history_only_touches_that_conversation(store: ConversationStore) -> None:
    await store.set_persona(REF, "pirate", default_persona="friend")
    mine = await store.get_or_create(REF, default_persona="friend")
    theirs = await store.get_or_create(OTHER, default_persona="friend")
    question = await store.add_message(mine.id, role="user", author=ALICE, text="q")
    await store.add_message(
        mine.id, role="assistant", author=BOT, text="a", reply_to_id=question.id
    )
    await store.add_message(theirs.id, role="user", author=ALICE, text="keep me")

    assert await store.clear_history(mine.id) == 2

    assert await store.message_count(mine.id) == 0
    assert await store.clear_history(mine.id) == 0
    assert [m.text for m in await store.history(theirs.id, limit=10)] == ["keep me"]
    assert (await store.get_or_create(REF, default_persona="friend")).persona == "pirate"


async def test_ids_are_not_reused_after_clearing(store: ConversationStore) -> None:
    state = await store.get_or_create(REF, default_persona="friend")
    first = await store.add_message(state.id, role="user", author=ALICE, text="one")
    await store.clear_history(state.id)

    second = await store.add_message(state.id, role="user", author=ALICE, text="two")

    assert second.id > first.id


async def test_deleting_a_conversation_cascades_to_its_messages(
    database: Database, store: ConversationStore
) -> None:
    state = await store.get_or_create(REF, default_persona="friend")
    await store.add_message(state.id, role="user", author=ALICE, text="bye")

    async with database.engine.begin() as conn:
        await conn.execute(text("DELETE FROM conversations WHERE id = :id"), {"id": state.id})

    assert await store.message_count(state.id) == 0


async def test_write_errors_become_storage_errors(
    database: Database, store: ConversationStore
) -> None:
    with pytest.raises(StorageError, match="store the message") as caught:
        await store.add_message(12345, role="user", author=ALICE, text="nobody home")
    assert isinstance(caught.value.__cause__, DBAPIError)

    async with database.engine.begin() as conn:
        await conn.execute(text("DROP TABLE personas"))
    missing = "no such table" if database.dialect == "sqlite" else "does not exist"
    with pytest.raises(StorageError, match=missing) as caught:
        await store.save_persona("ghost", "{}", None)
    assert isinstance(caught.value.__cause__, DBAPIError)


# -- custom personas ------------------------------------------------------------------------


async def test_personas_save_list_update_delete(store: ConversationStore) -> None:
    assert await store.list_personas() == []

    await store.save_persona("zed", '{"v": 1}', "u1")
    await store.save_persona("amy", '{"v": 1}', None)
    await store.save_persona("zed", '{"v": 2}', "u2")

    assert await store.list_personas() == [("", "amy", '{"v": 1}'), ("", "zed", '{"v": 2}')]
    assert await store.delete_persona("zed") is True
    assert await store.delete_persona("zed") is False
    assert await store.list_personas() == [("", "amy", '{"v": 1}')]


async def test_concurrent_first_saves_of_a_persona_both_succeed(store: ConversationStore) -> None:
    await asyncio.gather(*(store.save_persona("twin", f'{{"v": {i}}}', None) for i in range(5)))

    [(_scope, name, _definition)] = await store.list_personas()
    assert name == "twin"


async def test_personas_are_kept_per_scope_published_and_granted(
    store: ConversationStore,
) -> None:
    await store.save_persona("chef", '{"v": "a"}', "discord:1", "discord:server:1")
    await store.save_persona("chef", '{"v": "b"}', "telegram:2", "telegram:chat:2")
    assert await store.list_personas() == [
        ("discord:server:1", "chef", '{"v": "a"}'),
        ("telegram:chat:2", "chef", '{"v": "b"}'),
    ]
    assert await store.delete_persona("chef", "telegram:chat:2") is True
    assert await store.delete_persona("chef") is False  # no global one
    assert await store.publish_persona("chef", "discord:server:1") is True
    assert await store.list_personas() == [("", "chef", '{"v": "a"}')]
    await store.grant_persona("sam", "telegram:chat:7")
    await store.grant_persona("sam", "telegram:chat:7")  # twice is harmless
    assert await store.persona_grants() == [("sam", "telegram:chat:7")]
