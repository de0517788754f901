"""The reply workflow every chat frontend shares: from an accepted message to a sent reply.

Per message: the user's and the conversation's cooldowns (one short notice per window), a
place in the conversation's send order (the engine answers a conversation's messages in
order; this keeps the *sending* in that order too, so a quick second reply never overtakes
a long first one), a typing indicator kept alive while the engine writes, the engine call
(streamed where the platform can show partial text), and the reply or a message saying why
there is none. A shutdown stops taking messages and waits for the replies being written.

Platforms supply only a :class:`Delivery`: how to show "typing", send a text, edit one
sent earlier and, where they can, stream one.

/retry goes the same way (:meth:`ReplyFlow.retry`); the new reply replaces the old message
when that is still the bot's last message in the conversation, so a chat does not fill up
with discarded answers, and is sent as a new message otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from bots.conversation import texts
from bots.conversation.cooldown import CommandBudget, RateDecision, RateLimits
from core.engine import Engine
from core.errors import PersonabotError
from core.ordering import TurnQueue
from core.settings import Settings
from core.types import Author, ConversationRef, Reply

log = logging.getLogger(__name__)

#: The platform messages a text was sent as, first to last; opaque to this module, and
#: empty when nothing could be sent.
Sent = Sequence[object]

#: How many conversations' last replies are remembered for /retry to edit in place; an
#: older conversation's retry is sent as a new message, which is always correct.
REMEMBERED_REPLIES = 4096


@dataclass(frozen=True, slots=True)
class _Delivered:
    """The bot's last message in a conversation, if it was a reply: what /retry may edit."""

    reply_message_id: int
    sent: Sent


class Stream(Protocol):
    """A reply shown while it is written."""

    def update(self, text: str) -> None:
        """The text so far (the engine's ``on_partial``); must return at once."""

    async def finish(self, text: str) -> Sent:
        """Put the final text in place; logs what cannot be sent, never raises."""


class Delivery(Protocol):
    """How one platform shows a reply in the place a message came from."""

    async def show_typing(self) -> bool:
        """Show the typing indicator once; False when it cannot be shown here at all."""

    async def send(self, text: str) -> Sent:
        """Send ``text`` as the answer; logs what cannot be sent, never raises."""

    async def edit(self, sent: Sent, text: str) -> bool:
        """Replace the text of messages sent earlier; False where it cannot (then a new
        message is sent). Logs what fails, never raises."""

    def stream(self, ready: Callable[[], Awaitable[object]]) -> Stream | None:
        """A stream for the reply, or None to send it whole; ``ready`` waits for the turn."""


class ReplyFlow:
    """Answers accepted messages through the engine, in order, for every frontend."""

    def __init__(
        self,
        engine: Engine,
        *,
        user_cooldown_seconds: float,
        conversation_cooldown_seconds: float,
        typing_interval: float,
        commands_per_minute: int = 0,
    ) -> None:
        self._engine = engine
        self._commands = CommandBudget(commands_per_minute)
        # The model is shared by every conversation: one limit per user, one per conversation.
        self._limits = RateLimits(
            user_seconds=user_cooldown_seconds, conversation_seconds=conversation_cooldown_seconds
        )
        self._typing_interval = typing_interval
        self._send_order = TurnQueue()
        self._in_flight: set[asyncio.Task[object]] = set()
        self._accepting = True
        self._last_replies: OrderedDict[str, _Delivered] = OrderedDict()

    @classmethod
    def for_platform(
        cls,
        engine: Engine,
        settings: Settings,
        platform: Literal["discord", "telegram"],
        *,
        typing_interval: float,
    ) -> ReplyFlow:
        """The flow with the cooldowns the settings give ``platform``."""
        return cls(
            engine,
            user_cooldown_seconds=settings.user_cooldown_seconds,
            conversation_cooldown_seconds=settings.conversation_cooldown(platform),
            typing_interval=typing_interval,
            commands_per_minute=settings.commands_per_minute,
        )

    @contextlib.contextmanager
    def accepted(self) -> Iterator[bool]:
        """Whether a new message is taken; a shutdown waits for the block of one that is.

        Entered as soon as a message arrives, so the checks before :meth:`answer` (is it
        addressed to the bot? a database read) count as in flight too.
        """
        task = asyncio.current_task()
        if not self._accepting or task is None:
            yield self._accepting
            return
        self._in_flight.add(task)
        try:
            yield True
        finally:
            self._in_flight.discard(task)

    def command_allowed(self, author_id: str) -> RateDecision:
        """Whether a command or button tap of this user is taken (PERSONABOT_COMMANDS_PER_
        MINUTE); a refusal's ``notice``, once per streak, is for the user."""
        return self._commands.check(author_id)

    async def answers_everything(self, conversation: ConversationRef) -> bool:
        """Whether every message in a group conversation is answered (/chat always); on a
        database hiccup, False: answer only when addressed."""
        try:
            return await self._engine.always_answer(conversation)
        except PersonabotError as exc:
            log.warning("Cannot read the answer mode of %s: %s", conversation.key(), exc)
            return False

    async def drain(self) -> int:
        """Stop taking messages and wait until the replies being written are sent."""
        self._accepting = False
        waiting = set(self._in_flight)
        if waiting:
            await asyncio.wait(waiting)
        return len(waiting)

    async def answer(
        self, conversation: ConversationRef, author: Author, text: str, delivery: Delivery
    ) -> None:
        """Answer one message addressed to the bot, or say why not (cooldown, error).

        Called inside :meth:`accepted`, so that a shutdown waits for the reply.
        """

        async def write(stream: Stream | None) -> Reply:
            on_partial = None if stream is None else stream.update
            return await self._engine.reply(conversation, author, text, on_partial=on_partial)

        await self._deliver(conversation, author, delivery, write, retrying=False)

    async def retry(
        self,
        conversation: ConversationRef,
        author: Author,
        delivery: Delivery,
        *,
        may_retry_others: bool,
    ) -> str | None:
        """/retry: write the conversation's last reply again (see :meth:`Engine.retry`).

        The new text replaces the old message when that is still the bot's last message
        here, else it is sent as a new one. Not streamed: the old reply stays readable until
        the new one is ready. Why there is no new reply (nothing to retry, someone else's
        message, a cooldown) is returned, not sent, for the platform to show as a command's
        answer; None when the reply went out.
        """

        async def write(stream: Stream | None) -> Reply:
            return await self._engine.retry(conversation, author, may_retry_others=may_retry_others)

        return await self._deliver(conversation, author, delivery, write, retrying=True)

    async def moved(self, old: ConversationRef, new: ConversationRef) -> bool:
        """The platform renamed a conversation: the engine moves it; a /retry edit target
        is no longer valid."""
        self._last_replies.pop(old.key(), None)
        return await self._engine.move(old, new)

    def spoke(self, conversation: ConversationRef) -> None:
        """The bot posted something else here (a command's answer): the last reply is no
        longer its last message, so a /retry sends its new reply as a new message."""
        self._last_replies.pop(conversation.key(), None)

    async def _deliver(
        self,
        conversation: ConversationRef,
        author: Author,
        delivery: Delivery,
        write: Callable[[Stream | None], Awaitable[Reply]],
        *,
        retrying: bool,
    ) -> str | None:
        """Cooldowns, send order, typing, the engine call and delivery of one reply; when
        ``retrying``, why there is none is returned instead of sent."""
        key = conversation.key()
        decision = self._limits.check(author.id, key)
        if decision.notice is not None:
            if retrying:
                return decision.notice
            self.spoke(conversation)
            await delivery.send(decision.notice)
        if not decision.allowed:
            return None
        # Taken right before the engine call (which queues the message at once), so replies
        # are sent in the order the engine answers them.
        turn = self._send_order.join(key)
        try:
            stream = None if retrying else delivery.stream(turn.wait)
            typing = asyncio.create_task(self._keep_typing(delivery))
            try:
                reply = await self._reply(conversation, write, stream)
            finally:
                typing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await typing
            await turn.wait()
            if retrying and isinstance(reply, str):
                return reply
            text = reply if isinstance(reply, str) else reply.text
            last = self._last_replies.pop(key, None)
            if stream is not None:
                sent = await stream.finish(text)
            elif (
                isinstance(reply, Reply)
                and last is not None
                and last.reply_message_id == reply.reply_message_id
                and await delivery.edit(last.sent, text)
            ):
                sent = last.sent
            else:
                sent = await delivery.send(text)
            if isinstance(reply, Reply) and reply.reply_message_id is not None and sent:
                self._remember(key, _Delivered(reply.reply_message_id, sent))
        finally:
            turn.finish()
        return None

    def _remember(self, key: str, delivered: _Delivered) -> None:
        self._last_replies[key] = delivered
        self._last_replies.move_to_end(key)
        while len(self._last_replies) > REMEMBERED_REPLIES:
            self._last_replies.popitem(last=False)

    async def _reply(
        self,
        conversation: ConversationRef,
        write: Callable[[Stream | None], Awaitable[Reply]],
        stream: Stream | None,
    ) -> Reply | str:
        """The reply, or a message saying why there is none; never an exception."""
        try:
            return await write(stream)
        except PersonabotError as exc:
            # The engine stored the user's message before it failed; nothing is lost.
            log.warning("No reply in %s: %s", conversation.key(), exc)
            return texts.error_text(exc)
        except Exception:
            log.exception("Unexpected error answering in %s.", conversation.key())
            return texts.APOLOGY

    async def _keep_typing(self, delivery: Delivery) -> None:
        """Show "typing…" until cancelled; a failure only costs the indicator."""
        while True:
            if not await delivery.show_typing():
                return
            await asyncio.sleep(self._typing_interval)
