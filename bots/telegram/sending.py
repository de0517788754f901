"""Getting a reply of any length and content into a Telegram chat.

Every outgoing text goes through :func:`send_text`: split to Telegram's 4,096-unit limit on
natural boundaries, rendered as HTML that Telegram can parse, resent as plain text if
Telegram's parser disagrees anyway, and retried briefly on network errors and 5xx answers.
Either way its ``@username`` mentions are neutralised (:func:`neutralise_mentions`): what
the bot sends must never notify anyone.
Flood control (429 with ``retry_after``) is the rate limiter's job, below this layer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from telegram import Bot, InlineKeyboardMarkup, Message, ReplyParameters
from telegram.constants import ChatType, MessageLimit, ParseMode
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TelegramError

from bots.conversation.chunking import split_message
from bots.conversation.scopes import telegram_chat_scope
from bots.telegram.formatting import neutralise_mentions, sent_len, to_html
from core.types import ConversationRef

__all__ = [
    "NETWORK_RETRIES",
    "Place",
    "edit_text",
    "quoting",
    "say",
    "send_text",
    "split_reply",
]

T = TypeVar("T")

log = logging.getLogger(__name__)

#: Extra attempts after a network error or a 5xx; a short outage should not eat a reply that
#: took the model seconds to write, and a long one should not hold the handler forever.
NETWORK_RETRIES = 2
_BACKOFF_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class Place:
    """Where a message came from, which is also where its answer goes."""

    chat_id: int
    chat_type: str
    thread_id: int | None

    @property
    def is_group(self) -> bool:
        return self.chat_type in (ChatType.GROUP, ChatType.SUPERGROUP)

    @property
    def conversation(self) -> ConversationRef:
        """Each chat, and each forum topic of a chat, is a conversation of its own."""
        suffix = "" if self.thread_id is None else f":{self.thread_id}"
        return ConversationRef(
            "telegram", f"{self.chat_id}{suffix}", telegram_chat_scope(self.chat_id)
        )


async def say(
    bot: Bot,
    place: Place,
    text: str,
    to: Message,
    *,
    markup: InlineKeyboardMarkup | None = None,
) -> list[Message]:
    """Send; nothing, logged, when it fails: a failed send must never stop the bot."""
    # In groups the answer quotes the message it answers, so it is clear whose it is.
    reply_to = to.message_id if place.is_group else None
    try:
        return await send_text(
            bot,
            place.chat_id,
            text,
            thread_id=place.thread_id,
            reply_to=reply_to,
            reply_markup=markup,
        )
    except Forbidden as exc:
        log.info("Chat %s blocked or removed the bot; not delivered: %s", place.chat_id, exc)
    except BadRequest as exc:
        log.warning("Telegram refused a message to chat %s: %s", place.chat_id, exc)
    except RetryAfter as exc:
        log.warning("Still rate limited in chat %s after retries: %s", place.chat_id, exc)
    except TelegramError as exc:
        log.error("Could not deliver a message to chat %s: %s", place.chat_id, exc)
    return []


def split_reply(text: str) -> list[str]:
    """``text`` as messages Telegram accepts, cut between paragraphs or sentences; measured
    as sent, neutralised mentions included."""
    return split_message(text, MessageLimit.MAX_TEXT_LENGTH, length=sent_len)


async def send_text(
    bot: Bot,
    chat_id: int,
    text: str,
    *,
    thread_id: int | None = None,
    reply_to: int | None = None,
    reply_markup: InlineKeyboardMarkup | None = None,
) -> list[Message]:
    """Send ``text`` as one or more messages, in order; returns what Telegram sent.

    The first message quotes ``reply_to`` (if given); the keyboard goes on the last one, so
    it sits under the whole answer. Raises Telegram's errors once retries are exhausted.
    """
    chunks = split_reply(text)
    sent: list[Message] = []
    for index, chunk in enumerate(chunks):
        quote = reply_to if index == 0 else None
        markup = reply_markup if index == len(chunks) - 1 else None
        sent.append(await _send_chunk(bot, chat_id, chunk, thread_id, quote, markup))
    return sent


async def _send_chunk(
    bot: Bot,
    chat_id: int,
    chunk: str,
    thread_id: int | None,
    reply_to: int | None,
    markup: InlineKeyboardMarkup | None,
) -> Message:
    reply = quoting(reply_to)

    async def send(text: str, parse_mode: ParseMode | None) -> Message:
        return await bot.send_message(
            chat_id,
            text,
            parse_mode=parse_mode,
            message_thread_id=thread_id,
            reply_parameters=reply,
            reply_markup=markup,
        )

    return await _formatted(send, chunk, chat_id)


def quoting(message_id: int | None) -> ReplyParameters | None:
    """Reply parameters that quote ``message_id``, sent anyway if it was deleted meanwhile."""
    if message_id is None:
        return None
    return ReplyParameters(message_id=message_id, allow_sending_without_reply=True)


async def edit_text(bot: Bot, chat_id: int, message_id: int, chunk: str) -> None:
    """Replace a message's text with ``chunk`` (one message's worth), formatted as sent ones."""

    async def edit(text: str, parse_mode: ParseMode | None) -> object:
        return await bot.edit_message_text(
            text, chat_id=chat_id, message_id=message_id, parse_mode=parse_mode
        )

    await _formatted(edit, chunk, chat_id)


async def _formatted(
    call: Callable[[str, ParseMode | None], Awaitable[T]], chunk: str, chat_id: int
) -> T:
    """``call`` with the chunk as HTML, as plain text if Telegram cannot parse it, retried on
    network errors and 5xx answers; mentions neutralised in both, as this is where every
    reply and edit is handed to Telegram."""
    text = neutralise_mentions(to_html(chunk), html=True)
    parse_mode: ParseMode | None = ParseMode.HTML
    attempt = 0
    while True:
        try:
            return await call(text, parse_mode)
        except BadRequest as exc:  # a subclass of NetworkError: never worth a blind retry
            # "Text is empty": formatting left nothing visible (a reply that is only an
            # empty code fence); its plain text is not empty.
            reason = exc.message.lower()
            if parse_mode is None or not ("parse entities" in reason or "text is empty" in reason):
                raise
            log.warning("Telegram could not parse our HTML (%s); sending plain text.", exc)
            text, parse_mode = neutralise_mentions(chunk), None
        except NetworkError as exc:
            if attempt >= NETWORK_RETRIES:
                raise
            attempt += 1
            delay = _BACKOFF_SECONDS * 2 ** (attempt - 1)
            log.warning("Sending to chat %s failed (%s); retrying in %.1f s.", chat_id, exc, delay)
            await asyncio.sleep(delay)
