"""Telegram messages in, engine calls, Telegram messages out.

Everything here is translation: which chat and topic a message belongs to, whether it is
addressed to the bot, who wrote it. Personas, moods, history and generation are the
engine's; the reply workflow is :mod:`bots.conversation.reply_flow`'s; splitting and
escaping are :mod:`bots.telegram.sending`'s.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable

from telegram import Bot, Message, MessageEntity, Update, User
from telegram.constants import ChatAction, ChatType
from telegram.error import Forbidden, TelegramError
from telegram.ext import ContextTypes

from bots.conversation.reply_flow import ReplyFlow, Sent, Stream
from bots.telegram.sending import Place, edit_text, say, split_reply
from bots.telegram.streaming import StreamingReply
from core.types import Author

__all__ = [
    "TYPING_REFRESH_SECONDS",
    "ChatDelivery",
    "TelegramMessages",
    "addressed_to",
    "author_of",
    "author_of_message",
    "place_of",
    "strip_mention",
]

log = logging.getLogger(__name__)

Context = ContextTypes.DEFAULT_TYPE

#: Telegram shows "typing…" for five seconds, or until the bot sends a message.
TYPING_REFRESH_SECONDS = 4.5


def place_of(message: Message) -> Place:
    thread_id = message.message_thread_id if message.is_topic_message else None
    return Place(message.chat.id, message.chat.type, thread_id)


def author_of(user: User) -> Author:
    return Author(id=str(user.id), display_name=user.full_name)


def author_of_message(message: Message) -> Author | None:
    """Who wrote it; None for other bots, so two bots never talk each other into a loop.

    Anonymous group admins and channels post as a chat (``sender_chat``), and Telegram sets
    ``from`` to a placeholder bot; the chat is then the author.
    """
    if message.sender_chat is not None:
        chat = message.sender_chat
        return Author(id=str(chat.id), display_name=chat.effective_name or str(chat.id))
    user = message.from_user
    if user is None or user.is_bot:
        return None
    return author_of(user)


def addressed_to(message: Message, bot: Bot) -> bool:
    """In a group, the bot speaks only when spoken to: an @mention or a reply to it."""
    replied = message.reply_to_message
    # In forum topics every message "replies" to the topic's creation message; that is not
    # a reply to the bot even when the bot opened the topic.
    if (
        replied is not None
        and replied.from_user is not None
        and replied.from_user.id == bot.id
        and replied.forum_topic_created is None
    ):
        return True
    mention = f"@{bot.username}".lower()
    entities = message.parse_entities([MessageEntity.MENTION, MessageEntity.TEXT_MENTION])
    for entity, value in entities.items():
        if entity.type == MessageEntity.MENTION and value.lower() == mention:
            return True
        if entity.user is not None and entity.user.id == bot.id:
            return True
    return False


def strip_mention(text: str, username: str) -> str:
    """``@PersonaBot hi there`` is the message ``hi there``."""
    stripped = re.sub(rf"@{re.escape(username)}\b", "", text, flags=re.IGNORECASE)
    return re.sub(r"[ \t]{2,}", " ", stripped).strip() or text


class TelegramMessages:
    """Answers the messages addressed to the bot through the shared reply workflow."""

    def __init__(self, flow: ReplyFlow, *, stream_replies: bool) -> None:
        self._flow = flow
        self._streaming = stream_replies

    async def message(self, update: Update, context: Context) -> None:
        """PTB's MessageHandler callback for text that is not a command."""
        message = update.message
        if message is None or message.text is None:
            return
        author = author_of_message(message)
        if author is None:
            return
        place = place_of(message)
        with self._flow.accepted() as accepted:
            if not accepted:
                return
            if place.is_group and not (
                addressed_to(message, context.bot)
                or await self._flow.answers_everything(place.conversation)
            ):
                return
            text = message.text
            if place.is_group:
                text = strip_mention(text, context.bot.username)
            delivery = ChatDelivery(context.bot, place, message, streaming=self._streaming)
            await self._flow.answer(place.conversation, author, text, delivery)

    async def migrated(self, update: Update, context: Context) -> None:
        """A group became a supergroup, which has a new chat id: its conversation (persona,
        length, history) and its own personas move with it. Telegram says so in both chats;
        the second notice finds nothing left to move."""
        message = update.message
        if message is None:
            return
        if message.migrate_to_chat_id is not None:
            old, new = message.chat.id, message.migrate_to_chat_id
        elif message.migrate_from_chat_id is not None:
            old, new = message.migrate_from_chat_id, message.chat.id
        else:
            return
        source = Place(old, ChatType.GROUP, None).conversation
        target = Place(new, ChatType.SUPERGROUP, None).conversation
        if await self._flow.moved(source, target):
            log.info("Telegram group %s is now supergroup %s; its conversation moved.", old, new)


class ChatDelivery:
    """Answers one message in its chat (and forum topic)."""

    def __init__(self, bot: Bot, place: Place, message: Message, *, streaming: bool) -> None:
        self._bot = bot
        self._place = place
        self._message = message
        self._streaming = streaming

    async def show_typing(self) -> bool:
        try:
            await self._bot.send_chat_action(
                self._place.chat_id, ChatAction.TYPING, message_thread_id=self._place.thread_id
            )
        except Forbidden:
            return False
        except TelegramError as exc:
            log.debug("Typing indicator failed in chat %s: %s", self._place.chat_id, exc)
        return True

    async def send(self, text: str) -> Sent:
        return await say(self._bot, self._place, text, self._message)

    async def edit(self, sent: Sent, text: str) -> bool:
        """Edit a one-message reply when the new text fits one message too."""
        message = sent[0] if len(sent) == 1 else None
        if not isinstance(message, Message) or len(split_reply(text)) > 1:
            return False
        try:
            await edit_text(self._bot, self._place.chat_id, message.message_id, text)
        except TelegramError as exc:
            log.info("Could not edit my reply in chat %s: %s", self._place.chat_id, exc)
            return False
        return True

    def stream(self, ready: Callable[[], Awaitable[object]]) -> Stream | None:
        if not self._streaming:
            return None
        return StreamingReply(
            self._bot,
            self._place.chat_id,
            private=self._place.chat_type == ChatType.PRIVATE,
            thread_id=self._place.thread_id,
            reply_to=self._message.message_id if self._place.is_group else None,
            ready=ready,
        )
