"""The people and chats of the Telegram tests, and waiting for the bot's answers."""

from __future__ import annotations

from typing import Any

from bots.conversation.scopes import telegram_chat_scope
from core.types import ConversationRef
from tests.fake_telegram import FakeBotAPI

JSON = dict[str, Any]

ALICE = FakeBotAPI.user(501, "Alice", "Liddell")
BOB = FakeBotAPI.user(502, "Bob")
GROUP_ID = -1001234


def private(user: JSON) -> JSON:
    return FakeBotAPI.private_chat(user)


def conversation(chat_id: int, thread: int | None = None) -> ConversationRef:
    """The conversation of a chat (or one of its forum topics), in the chat's scope."""
    channel = f"{chat_id}" if thread is None else f"{chat_id}:{thread}"
    return ConversationRef("telegram", channel, telegram_chat_scope(chat_id))


async def answers(api: FakeBotAPI, chat_id: int, count: int) -> list[JSON]:
    """The first ``count`` messages the bot sent to ``chat_id``, once they exist."""
    await api.wait_for(lambda: len(api.sent_to(chat_id)) >= count)
    return api.sent_to(chat_id)[:count]
