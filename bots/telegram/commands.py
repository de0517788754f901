"""The Telegram commands, their keyboards' taps and the last-resort error handler.

Each command is one small PTB handler that reads its arguments from the rest of the line,
calls the engine and answers in the chat; the words come from :mod:`bots.conversation`.
In groups, changing the persona, the reply length or the answer mode, resetting and making
or deleting personas are for the group's admins (PERSONABOT_ADMIN_ONLY); in a private chat
the user decides.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from telegram import Bot, CallbackQuery, InlineKeyboardMarkup, Message, Update, User
from telegram.error import TelegramError
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
from bots.conversation.persona_editing import (
    create_persona,
    delete_persona,
    fields_from_text,
    persona_action,
)
from bots.conversation.reply_flow import ReplyFlow
from bots.telegram.admins import is_admin
from bots.telegram.keyboards import (
    LENGTH_DATA,
    PAGE_DATA,
    PERSONA_DATA,
    button_place,
    length_keyboard,
    persona_keyboard,
    replace_keyboard,
)
from bots.telegram.messages import ChatDelivery, TelegramMessages, author_of_message, place_of
from bots.telegram.sending import Place, say
from core.engine import Engine
from core.errors import PersonabotError
from core.types import Author

__all__ = ["COMMANDS", "TelegramCommands"]

log = logging.getLogger(__name__)

Context = ContextTypes.DEFAULT_TYPE

START = ("start", "Say hello and explain how to talk to me")

#: Registered with setMyCommands, so Telegram clients offer them in the "/" menu.
COMMANDS: tuple[tuple[str, str], ...] = (START, *menu("telegram"))

#: /chat's argument: how often the bot speaks in a group.
_ANSWER_MODES = {"always": True, "mention": False, "mentions": False}


def _argument(message: Message) -> str:
    """Everything after the command word, line breaks included."""
    parts = (message.text or "").split(maxsplit=1)
    return parts[1].strip() if len(parts) > 1 else ""


Handler = Callable[[Update, Context], Coroutine[Any, Any, None]]


def _origin(update: Update) -> tuple[Message, Place] | None:
    message = update.message
    return None if message is None else (message, place_of(message))


def _speaker(update: Update) -> tuple[Message, Place, Author] | None:
    """A command's message, where it was sent and by whom; None for other bots."""
    message = update.message
    author = None if message is None else author_of_message(message)
    return None if message is None or author is None else (message, place_of(message), author)


class TelegramCommands:
    """The command and button handlers of one bot, bound to one engine and reply flow."""

    def __init__(self, engine: Engine, flow: ReplyFlow, *, admin_only: bool) -> None:
        self._engine = engine
        self._flow = flow
        self._admin_only = admin_only

    def register(
        self,
        application: Application[Any, Any, Any, Any, Any, Any],
        messages: TelegramMessages,
    ) -> None:
        """Add every handler; plain messages go to ``messages``."""
        commands = {
            "start": self.start,
            "help": self.help,
            "persona": self.persona,
            "personas": self.personas,
            "reset": self.reset,
            "retry": self.retry,
            "forget": self.forget,
            "mood": self.mood,
            "length": self.length,
            "chat": self.chat,
        }
        for name, callback in commands.items():
            application.add_handler(CommandHandler(name, self._guarded(callback)))
        buttons = {
            f"^{PERSONA_DATA}": self.persona_button,
            f"^{PAGE_DATA}": self.persona_page,
            f"^{LENGTH_DATA}": self.length_button,
        }
        for pattern, callback in buttons.items():
            application.add_handler(CallbackQueryHandler(self._limited_taps(callback), pattern))
        application.add_handler(MessageHandler(filters.StatusUpdate.MIGRATE, messages.migrated))
        application.add_handler(MessageHandler(filters.COMMAND, self.unknown_command))
        application.add_handler(
            MessageHandler(
                filters.UpdateType.MESSAGE & filters.TEXT & ~filters.COMMAND, messages.message
            )
        )
        application.add_error_handler(self.error)

    def _guarded(self, handler: Handler) -> Handler:
        """A command handler behind the user's command budget, answering a PersonabotError
        (a database outage, a bad argument) with its text for chat users instead of leaving
        them without an answer and the log with a traceback."""

        @functools.wraps(handler)
        async def guarded(update: Update, context: Context) -> None:
            if (speaker := _speaker(update)) is None:
                return
            message, place, author = speaker
            decision = self._flow.command_allowed(author.id)
            if not decision.allowed:
                if decision.notice is not None:
                    await say(context.bot, place, decision.notice, message)
                return
            try:
                await handler(update, context)
            except PersonabotError as exc:
                log.warning("Telegram command failed: %s", exc)
                await say(context.bot, place, texts.error_text(exc), message)

        return guarded

    def _limited_taps(self, handler: Handler) -> Handler:
        """A button handler behind the user's command budget: a tap may ask Telegram who is
        an admin, and tapping fast must not turn into a flood of such requests."""

        @functools.wraps(handler)
        async def limited(update: Update, context: Context) -> None:
            query = update.callback_query
            if query is None:
                return
            decision = self._flow.command_allowed(str(query.from_user.id))
            if decision.allowed:
                await handler(update, context)
                return
            try:
                await query.answer(decision.notice or texts.SLOW_DOWN)
            except TelegramError as exc:
                log.debug("Could not answer a button tap: %s", exc)

        return limited

    async def _say(
        self,
        bot: Bot,
        place: Place,
        text: str,
        to: Message,
        *,
        markup: InlineKeyboardMarkup | None = None,
    ) -> None:
        """A command's answer: from now on the bot's last message in this conversation."""
        self._flow.spoke(place.conversation)
        await say(bot, place, text, to, markup=markup)

    # -- commands -----------------------------------------------------------------------------

    async def start(self, update: Update, context: Context) -> None:
        if (origin := _origin(update)) is None:
            return
        message, place = origin
        persona = await self._engine.persona(place.conversation)
        how = (
            f"In this group, mention me (@{context.bot.username}) or reply to one of my "
            "messages and I'll answer."
            if place.is_group
            else "Just write to me and I'll answer."
        )
        await self._say(
            context.bot,
            place,
            f"Hi! I'm {persona.display_name}: {persona.description}\n{how}\n\n{help_text()}",
            message,
        )

    async def help(self, update: Update, context: Context) -> None:
        if (origin := _origin(update)) is not None:
            await self._say(context.bot, origin[1], help_text(), origin[0])

    async def persona(self, update: Update, context: Context) -> None:
        """/persona shows it with a keyboard; /persona NAME switches; create and delete."""
        if (origin := _origin(update)) is None:
            return
        message, place = origin
        action, name = persona_action(_argument(message))
        if action in ("create", "delete"):
            await self._edit_personas(context.bot, place, message, action, name)
            return
        if not name:
            current = await self._engine.persona(place.conversation)
            text = f"{texts.current_persona(current)}\nTap one to switch:"
            markup = persona_keyboard(self._engine.personas(place.conversation), current.name)
            await self._say(context.bot, place, text, message, markup=markup)
            return
        if not await self._may_configure(context.bot, place, message.from_user, message):
            await say(context.bot, place, texts.only_admins("change the persona"), message)
            return
        try:
            persona = await self._engine.set_persona(place.conversation, name)
        except PersonabotError as exc:
            await say(context.bot, place, texts.error_text(exc), message)
            return
        await self._say(context.bot, place, texts.persona_set(persona), message)

    async def _edit_personas(
        self, bot: Bot, place: Place, message: Message, action: str, argument: str
    ) -> None:
        """/persona create NAME INSTRUCTIONS and /persona delete NAME."""
        if not await self._may_configure(bot, place, message.from_user, message):
            await say(bot, place, texts.only_admins(f"{action} personas"), message)
            return
        author = author_of_message(message)
        try:
            if action == "create":
                answer = await create_persona(
                    self._engine,
                    fields_from_text(argument),
                    here=place.conversation,
                    created_by=f"telegram:{author.id if author else place.chat_id}",
                    switch_with="/persona",
                )
            else:
                _, answer = await delete_persona(self._engine, argument, here=place.conversation)
        except PersonabotError as exc:
            answer = texts.error_text(exc)
        await self._say(bot, place, answer, message)

    async def personas(self, update: Update, context: Context) -> None:
        if (origin := _origin(update)) is None:
            return
        message, place = origin
        current = (await self._engine.persona(place.conversation)).name
        lines = texts.persona_list(self._engine.personas(place.conversation), current)
        await self._say(context.bot, place, "\n".join(lines), message)

    async def reset(self, update: Update, context: Context) -> None:
        if (origin := _origin(update)) is None:
            return
        message, place = origin
        if not await self._may_configure(context.bot, place, message.from_user, message):
            await say(context.bot, place, texts.only_admins("reset this conversation"), message)
            return
        count = await self._engine.reset(place.conversation)
        await self._say(context.bot, place, texts.conversation_reset(count), message)

    async def retry(self, update: Update, context: Context) -> None:
        """/retry writes the last reply again: the person it answered may ask, or admins."""
        if (speaker := _speaker(update)) is None:
            return
        message, place, author = speaker
        with self._flow.accepted() as accepted:
            if not accepted:
                return
            may_retry_others = await self._may_configure(
                context.bot, place, message.from_user, message
            )
            delivery = ChatDelivery(context.bot, place, message, streaming=False)
            refused = await self._flow.retry(
                place.conversation, author, delivery, may_retry_others=may_retry_others
            )
        if refused:
            await say(context.bot, place, refused, message)

    async def forget(self, update: Update, context: Context) -> None:
        """/forget deletes the caller's own messages here, and the bot's replies to them.

        Anyone may forget what they wrote, in any chat, without being an admin: it is their
        data (see docs/privacy.md). Others' messages in a group stay. ``/forget all`` does
        it in every Telegram chat with the bot.
        """
        if (speaker := _speaker(update)) is None:
            return
        message, place, author = speaker
        everywhere = _argument(message).lower() == "all"
        try:
            if everywhere:
                count = await self._engine.forget(author, platform=place.conversation.platform)
            else:
                count = await self._engine.forget(author, place.conversation)
        except PersonabotError as exc:
            await say(context.bot, place, texts.error_text(exc), message)
            return
        await self._say(context.bot, place, texts.forgotten(count, everywhere=everywhere), message)

    async def mood(self, update: Update, context: Context) -> None:
        if (origin := _origin(update)) is None:
            return
        message, place = origin
        text = _argument(message)
        if text:
            try:
                answer = texts.mood_of_text(await self._engine.detect_mood(text))
            except PersonabotError as exc:
                answer = texts.error_text(exc)
        else:
            author = author_of_message(message)
            mood = (
                None
                if author is None
                else await last_mood(self._engine, place.conversation, author.id)
            )
            answer = texts.last_mood(mood, "/mood TEXT")
        await self._say(context.bot, place, answer, message)

    async def length(self, update: Update, context: Context) -> None:
        if (origin := _origin(update)) is None:
            return
        message, place = origin
        argument = _argument(message)
        if not argument:
            current = await self._engine.length(place.conversation)
            await self._say(
                context.bot,
                place,
                f"{texts.reply_length(current)} Tap one to change it:",
                message,
                markup=length_keyboard(current),
            )
            return
        if not await self._may_configure(context.bot, place, message.from_user, message):
            await say(context.bot, place, texts.only_admins("change the reply length"), message)
            return
        try:
            preset = await self._engine.set_length(place.conversation, argument)
        except ValueError as exc:
            await say(context.bot, place, str(exc).capitalize() + ".", message)
            return
        await self._say(context.bot, place, texts.length_set(preset), message)

    async def chat(self, update: Update, context: Context) -> None:
        """/chat always|mention: in a group, answer every message or only when spoken to."""
        if (origin := _origin(update)) is None:
            return
        message, place = origin
        bot = context.bot
        if not place.is_group:
            await say(bot, place, texts.answer_mode(True, private=True), message)
            return
        argument = _argument(message).lower()
        if argument not in _ANSWER_MODES:
            always = await self._flow.answers_everything(place.conversation)
            answer = f"{texts.answer_mode(always, private=False)} {texts.CHAT_USAGE}"
            await say(bot, place, answer, message)
            return
        if not await self._may_configure(bot, place, message.from_user, message):
            await say(bot, place, texts.only_admins("change when I answer"), message)
            return
        always = _ANSWER_MODES[argument]
        await self._engine.set_always_answer(place.conversation, always)
        answer = texts.answer_mode_set(always)
        if always and not bot.can_read_all_group_messages:
            answer = f"{answer}\n{texts.TELEGRAM_PRIVACY_MODE}"
        await self._say(bot, place, answer, message)

    async def unknown_command(self, update: Update, context: Context) -> None:
        if (origin := _origin(update)) is None or not origin[0].text:
            return
        message, place = origin
        word = (message.text or "").split(maxsplit=1)[0]
        command, _, target = word.partition("@")
        # In a group, a bare unknown /command is probably for another bot.
        ours = target.lower() == context.bot.username.lower() if target else not place.is_group
        if ours:
            await say(context.bot, place, texts.unknown_command(command.lstrip("/")), message)

    # -- buttons ------------------------------------------------------------------------------

    async def persona_button(self, update: Update, context: Context) -> None:
        try:
            if (tap := await self._admin_tap(update, context, "/persona", "persona")) is None:
                return
            query, place, data = tap
            try:
                persona = await self._engine.set_persona(place.conversation, data)
            except PersonabotError as exc:
                await query.answer(texts.error_text(exc)[:200], show_alert=True)
                return
            await query.answer(f"Persona set to {persona.display_name}.")
            await replace_keyboard(context.bot, query, place, texts.persona_set(persona))
        except TelegramError as exc:
            log.warning("Persona button in %s: %s", button_place(update), exc)

    async def length_button(self, update: Update, context: Context) -> None:
        try:
            if (tap := await self._admin_tap(update, context, "/length", "reply length")) is None:
                return
            query, place, data = tap
            try:
                preset = await self._engine.set_length(place.conversation, data)
            except ValueError as exc:
                await query.answer(str(exc)[:200], show_alert=True)
                return
            await query.answer(texts.length_set(preset))
            await replace_keyboard(context.bot, query, place, texts.length_set(preset))
        except TelegramError as exc:
            log.warning("Length button in %s: %s", button_place(update), exc)

    async def _admin_tap(
        self, update: Update, context: Context, command: str, what: str
    ) -> tuple[CallbackQuery, Place, str] | None:
        """A tap on a keyboard that changes the chat: its query, chat and the chosen value
        (after the prefix), when the tapper may change ``what`` here; else answered, None."""
        query = update.callback_query
        if query is None or query.data is None:
            return None
        place = button_place(update)
        if place is None:
            await query.answer(f"This keyboard is too old; send {command} again.")
            return None
        if not await self._may_configure(context.bot, place, query.from_user, None):
            await query.answer(texts.only_admins(f"change the {what}"), show_alert=True)
            return None
        return query, place, query.data.partition(":")[2]

    # -- errors -------------------------------------------------------------------------------

    async def error(self, update: object, context: Context) -> None:
        """Last resort: log, and let the poller carry on with the next update."""
        log.error(
            "Error while handling a Telegram update: %s", context.error, exc_info=context.error
        )

    # -- helpers ------------------------------------------------------------------------------

    async def _may_configure(
        self, bot: Bot, place: Place, user: User | None, message: Message | None
    ) -> bool:
        """Whether this person may change what the whole group's conversation is like."""
        return not self._admin_only or await is_admin(bot, place, user, message)

    async def persona_page(self, update: Update, context: Context) -> None:
        """◀ and ▶ under /persona's keyboard: show another page of personas."""
        query = update.callback_query
        if query is None or query.data is None:
            return
        place = button_place(update)
        try:
            if place is None:
                await query.answer("This keyboard is too old; send /persona again.")
                return
            page = int(query.data.removeprefix(PAGE_DATA) or 0)
            current = (await self._engine.persona(place.conversation)).name
            await query.answer()
            await query.edit_message_reply_markup(
                persona_keyboard(self._engine.personas(place.conversation), current, page)
            )
        except (TelegramError, ValueError) as exc:
            log.warning("Persona page button in %s: %s", place, exc)


def help_text() -> str:
    lines = [
        f"/{START[0]}: {START[1]}",
        *(f"{u}: {about}" for u, about in help_lines("telegram")),
    ]
    return "Commands:\n" + "\n".join(lines)
