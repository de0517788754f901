"""A database that is away at start-up or goes away mid-run, on a real PostgreSQL server.

Each test that stops the server gets a server of its own (``outage_server``), so stopping it
cannot disturb the rest of the session. Replies come from the real offline model with a
terse persona (a few tokens each), so many messages are in flight at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

from core.bootstrap import build_engine
from core.engine import Engine
from core.errors import StorageError
from core.generation.local.transformers_generator import TransformersGenerator
from core.storage import ConversationStore, Database
from core.storage.retry import RetryPolicy
from core.types import Author, ConversationRef
from tests.conftest import SettingsFactory, SharedGenerator
from tests.polling import until
from tests.postgres import CuttingProxy, PostgresServer

ALICE = Author("u1", "Alice")

TERSE = """\
display_name = "Terse"
description = "Answers in a few words."
system_prompt = "You are terse. Answer in a few words."
temperature = 0.7
max_new_tokens = 6
"""


def terse_settings(
    make_settings: SettingsFactory, *, max_new_tokens: int = 6, **overrides: Any
) -> Any:
    """Settings whose default persona writes a few tokens, so replies take a blink.

    A second such persona, ``curt``, is there for tests that switch personas.
    """
    settings = make_settings(default_persona="terse", mood_detector="lexicon", **overrides)
    folder = settings.resolved_persona_dir
    folder.mkdir(parents=True, exist_ok=True)
    terse = TERSE.replace("max_new_tokens = 6", f"max_new_tokens = {max_new_tokens}")
    (folder / "terse.toml").write_text(terse)
    (folder / "curt.toml").write_text(terse.replace('"Terse"', '"Curt"'))
    return settings


class Warnings(logging.Handler):
    """Collects warnings from storage, to see an outage being waited out."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    async def until(self, text: str, within: float = 60.0) -> None:
        await until(lambda: self.count(text) > 0, within=within)


@pytest.fixture
def storage_warnings() -> Iterator[Warnings]:
    watch = Warnings()
    logger = logging.getLogger("core.storage")
    logger.addHandler(watch)
    yield watch
    logger.removeHandler(watch)


async def build(
    make_settings: SettingsFactory,
    generator: TransformersGenerator,
    url: str,
    **overrides: Any,
) -> Engine:
    settings = terse_settings(make_settings, database_url=url, **overrides)
    return await build_engine(settings, generator=SharedGenerator(generator))


# -- start-up -----------------------------------------------------------------------------


async def test_unreachable_database_at_startup_is_retried_then_a_clear_error(
    outage_server: PostgresServer,
    make_settings: SettingsFactory,
    offline_generator: TransformersGenerator,
    storage_warnings: Warnings,
) -> None:
    url = outage_server.create_database()
    outage_server.stop()

    with pytest.raises(StorageError) as caught:
        await build(
            make_settings,
            offline_generator,
            url,
            database_connect_attempts=3,
            database_retry_backoff_seconds=0.05,
        )

    message = str(caught.value)
    assert "Cannot reach the database" in message and "after 3 attempts" in message
    assert "PERSONABOT_DATABASE_CONNECT_ATTEMPTS" in message
    assert "personabot:***@127.0.0.1" in message
    assert outage_server.password not in message
    assert storage_warnings.count("attempt 1 of 3") == 1
    assert storage_warnings.count("attempt 2 of 3") == 1
    assert not any(outage_server.password in line for line in storage_warnings.lines)


async def test_startup_waits_for_a_database_that_comes_up(
    outage_server: PostgresServer,
    make_settings: SettingsFactory,
    offline_generator: TransformersGenerator,
    storage_warnings: Warnings,
) -> None:
    url = outage_server.create_database()
    outage_server.stop()
    starting = asyncio.create_task(
        build(
            make_settings,
            offline_generator,
            url,
            database_connect_attempts=200,
            database_retry_backoff_seconds=0.1,
        )
    )
    await storage_warnings.until("is not reachable yet")

    await asyncio.to_thread(outage_server.start)
    engine = await starting

    try:
        reply = await engine.reply(ConversationRef("test", "up"), ALICE, "Hello?")
        assert [m.id for m in await engine.history(ConversationRef("test", "up"))] == [
            reply.user_message_id,
            reply.reply_message_id,
        ]
    finally:
        await engine.aclose()


# -- mid-run ------------------------------------------------------------------------------


async def test_replies_ride_out_a_database_restart_and_nothing_is_lost(
    outage_server: PostgresServer,
    make_settings: SettingsFactory,
    offline_generator: TransformersGenerator,
    storage_warnings: Warnings,
) -> None:
    url = outage_server.create_database()
    database = url.rsplit("/", 1)[1]
    engine = await build(
        make_settings,
        offline_generator,
        url,
        database_outage_seconds=120,
        database_retry_backoff_seconds=0.1,
        max_waiting_per_conversation=10,  # ten messages a chat at once, all to be kept
    )
    chats = [ConversationRef("test", f"chat-{i}") for i in range(4)]
    sent = {chat: [f"{chat.channel_id} message {n}" for n in range(10)] for chat in chats}
    try:
        # Interleaved across conversations, in order within each.
        tasks = [
            asyncio.create_task(engine.reply(chat, ALICE, sent[chat][n]))
            for n in range(10)
            for chat in chats
        ]

        def replies_stored() -> int:
            sql = "SELECT count(*) FROM messages WHERE role = 'assistant'"
            return int(outage_server.psql(sql, database))

        async def two_replies_stored() -> bool:
            return await asyncio.to_thread(replies_stored) >= 2

        await until(two_replies_stored, within=300)
        await asyncio.to_thread(outage_server.stop)  # fast shutdown: sessions are killed
        # The outage lasts until requests have met the closed port (the next replies need
        # the database once generated; with a fast store none may come in a fixed 2 s),
        # then two seconds more.
        await storage_warnings.until("is unreachable", within=100)
        await asyncio.sleep(2)
        await asyncio.to_thread(outage_server.start)
        replies = await asyncio.gather(*tasks)

        assert storage_warnings.count("is unreachable")  # requests did wait out the outage
        assert len({r.user_message_id for r in replies}) == 40
        for chat in chats:
            history = await engine.history(chat, limit=100)
            assert [m.text for m in history if m.role == "user"] == sent[chat]
            assert [m.role for m in history] == ["user", "assistant"] * 10
            for question, answer in zip(history[::2], history[1::2], strict=True):
                assert answer.reply_to_id == question.id
    finally:
        await engine.aclose()


async def test_an_outage_longer_than_the_budget_fails_politely(
    outage_server: PostgresServer,
    make_settings: SettingsFactory,
    offline_generator: TransformersGenerator,
) -> None:
    engine = await build(
        make_settings,
        offline_generator,
        outage_server.create_database(),
        database_outage_seconds=0.3,
        database_retry_backoff_seconds=0.05,
    )
    here = ConversationRef("test", "down")
    try:
        await engine.reply(here, ALICE, "Before the outage.")
        await asyncio.to_thread(outage_server.stop)

        with pytest.raises(StorageError) as caught:
            await engine.reply(here, ALICE, "During the outage.")
        message = str(caught.value)
        assert "unreachable" in message and "try again" in message
        assert outage_server.password not in message
        assert "Traceback" not in message and "\n" not in message

        await asyncio.to_thread(outage_server.start)
        await engine.reply(here, ALICE, "After the outage.")
        texts = [m.text for m in await engine.history(here) if m.role == "user"]
        assert texts == ["Before the outage.", "After the outage."]  # refused, not half-kept
    finally:
        await engine.aclose()


# -- exactly once across a connection lost during COMMIT -----------------------------------


@pytest_asyncio.fixture(loop_scope="function")
async def proxied(postgres_server: PostgresServer) -> AsyncIterator[tuple[CuttingProxy, Database]]:
    proxy = CuttingProxy(postgres_server.port)
    await proxy.start()
    name = postgres_server.create_database().rsplit("/", 1)[1]
    database = await Database.open(
        proxy.url(postgres_server, name),
        retry=RetryPolicy(outage_seconds=30, backoff_seconds=0.05),
    )
    yield proxy, database
    await database.close()
    await proxy.stop()


@pytest.mark.parametrize("cut", ["before commit", "after commit"])
async def test_a_message_is_stored_once_when_the_commit_is_cut_off(
    proxied: tuple[CuttingProxy, Database], cut: str
) -> None:
    proxy, database = proxied
    store = ConversationStore(database)
    state = await store.get_or_create(ConversationRef("test", "cut"), default_persona="friend")
    if cut == "before commit":
        proxy.cut_before_commit = 1
    else:
        proxy.cut_after_commit = 1

    stored = await store.add_message(state.id, role="user", author=ALICE, text="only once")

    assert proxy.cuts == [cut]
    history = await store.history(state.id, limit=10)
    assert history == [stored]


async def test_the_answer_mode_is_read_once_and_never_waits_out_an_outage(
    outage_server: PostgresServer,
    make_settings: SettingsFactory,
    offline_generator: TransformersGenerator,
) -> None:
    """Chat frontends ask for every group message whether to answer it: during an outage
    that must neither park each message in the 30-s retries nor forget a known mode."""
    engine = await build(
        make_settings,
        offline_generator,
        outage_server.create_database(),
        database_outage_seconds=30,
        database_retry_backoff_seconds=0.05,
    )
    busy, quiet = ConversationRef("test", "busy"), ConversationRef("test", "quiet")
    try:
        await engine.set_always_answer(busy, True)
        assert not await engine.always_answer(quiet)  # read once, from the database
        await asyncio.to_thread(outage_server.stop)
        # Known conversations are answered from memory...
        assert await asyncio.wait_for(engine.always_answer(busy), 1)
        assert not await asyncio.wait_for(engine.always_answer(quiet), 1)
        # ...and an unknown one fails at once instead of retrying for 30 s.
        with pytest.raises(StorageError):
            await asyncio.wait_for(engine.always_answer(ConversationRef("test", "new")), 5)
    finally:
        await asyncio.to_thread(outage_server.start)
        await engine.aclose()
