"""Discord messages in, engine calls, Discord messages out.

Everything here is translation: which conversation a message belongs to, whether it is
addressed to the bot, who wrote it and what they wrote in words the model can read.
Personas, moods, history and generation are the engine's; splitting and mention safety are
:mod:`bots.discord.sending`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable

import aiohttp
import discord

from bots.discord.sending import StreamingReply, send_text
from core.cooldown import RateLimits
from core.engine import Engine
from core.errors import PersonabotError
from core.ordering import TurnQueue
from core.types import Author, ConversationRef

__all__ = [
    "PLATFORM",
    "MessageHandler",
    "addressed_to",
    "author_of",
    "conversation_of",
    "readable_text",
]

log = logging.getLogger(__name__)

#: The platform name in conversation keys: ``discord:<channel or thread id>``.
PLATFORM = "discord"

#: Discord shows "is typing…" for about ten seconds after each trigger.
TYPING_REFRESH_SECONDS = 8.0

#: Message types that are people talking (not joins, pins, boosts, thread starters...).
_CHAT_TYPES = (discord.MessageType.default, discord.MessageType.reply)

_USER_MENTION = re.compile(r"<@!?(\d+)>")
_ROLE_MENTION = re.compile(r"<@&(\d+)>")
_CHANNEL_MENTION = re.compile(r"<#(\d+)>")
_SPACES = re.compile(r"[ \t]{2,}")


def conversation_of(channel: discord.abc.Messageable | discord.abc.Snowflake) -> ConversationRef:
    """Every channel, thread and DM is its own conversation (a thread has its own id)."""
    return ConversationRef(PLATFORM, str(getattr(channel, "id", channel)))


def author_of(user: discord.abc.User) -> Author:
    """The id for bookkeeping and the name people see here (server nickname first), so the
    model can tell the people in a group conversation apart."""
    return Author(id=str(user.id), display_name=user.display_name)


def addressed_to(message: discord.Message, me: discord.abc.User) -> bool:
    """In a server the bot speaks when spoken to: a mention of it (or of its own role), or
    a reply to one of its messages. ``@everyone`` and ``@here`` do not count."""
    if any(user.id == me.id for user in message.mentions):
        return True
    if any(_is_own_role(role, me) for role in message.role_mentions):
        return True
    reference = message.reference
    resolved = None if reference is None else reference.resolved
    return isinstance(resolved, discord.Message) and resolved.author.id == me.id


def _is_own_role(role: discord.Role, me: discord.abc.User) -> bool:
    """The role Discord creates for the bot when it joins; people mention it by mistake."""
    return role.tags is not None and role.tags.bot_id == me.id


def readable_text(message: discord.Message, me: discord.abc.User) -> str:
    """The message as a person reads it: mentions of the bot removed, other mentions as
    ``@Name`` and ``#channel`` instead of ``<@123>`` markup the model cannot understand."""
    users = {user.id: user.display_name for user in message.mentions}
    roles = {role.id: role for role in message.role_mentions}

    def user(match: re.Match[str]) -> str:
        user_id = int(match.group(1))
        return "" if user_id == me.id else f"@{users.get(user_id, 'someone')}"

    def role(match: re.Match[str]) -> str:
        found = roles.get(int(match.group(1)))
        if found is None:
            return "@role"
        return "" if _is_own_role(found, me) else f"@{found.name}"

    def channel(match: re.Match[str]) -> str:
        guild = message.guild
        found = None if guild is None else guild.get_channel_or_thread(int(match.group(1)))
        return f"#{found.name}" if found is not None else "#channel"

    text = _USER_MENTION.sub(user, message.content)
    text = _ROLE_MENTION.sub(role, text)
    text = _CHANNEL_MENTION.sub(channel, text)
    lines = [_SPACES.sub(" ", line).strip() for line in text.splitlines()]
    return "\n".join(lines).strip()


class MessageHandler:
    """Answers the messages addressed to the bot, one engine call per message.

    Two cooldowns guard the model, which every server shares: one per user and one per
    channel, each with a single short notice per cooldown window. Replies are sent in
    arrival order per conversation, and in-flight replies are tracked so a shutdown can let
    them finish first.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        user_cooldown_seconds: float,
        channel_cooldown_seconds: float,
        stream_replies: bool,
    ) -> None:
        self._engine = engine
        self._limits = RateLimits(
            user_seconds=user_cooldown_seconds, conversation_seconds=channel_cooldown_seconds
        )
        self._stream = stream_replies
        # The engine answers a conversation's messages in order; this keeps the *sending*
        # in the same order, so a quick second reply never overtakes a long first one.
        self._send_order = TurnQueue()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._accepting = True

    async def drain(self) -> None:
        """Stop taking messages and wait until the replies being written are sent."""
        self._accepting = False
        if self._in_flight:
            log.info("Discord: finishing %d reply(ies) before stopping.", len(self._in_flight))
            await asyncio.wait(set(self._in_flight))

    async def on_message(self, message: discord.Message, me: discord.ClientUser) -> None:
        """discord.py's on_message: decide whether to answer, then answer."""
        if not self._accepting or not _is_chat(message, me):
            return
        # Tracked from here on, so that a shutdown waits for it once it has been accepted.
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        try:
            conversation = conversation_of(message.channel)
            if message.guild is not None and not (
                addressed_to(message, me) or await self._always_answer(conversation)
            ):
                return
            await self._handle(message, me, conversation)
        finally:
            if task is not None:
                self._in_flight.discard(task)

    async def _always_answer(self, conversation: ConversationRef) -> bool:
        try:
            return await self._engine.always_answer(conversation)
        except PersonabotError as exc:  # a database hiccup: answer only when addressed
            log.warning("Cannot read the answer mode of %s: %s", conversation.key(), exc)
            return False

    async def _handle(
        self, message: discord.Message, me: discord.ClientUser, conversation: ConversationRef
    ) -> None:
        text = readable_text(message, me)
        if not text:
            await self._say(
                message.channel,
                f"Yes? Write your message after the mention, e.g. @{me.display_name} "
                "how was your day?",
                message,
            )
            return
        if not await self._within_cooldowns(message, conversation):
            return
        author = author_of(message.author)
        channel = message.channel
        # Taken right before the engine call (which queues the message at once), so replies
        # are sent in the order the engine answers them.
        send_turn = self._send_order.join(conversation.key())
        try:
            streaming = (
                StreamingReply(channel, reference=self._quote(message), ready=send_turn.wait)
                if self._stream
                else None
            )
            typing = asyncio.create_task(_keep_typing(channel))
            try:
                answer = await self._answer(conversation, author, text, streaming)
            finally:
                typing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await typing
            await send_turn.wait()
            if streaming is not None:
                await self._deliver(streaming.finish(answer), channel)
            else:
                await self._say(channel, answer, message)
        finally:
            send_turn.finish()

    async def _within_cooldowns(
        self, message: discord.Message, conversation: ConversationRef
    ) -> bool:
        """Take the user's and the channel's cooldown, or say (once per window) why not."""
        decision = self._limits.check(str(message.author.id), conversation.key())
        if decision.notice is not None:
            await self._say(message.channel, decision.notice, message)
        return decision.allowed

    async def _answer(
        self,
        conversation: ConversationRef,
        author: Author,
        text: str,
        streaming: StreamingReply | None,
    ) -> str:
        """The reply, or a message saying why there is none; never an exception."""
        try:
            reply = await self._engine.reply(
                conversation,
                author,
                text,
                on_partial=None if streaming is None else streaming.update,
            )
        except PersonabotError as exc:
            # The engine stored the user's message before it failed; nothing is lost.
            log.warning("No reply in %s: %s", conversation.key(), exc)
            return str(exc)
        except Exception:
            log.exception("Unexpected error answering in %s.", conversation.key())
            return "Sorry, something went wrong on my side. Please try again in a moment."
        return reply.text

    @staticmethod
    def _quote(message: discord.Message) -> discord.Message | None:
        """In servers an answer quotes the message it answers, so it is clear whose it is;
        in a DM that is only noise."""
        return message if message.guild is not None else None

    async def _say(self, channel: discord.abc.Messageable, text: str, to: discord.Message) -> None:
        await self._deliver(send_text(channel, text, reference=self._quote(to)), channel)

    @staticmethod
    async def _deliver(sending: Awaitable[object], channel: discord.abc.Messageable) -> None:
        """Await a send, logging what cannot be sent: a failed send must never stop the bot."""
        where = getattr(channel, "id", "?")
        try:
            await sending
        except discord.Forbidden as exc:
            log.warning(
                "No permission to send in Discord channel %s; not delivered: %s", where, exc
            )
        except discord.NotFound as exc:
            log.info("Discord channel %s is gone; not delivered: %s", where, exc)
        except discord.RateLimited as exc:
            log.warning("Still rate limited in Discord channel %s: %s", where, exc)
        except discord.HTTPException as exc:
            log.error("Discord refused a message to channel %s: %s", where, exc)
        except (aiohttp.ClientError, OSError) as exc:
            log.error("Could not reach Discord to send to channel %s: %s", where, exc)


def _is_chat(message: discord.Message, me: discord.ClientUser) -> bool:
    """People talking: not the bot itself, not other bots or webhooks (two bots must never
    talk each other into a loop), not system messages."""
    if message.author.id == me.id or message.author.bot or message.webhook_id is not None:
        return False
    return message.type in _CHAT_TYPES and bool(message.content.strip())


async def _keep_typing(channel: discord.abc.Messageable) -> None:
    """Show "typing…" until cancelled; a failure only costs the indicator."""
    while True:
        try:
            await channel.typing()
        except discord.Forbidden:
            return
        except (discord.HTTPException, aiohttp.ClientError) as exc:
            log.debug("Typing indicator failed: %s", exc)
        await asyncio.sleep(TYPING_REFRESH_SECONDS)
