"""Discord messages in, engine calls, Discord messages out.

Everything here is translation: which conversation a message belongs to, whether it is
addressed to the bot, who wrote it and what they wrote in words the model can read.
Personas, moods, history and generation are the engine's; splitting and mention safety are
:mod:`bots.discord.sending`'s.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import TypeVar

import aiohttp
import discord

from bots.conversation import texts
from bots.conversation.reply_flow import ReplyFlow, Sent, Stream
from bots.conversation.scopes import discord_dm_scope, discord_server_scope
from bots.discord.sending import NO_MENTIONS, StreamingReply, send_text, split_reply
from core.types import Author, ConversationRef

__all__ = [
    "PLATFORM",
    "ChannelDelivery",
    "DiscordMessages",
    "addressed_to",
    "author_of",
    "conversation_of",
    "readable_text",
]

T = TypeVar("T")

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


def conversation_of(
    channel: discord.abc.Messageable | discord.abc.Snowflake, *, guild_id: int | None, user_id: int
) -> ConversationRef:
    """Every channel, thread and DM is its own conversation (a thread has its own id).

    Its scope, whose personas it sees, is its server, or in a DM the user's own.
    """
    scope = discord_server_scope(guild_id) if guild_id is not None else discord_dm_scope(user_id)
    return ConversationRef(PLATFORM, str(getattr(channel, "id", channel)), scope)


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


class DiscordMessages:
    """Answers the messages addressed to the bot through the shared reply workflow."""

    def __init__(self, flow: ReplyFlow, *, stream_replies: bool) -> None:
        self._flow = flow
        self._stream = stream_replies

    async def drain(self) -> None:
        """Stop taking messages and wait until the replies being written are sent."""
        waiting = await self._flow.drain()
        if waiting:
            log.info("Discord: finished %d reply(ies) before stopping.", waiting)

    async def on_message(self, message: discord.Message, me: discord.ClientUser) -> None:
        """discord.py's on_message: decide whether to answer, then answer."""
        with self._flow.accepted() as accepted:
            if accepted and _is_chat(message, me):
                await self._answer(message, me)

    async def _answer(self, message: discord.Message, me: discord.ClientUser) -> None:
        guild_id = None if message.guild is None else message.guild.id
        conversation = conversation_of(
            message.channel, guild_id=guild_id, user_id=message.author.id
        )
        if message.guild is not None and not (
            addressed_to(message, me) or await self._flow.answers_everything(conversation)
        ):
            return
        delivery = ChannelDelivery.answering(message, stream=self._stream)
        text = readable_text(message, me)
        if not text:
            # A hint costs a send: bare mentions spend from the command budget.
            if self._flow.command_allowed(str(message.author.id)).allowed:
                await delivery.send(texts.what_to_say(f"@{me.display_name}"))
            return
        await self._flow.answer(conversation, author_of(message.author), text, delivery)


class ChannelDelivery:
    """Replies in one channel, quoting the message answered in servers (in a DM that is
    noise; a slash command has no message to quote)."""

    def __init__(
        self, channel: discord.abc.Messageable, *, reference: discord.Message | None, stream: bool
    ) -> None:
        self._channel = channel
        self._reference = reference
        self._stream = stream

    @classmethod
    def answering(cls, message: discord.Message, *, stream: bool) -> ChannelDelivery:
        reference = message if message.guild is not None else None
        return cls(message.channel, reference=reference, stream=stream)

    async def show_typing(self) -> bool:
        try:
            await self._channel.typing()
        except discord.Forbidden:
            return False
        except (discord.HTTPException, aiohttp.ClientError) as exc:
            log.debug("Typing indicator failed: %s", exc)
        return True

    async def send(self, text: str) -> Sent:
        sending = send_text(self._channel, text, reference=self._reference)
        return await deliver(sending, self._channel) or []

    async def edit(self, sent: Sent, text: str) -> bool:
        """Edit a one-message reply when the new text fits one message too."""
        message = sent[0] if len(sent) == 1 else None
        if not isinstance(message, discord.Message) or len(split_reply(text)) > 1:
            return False
        edited = await deliver(
            message.edit(content=text, allowed_mentions=NO_MENTIONS), self._channel
        )
        return edited is not None

    def stream(self, ready: Callable[[], Awaitable[object]]) -> Stream | None:
        if not self._stream:
            return None
        return _FinishedSafely(
            StreamingReply(self._channel, reference=self._reference, ready=ready), self._channel
        )


class _FinishedSafely:
    """A :class:`StreamingReply` whose last send logs failures instead of raising."""

    def __init__(self, reply: StreamingReply, channel: discord.abc.Messageable) -> None:
        self._reply = reply
        self._channel = channel

    def update(self, text: str) -> None:
        self._reply.update(text)

    async def finish(self, text: str) -> Sent:
        return await deliver(self._reply.finish(text), self._channel) or []


async def deliver(sending: Awaitable[T], channel: discord.abc.Messageable) -> T | None:
    """Await a send; None, logged, when it fails: a failed send must never stop the bot."""
    where = getattr(channel, "id", "?")
    try:
        return await sending
    except discord.Forbidden as exc:
        log.warning("No permission to send in Discord channel %s; not delivered: %s", where, exc)
    except discord.NotFound as exc:
        log.info("Discord channel %s is gone; not delivered: %s", where, exc)
    except discord.RateLimited as exc:
        log.warning("Still rate limited in Discord channel %s: %s", where, exc)
    except discord.HTTPException as exc:
        log.error("Discord refused a message to channel %s: %s", where, exc)
    except (aiohttp.ClientError, OSError) as exc:
        log.error("Could not reach Discord to send to channel %s: %s", where, exc)
    return None


def _is_chat(message: discord.Message, me: discord.ClientUser) -> bool:
    """People talking: not the bot itself, not other bots or webhooks (two bots must never
    talk each other into a loop), not system messages."""
    if message.author.id == me.id or message.author.bot or message.webhook_id is not None:
        return False
    return message.type in _CHAT_TYPES and bool(message.content.strip())
