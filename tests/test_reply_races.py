"""Commands that race a reply being written, and floods into one conversation.

Run on SQLite and PostgreSQL (``database_url``) with the real offline model and a terse
persona: /reset and /forget while a reply is being written must neither lose the reply
silently nor show anyone a database error, and a flood of messages into one conversation
must be refused past a small cap instead of queueing replies that arrive minutes late.
"""

from __future__ import annotations

import asyncio

from core.engine import BUSY_HERE, Engine
from core.errors import GeneratorBusyError
from core.generation.local.transformers_generator import TransformersGenerator
from core.types import Author, ConversationRef, Reply
from tests.conftest import SettingsFactory
from tests.test_reliability import build

ALICE = Author("u1", "Alice")
HERE = ConversationRef("test", "races")


async def writing(engine: Engine, text: str) -> tuple[asyncio.Task[Reply], asyncio.Event]:
    """Start a reply; the event is set once the model has written its first piece."""
    started = asyncio.Event()
    task = asyncio.create_task(engine.reply(HERE, ALICE, text, on_partial=lambda _: started.set()))
    await asyncio.wait_for(started.wait(), 120)
    return task, started


async def test_reset_while_a_reply_is_written_waits_for_it(
    database_url: str, make_settings: SettingsFactory, offline_generator: TransformersGenerator
) -> None:
    engine = await build(make_settings, offline_generator, database_url, max_new_tokens=24)
    try:
        task, _ = await writing(engine, "Tell me a long story about the sea.")
        removed = await engine.reset(HERE)
        reply = await task  # stored, then reset with the rest: no error
        assert reply.text and reply.reply_message_id is not None
        assert removed == 2
        assert await engine.history(HERE) == []
        after = await engine.reply(HERE, ALICE, "Hello again.")
        assert [m.id for m in await engine.history(HERE)][-1] == after.reply_message_id
    finally:
        await engine.aclose()


async def test_forget_everywhere_while_a_reply_is_written_discards_it_cleanly(
    database_url: str, make_settings: SettingsFactory, offline_generator: TransformersGenerator
) -> None:
    engine = await build(make_settings, offline_generator, database_url, max_new_tokens=24)
    try:
        task, _ = await writing(engine, "Tell me a long story about the mountains.")
        removed = await engine.forget(ALICE, platform=HERE.platform)
        reply = await task  # the message it answers is gone: the reply is not stored
        assert removed == 1 and reply.text and reply.reply_message_id is None
        assert await engine.history(HERE) == []
        # The next message right after is answered and stored as usual.
        after = await engine.reply(HERE, ALICE, "Are you still there?")
        assert [m.role for m in await engine.history(HERE)] == ["user", "assistant"]
        assert after.reply_message_id is not None
    finally:
        await engine.aclose()


async def test_a_flood_into_one_conversation_is_refused_past_the_cap(
    database_url: str, make_settings: SettingsFactory, offline_generator: TransformersGenerator
) -> None:
    engine = await build(
        make_settings, offline_generator, database_url, max_waiting_per_conversation=3
    )
    try:
        flood = [engine.reply(HERE, ALICE, f"Message {i}") for i in range(50)]
        elsewhere = engine.reply(ConversationRef("test", "calm"), ALICE, "Hello.")
        results = await asyncio.gather(*flood, elsewhere, return_exceptions=True)
        answered = [r for r in results[:50] if isinstance(r, Reply)]
        busy = [r for r in results[:50] if isinstance(r, GeneratorBusyError)]
        assert len(answered) == 3 and len(busy) == 47
        assert {str(e) for e in busy} == {BUSY_HERE}
        assert isinstance(results[50], Reply)  # other conversations are not held up
        stored = [m.text for m in await engine.history(HERE) if m.role == "user"]
        assert stored == ["Message 0", "Message 1", "Message 2"]  # refused ones are not kept
        assert engine.replies_in_flight == 0
        # Once the queue drained, the conversation takes messages again.
        assert (await engine.reply(HERE, ALICE, "And now?")).text
    finally:
        await engine.aclose()
