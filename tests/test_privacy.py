"""/forget and the retention period, on SQLite and on PostgreSQL, through the engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from core import engine as engine_module
from core.bootstrap import build_engine
from core.engine import Engine
from core.generation.local.transformers_generator import TransformersGenerator
from core.storage import Database
from core.storage.models import Message
from core.types import Author, ConversationRef
from tests.conftest import SettingsFactory, SharedGenerator
from tests.polling import until
from tests.test_reliability import terse_settings

ALICE = Author("u1", "Alice")
BOB = Author("u2", "Bob")
GROUP = ConversationRef("test", "group")
ALICE_DM = ConversationRef("test", "alice-dm")
ELSEWHERE = ConversationRef("other-platform", "u1-chat")


@pytest.fixture
async def engine(
    database_url: str, make_settings: SettingsFactory, offline_generator: TransformersGenerator
) -> AsyncIterator[Engine]:
    settings = terse_settings(make_settings, database_url=database_url)
    built = await build_engine(settings, generator=SharedGenerator(offline_generator))
    yield built
    await built.aclose()


async def texts(engine: Engine, conversation: ConversationRef) -> list[tuple[str, str]]:
    return [(m.author_name, m.text) for m in await engine.history(conversation, limit=100)]


async def test_forget_deletes_the_callers_messages_and_the_replies_to_them(engine: Engine) -> None:
    await engine.set_persona(GROUP, "curt")
    await engine.reply(GROUP, ALICE, "My address is 1 Elm Street.")
    bob = await engine.reply(GROUP, BOB, "I like trains.")
    await engine.reply(GROUP, ALICE, "And my phone number is 555-0100.")
    await engine.reply(ALICE_DM, ALICE, "A private word.")
    await engine.reply(ELSEWHERE, ALICE, "Same id, another platform.")

    assert await engine.forget(ALICE, GROUP) == 4

    left = await engine.history(GROUP)
    assert [(m.author_name, m.role) for m in left] == [("Bob", "user"), ("Curt", "assistant")]
    assert left[1].text == bob.text
    assert (await engine.persona(GROUP)).name == "curt"  # settings are not history
    assert len(await texts(engine, ALICE_DM)) == 2  # only this conversation was asked for

    assert await engine.forget(ALICE, platform="test") == 2
    assert await engine.history(ALICE_DM) == []
    assert len(await texts(engine, ELSEWHERE)) == 2  # user ids are per platform
    assert await engine.forget(ALICE, GROUP) == 0
    assert await engine.forget(ALICE, ConversationRef("test", "never-used")) == 0
    with pytest.raises(ValueError, match="exactly one"):
        await engine.forget(ALICE)


async def test_forget_takes_its_turn_after_a_reply_being_written(engine: Engine) -> None:
    answering = asyncio.create_task(engine.reply(GROUP, ALICE, "Remember my cat Pixel."))
    await asyncio.sleep(0)  # the message has joined its queue; its reply is on the way

    removed = await engine.forget(ALICE, GROUP)

    await answering  # the reply was stored (not failed) and then forgotten with the rest
    assert removed == 2
    assert await engine.history(GROUP) == []


async def age(url: str, message_ids: list[int] | None, days: float) -> None:
    """Backdate stored messages as if they had been written ``days`` ago."""
    database = await Database.open(url)
    try:
        async with database.session() as session, session.begin():
            query = update(Message).values(created_at=datetime.now(UTC) - timedelta(days=days))
            if message_ids is not None:
                query = query.where(Message.id.in_(message_ids))
            await session.execute(query)
    finally:
        await database.close()


async def test_history_past_the_retention_period_is_deleted_at_startup_and_while_running(
    database_url: str,
    make_settings: SettingsFactory,
    offline_generator: TransformersGenerator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keep_forever = terse_settings(make_settings, database_url=database_url)
    engine = await build_engine(keep_forever, generator=SharedGenerator(offline_generator))
    old = await engine.reply(GROUP, ALICE, "Something from last year.")
    recent = await engine.reply(GROUP, BOB, "Something from this week.")
    await engine.aclose()
    # The question is old; its reply is recent (written late), and goes with it anyway.
    await age(database_url, [old.user_message_id], days=400)
    assert recent.reply_message_id is not None
    await age(database_url, [recent.user_message_id, recent.reply_message_id], days=3)

    monkeypatch.setattr(engine_module, "RETENTION_INTERVAL_SECONDS", 0.05)
    retained = terse_settings(make_settings, database_url=database_url, history_retention_days=30)
    engine = await build_engine(retained, generator=SharedGenerator(offline_generator))
    try:
        # At start-up: last year's exchange is gone, this week's stays.
        assert await texts(engine, GROUP) == [
            ("Bob", "Something from this week."),
            ("Terse", recent.text),
        ]
        # While running: this week's exchange ages past the limit and goes at the next run.
        await age(database_url, None, days=31)

        async def all_gone() -> bool:
            return not await engine.history(GROUP)

        await until(all_gone)
        deleted = engine.metrics.purged.labels("retention")._value.get()
        assert deleted == 4
    finally:
        await engine.aclose()
