"""The reply workflow every chat frontend shares: from an accepted message to a sent reply.

Per message: the user's and the conversation's cooldowns (one short notice per window), a
place in the conversation's send order (the engine answers a conversation's messages in
order; this keeps the *sending* in that order too, so a quick second reply never overtakes
a long first one), a typing indicator kept alive while the engine writes, the engine call
(streamed where the platform can show partial text), and the reply or a message saying why
there is none. A shutdown stops taking messages and waits for the replies being written.

Platforms supply only a :class:`Delivery`: how to show "typing", send a text and, where
they can, stream one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Literal, Protocol

from bots.conversation import texts
from core.cooldown import RateLimits
from core.engine import Engine
from core.errors import PersonabotError
from core.ordering import TurnQueue
from core.settings import Settings
from core.types import Author, ConversationRef

log = logging.getLogger(__name__)


class Stream(Protocol):
    """A reply shown while it is written."""

    def update(self, text: str) -> None:
        """The text so far (the engine's ``on_partial``); must return at once."""

    async def finish(self, text: str) -> None:
        """Put the final text in place; logs what cannot be sent, never raises."""


class Delivery(Protocol):
    """How one platform shows a reply in the place a message came from."""

    async def show_typing(self) -> bool:
        """Show the typing indicator once; False when it cannot be shown here at all."""

    async def send(self, text: str) -> None:
        """Send ``text`` as the answer; logs what cannot be sent, never raises."""

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
    ) -> None:
        self._engine = engine
        # The model is shared by every conversation: one limit per user, one per conversation.
        self._limits = RateLimits(
            user_seconds=user_cooldown_seconds, conversation_seconds=conversation_cooldown_seconds
        )
        self._typing_interval = typing_interval
        self._send_order = TurnQueue()
        self._in_flight: set[asyncio.Task[object]] = set()
        self._accepting = True

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
        decision = self._limits.check(author.id, conversation.key())
        if decision.notice is not None:
            await delivery.send(decision.notice)
        if not decision.allowed:
            return
        # Taken right before the engine call (which queues the message at once), so replies
        # are sent in the order the engine answers them.
        turn = self._send_order.join(conversation.key())
        try:
            stream = delivery.stream(turn.wait)
            typing = asyncio.create_task(self._keep_typing(delivery))
            try:
                reply = await self._reply_text(conversation, author, text, stream)
            finally:
                typing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await typing
            await turn.wait()
            if stream is not None:
                await stream.finish(reply)
            else:
                await delivery.send(reply)
        finally:
            turn.finish()

    async def _reply_text(
        self, conversation: ConversationRef, author: Author, text: str, stream: Stream | None
    ) -> str:
        """The reply, or a message saying why there is none; never an exception."""
        try:
            reply = await self._engine.reply(
                conversation, author, text, on_partial=None if stream is None else stream.update
            )
        except PersonabotError as exc:
            # The engine stored the user's message before it failed; nothing is lost.
            log.warning("No reply in %s: %s", conversation.key(), exc)
            return str(exc)
        except Exception:
            log.exception("Unexpected error answering in %s.", conversation.key())
            return texts.APOLOGY
        return reply.text

    async def _keep_typing(self, delivery: Delivery) -> None:
        """Show "typing…" until cancelled; a failure only costs the indicator."""
        while True:
            if not await delivery.show_typing():
                return
            await asyncio.sleep(self._typing_interval)
