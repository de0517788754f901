"""Many messages at once, and two engines on one database, on SQLite and on PostgreSQL.

Replies come from the real offline model with a terse persona (a few tokens each) so that
hundreds of them fit in a test run on a small CPU; everything else is the product's own
path: cleaning, mood, turn taking, prompt building, storage.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from core.bootstrap import build_engine
from core.generation.local.transformers_generator import TransformersGenerator
from core.types import Author, ConversationRef, StoredMessage
from tests.conftest import SettingsFactory, SharedGenerator
from tests.test_reliability import terse_settings

ALICE = Author("u1", "Alice")
BOB = Author("u2", "Bob")


def assert_answered_in_order(history: list[StoredMessage], sent: list[str]) -> None:
    """Every sent message stored once, in order, each followed by exactly its one reply."""
    assert [m.text for m in history if m.role == "user"] == sent
    assert [m.role for m in history] == ["user", "assistant"] * len(sent)
    for question, answer in zip(history[::2], history[1::2], strict=True):
        assert answer.reply_to_id == question.id
    users = [m.id for m in history if m.role == "user"]
    replies = [m.id for m in history if m.role == "assistant"]
    assert users == sorted(users) and replies == sorted(replies)  # stored in arrival order


@pytest.mark.model
async def test_500_messages_in_50_conversations_are_each_answered_once_in_order(
    database_url: str,
    make_settings: SettingsFactory,
    offline_generator: TransformersGenerator,
) -> None:
    # Two tokens a reply and a short history: the prompt pass is most of the work, so 500
    # replies fit in a test run on a small CPU.
    # Ten messages a conversation at once: more than PERSONABOT_MAX_WAITING_PER_CONVERSATION
    # lets wait by default, which is raised here because this test is about order.
    settings = terse_settings(
        make_settings,
        database_url=database_url,
        max_new_tokens=2,
        history_messages=2,
        max_waiting_per_conversation=10,
    )
    engine = await build_engine(settings, generator=SharedGenerator(offline_generator))
    chats = [ConversationRef("load", f"room-{i:02d}") for i in range(50)]
    sent = {chat: [f"Room {chat.channel_id}, message {n}." for n in range(10)] for chat in chats}
    try:
        # All 500 calls start together, interleaved across conversations.
        replies = await asyncio.gather(
            *(engine.reply(chat, ALICE, sent[chat][n]) for n in range(10) for chat in chats)
        )

        ids = Counter(r.user_message_id for r in replies) + Counter(
            r.reply_message_id for r in replies
        )
        assert len(ids) == 1000 and set(ids.values()) == {1}
        for chat in chats:
            history = await engine.history(chat, limit=100)
            assert_answered_in_order(history, sent[chat])
        assert engine.replies_in_flight == 0
    finally:
        await engine.aclose()


async def test_two_engines_on_one_database_keep_one_consistent_history(
    database_url: str,
    make_settings: SettingsFactory,
    offline_generator: TransformersGenerator,
) -> None:
    """As two bot processes would (Discord shards, or Discord and Telegram apart)."""
    settings = terse_settings(make_settings, database_url=database_url)
    first = await build_engine(settings, generator=SharedGenerator(offline_generator))
    second = await build_engine(settings, generator=SharedGenerator(offline_generator))
    here = ConversationRef("shared", "group")
    try:
        # Both see a new conversation at the same moment: one conversation row, not two.
        opening = await asyncio.gather(
            first.reply(here, ALICE, "Hello from the first process."),
            second.reply(here, BOB, "Hello from the second process."),
        )
        # A setting changed through one is used by the other.
        await first.set_persona(here, "curt")
        texts = [f"Message {n} through {'first' if n % 2 == 0 else 'second'}." for n in range(8)]
        later = await asyncio.gather(
            *(
                (first if n % 2 == 0 else second).reply(here, ALICE if n % 2 else BOB, text)
                for n, text in enumerate(texts)
            )
        )

        seen_by_first = await first.history(here, limit=100)
        seen_by_second = await second.history(here, limit=100)
        assert seen_by_first == seen_by_second
        assert len(seen_by_first) == 2 * (2 + len(texts))
        questions = [m for m in seen_by_first if m.role == "user"]
        assert sorted(m.text for m in questions) == sorted(
            ["Hello from the first process.", "Hello from the second process.", *texts]
        )
        for question, answer in zip(seen_by_first[::2], seen_by_first[1::2], strict=True):
            assert (question.role, answer.role) == ("user", "assistant")
            assert answer.reply_to_id == question.id
        assert {r.persona for r in opening} == {"terse"}
        assert {r.persona for r in later} == {"curt"}
        assert (await second.persona(here)).name == "curt"
        # Each engine answered its own callers' messages in the order they called.
        for engine_replies in (later[0::2], later[1::2]):
            ids = [r.user_message_id for r in engine_replies]
            assert ids == sorted(ids)
    finally:
        await first.aclose()
        await second.aclose()
