"""Telegram updates in, engine calls, Telegram messages out.

Everything here is translation: which chat and topic a message belongs to, whether it is
addressed to the bot, who wrote it. Personas, moods, history and generation are the
engine's; splitting and escaping are :mod:`bots.telegram.sending`'s.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from telegram import (
    Bot,
    Chat,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    MessageEntity,
    Update,
    User,
)
from telegram.constants import ChatAction, ChatMemberStatus, ChatType
from telegram.error import BadRequest, Forbidden, RetryAfter, TelegramError
from telegram.ext import (
    Application,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from bots.conversation import texts
from bots.conversation.commands import help_lines, menu
from bots.conversation.last_mood import last_mood
from bots.conversation.reply_flow import ReplyFlow, Stream
from bots.telegram.sending import send_text
from bots.telegram.streaming import StreamingReply
from core.engine import Engine
from core.errors import PersonabotError
from core.types import Author, ConversationRef, LengthPreset

__all__ = [
    "COMMANDS",
    "Place",
    "TelegramFrontend",
    "addressed_to",
    "author_of",
    "author_of_message",
    "place_of",
]

log = logging.getLogger(__name__)

Context = ContextTypes.DEFAULT_TYPE

START = ("start", "Say hello and explain how to talk to me")

#: Registered with setMyCommands, so Telegram clients offer them in the "/" menu.
COMMANDS: tuple[tuple[str, str], ...] = (START, *menu("telegram"))

#: Telegram shows "typing…" for five seconds, or until the bot sends a message.
TYPING_REFRESH_SECONDS = 4.5

_PERSONA_DATA = "persona:"
_LENGTH_DATA = "length:"


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
        return ConversationRef("telegram", f"{self.chat_id}{suffix}")


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


def _argument(message: Message) -> str:
    """Everything after the command word, line breaks included."""
    parts = (message.text or "").split(maxsplit=1)
    return parts[1].strip() if len(parts) > 1 else ""


class TelegramFrontend:
    """The handlers of one bot, bound to one engine and the settings read at start-up."""

    def __init__(
        self, engine: Engine, flow: ReplyFlow, *, admin_only: bool, stream_replies: bool = False
    ) -> None:
        self._engine = engine
        self._flow = flow
        self._admin_only = admin_only
        self._streaming = stream_replies

    def register(self, application: Application[Any, Any, Any, Any, Any, Any]) -> None:
        commands = {
            "start": self.start,
            "help": self.help,
            "persona": self.persona,
            "personas": self.personas,
            "reset": self.reset,
            "forget": self.forget,
            "mood": self.mood,
            "length": self.length,
        }
        for name, callback in commands.items():
            application.add_handler(CommandHandler(name, callback))
        application.add_handler(CallbackQueryHandler(self.persona_button, pattern=r"^persona:"))
        application.add_handler(CallbackQueryHandler(self.length_button, pattern=r"^length:"))
        application.add_handler(MessageHandler(filters.COMMAND, self.unknown_command))
        application.add_handler(
            MessageHandler(
                filters.UpdateType.MESSAGE & filters.TEXT & ~filters.COMMAND, self.message
            )
        )
        application.add_error_handler(self.error)

    # -- messages -----------------------------------------------------------------------------

    async def message(self, update: Update, context: Context) -> None:
        message = update.message
        if message is None or message.text is None:
            return
        author = author_of_message(message)
        if author is None:
            return
        place = place_of(message)
        if place.is_group and not addressed_to(message, context.bot):
            return
        text = strip_mention(message.text, context.bot.username) if place.is_group else message.text
        with self._flow.accepted() as accepted:
            if accepted:
                delivery = ChatDelivery(context.bot, place, message, streaming=self._streaming)
                await self._flow.answer(place.conversation, author, text, delivery)

    # -- commands -----------------------------------------------------------------------------

    async def start(self, update: Update, context: Context) -> None:
        message, place = self._origin(update)
        if message is None or place is None:
            return
        persona = await self._engine.persona(place.conversation)
        how = (
            f"In this group, mention me (@{context.bot.username}) or reply to one of my "
            "messages and I'll answer."
            if place.is_group
            else "Just write to me and I'll answer."
        )
        await say(
            context.bot,
            place,
            f"Hi! I'm {persona.display_name}: {persona.description}\n{how}\n\n{self._help_text()}",
            message,
        )

    async def help(self, update: Update, context: Context) -> None:
        message, place = self._origin(update)
        if message is not None and place is not None:
            await say(context.bot, place, self._help_text(), message)

    async def persona(self, update: Update, context: Context) -> None:
        message, place = self._origin(update)
        if message is None or place is None:
            return
        name = _argument(message)
        if not name:
            current = await self._engine.persona(place.conversation)
            text = f"{texts.current_persona(current)}\nTap one to switch:"
            markup = self._persona_keyboard(current.name)
            await say(context.bot, place, text, message, markup=markup)
            return
        if not await self._may_configure(context.bot, place, message.from_user, message):
            await say(context.bot, place, texts.only_admins("change the persona"), message)
            return
        try:
            persona = await self._engine.set_persona(place.conversation, name)
        except PersonabotError as exc:
            await say(context.bot, place, str(exc), message)
            return
        await say(context.bot, place, texts.persona_set(persona), message)

    async def personas(self, update: Update, context: Context) -> None:
        message, place = self._origin(update)
        if message is None or place is None:
            return
        current = (await self._engine.persona(place.conversation)).name
        lines = texts.persona_list(self._engine.personas(), current)
        await say(context.bot, place, "\n".join(lines), message)

    async def reset(self, update: Update, context: Context) -> None:
        message, place = self._origin(update)
        if message is None or place is None:
            return
        if not await self._may_configure(context.bot, place, message.from_user, message):
            await say(context.bot, place, texts.only_admins("reset this conversation"), message)
            return
        count = await self._engine.reset(place.conversation)
        await say(context.bot, place, texts.conversation_reset(count), message)

    async def forget(self, update: Update, context: Context) -> None:
        """/forget deletes the caller's own messages here, and the bot's replies to them.

        Anyone may forget what they wrote, in any chat, without being an admin: it is their
        data (see docs/privacy.md). Others' messages in a group stay. ``/forget all`` does
        it in every Telegram chat with the bot.
        """
        message, place = self._origin(update)
        if message is None or place is None:
            return
        author = author_of_message(message)
        if author is None:
            return
        everywhere = _argument(message).lower() == "all"
        try:
            if everywhere:
                count = await self._engine.forget(author, platform=place.conversation.platform)
            else:
                count = await self._engine.forget(author, place.conversation)
        except PersonabotError as exc:
            await say(context.bot, place, str(exc), message)
            return
        await say(context.bot, place, texts.forgotten(count, everywhere=everywhere), message)

    async def mood(self, update: Update, context: Context) -> None:
        message, place = self._origin(update)
        if message is None or place is None:
            return
        text = _argument(message)
        if text:
            try:
                answer = texts.mood_of_text(await self._engine.detect_mood(text))
            except PersonabotError as exc:
                answer = str(exc)
        else:
            author = author_of_message(message)
            mood = (
                None
                if author is None
                else await last_mood(self._engine, place.conversation, author.id)
            )
            answer = texts.last_mood(mood, "/mood TEXT")
        await say(context.bot, place, answer, message)

    async def length(self, update: Update, context: Context) -> None:
        message, place = self._origin(update)
        if message is None or place is None:
            return
        argument = _argument(message)
        if not argument:
            current = await self._engine.length(place.conversation)
            await say(
                context.bot,
                place,
                f"{texts.reply_length(current)} Tap one to change it:",
                message,
                markup=self._length_keyboard(current),
            )
            return
        try:
            preset = await self._engine.set_length(place.conversation, argument)
        except ValueError as exc:
            await say(context.bot, place, str(exc).capitalize() + ".", message)
            return
        await say(context.bot, place, texts.length_set(preset), message)

    async def unknown_command(self, update: Update, context: Context) -> None:
        message, place = self._origin(update)
        if message is None or place is None or not message.text:
            return
        word = message.text.split(maxsplit=1)[0]
        command, _, target = word.partition("@")
        # In a group, a bare unknown /command is probably for another bot.
        ours = target.lower() == context.bot.username.lower() if target else not place.is_group
        if ours:
            await say(context.bot, place, texts.unknown_command(command.lstrip("/")), message)

    # -- buttons ------------------------------------------------------------------------------

    async def persona_button(self, update: Update, context: Context) -> None:
        query = update.callback_query
        if query is None or query.data is None:
            return
        chosen = query.data.removeprefix(_PERSONA_DATA)
        place = self._button_place(update)
        try:
            if place is None:
                await query.answer("This keyboard is too old; send /persona again.")
                return
            if not await self._may_configure(context.bot, place, query.from_user, None):
                await query.answer(texts.only_admins("change the persona"), show_alert=True)
                return
            try:
                persona = await self._engine.set_persona(place.conversation, chosen)
            except PersonabotError as exc:
                await query.answer(str(exc)[:200], show_alert=True)
                return
            await query.answer(f"Persona set to {persona.display_name}.")
            await query.edit_message_text(texts.persona_set(persona))
        except TelegramError as exc:
            log.warning("Persona button in %s: %s", place, exc)

    async def length_button(self, update: Update, context: Context) -> None:
        query = update.callback_query
        if query is None or query.data is None:
            return
        place = self._button_place(update)
        try:
            if place is None:
                await query.answer("This keyboard is too old; send /length again.")
                return
            try:
                preset = await self._engine.set_length(
                    place.conversation, query.data.removeprefix(_LENGTH_DATA)
                )
            except ValueError as exc:
                await query.answer(str(exc)[:200], show_alert=True)
                return
            await query.answer(texts.length_set(preset))
            await query.edit_message_text(texts.length_set(preset))
        except TelegramError as exc:
            log.warning("Length button in %s: %s", place, exc)

    # -- errors -------------------------------------------------------------------------------

    async def error(self, update: object, context: Context) -> None:
        """Last resort: log, and let the poller carry on with the next update."""
        log.error(
            "Error while handling a Telegram update: %s", context.error, exc_info=context.error
        )

    # -- helpers ------------------------------------------------------------------------------

    @staticmethod
    def _origin(update: Update) -> tuple[Message | None, Place | None]:
        message = update.message
        return (message, place_of(message)) if message is not None else (None, None)

    @staticmethod
    def _button_place(update: Update) -> Place | None:
        query = update.callback_query
        message = None if query is None else query.message
        if isinstance(message, Message):
            return place_of(message)
        return None

    async def _may_configure(
        self, bot: Bot, place: Place, user: User | None, message: Message | None
    ) -> bool:
        """Whether this person may change what the whole group's conversation is like."""
        if not place.is_group or not self._admin_only:
            return True
        sender_chat: Chat | None = None if message is None else message.sender_chat
        if sender_chat is not None and sender_chat.id == place.chat_id:
            return True  # an anonymous admin, posting as the group itself
        if user is None:
            return False
        try:
            member = await bot.get_chat_member(place.chat_id, user.id)
        except TelegramError as exc:
            log.warning("Cannot check admin rights in chat %s: %s", place.chat_id, exc)
            return False
        return member.status in (ChatMemberStatus.ADMINISTRATOR, ChatMemberStatus.OWNER)

    def _persona_keyboard(self, current: str) -> InlineKeyboardMarkup:
        buttons = [
            InlineKeyboardButton(
                f"{'✓ ' if p.name == current else ''}{p.display_name}",
                callback_data=f"{_PERSONA_DATA}{p.name}",
            )
            for p in self._engine.personas()
        ]
        return InlineKeyboardMarkup([buttons[i : i + 2] for i in range(0, len(buttons), 2)])

    @staticmethod
    def _length_keyboard(current: LengthPreset) -> InlineKeyboardMarkup:
        return InlineKeyboardMarkup(
            [
                [
                    InlineKeyboardButton(
                        f"{'✓ ' if p is current else ''}{p.value}",
                        callback_data=f"{_LENGTH_DATA}{p.value}",
                    )
                    for p in LengthPreset
                ]
            ]
        )

    @staticmethod
    def _help_text() -> str:
        lines = [
            f"/{START[0]}: {START[1]}",
            *(f"{u}: {about}" for u, about in help_lines("telegram")),
        ]
        return "Commands:\n" + "\n".join(lines)


async def say(
    bot: Bot,
    place: Place,
    text: str,
    to: Message,
    *,
    markup: InlineKeyboardMarkup | None = None,
) -> None:
    """Send, logging what cannot be sent: a failed send must never stop the bot."""
    # In groups the answer quotes the message it answers, so it is clear whose it is.
    reply_to = to.message_id if place.is_group else None
    try:
        await send_text(
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

    async def send(self, text: str) -> None:
        await say(self._bot, self._place, text, self._message)

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
