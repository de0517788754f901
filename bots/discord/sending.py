"""Getting a reply of any length into a Discord channel, and never pinging anyone with it.

Every outgoing text goes through this module: split to Discord's 2,000-character limit on
natural boundaries (:func:`bots.conversation.chunking.split_message` keeps code blocks whole
or closes and reopens them), sent with ``AllowedMentions.none()`` so that "@everyone", role
or user mentions written by the model (or quoted from a user) show as text but notify
nobody, and retried briefly when Discord answers 5xx or the network drops. 429s are
discord.py's job: it waits the ``retry_after`` Discord asks for and sends again.

:class:`StreamingReply` shows a reply while the model writes it, by editing one message at
most every :data:`EDIT_INTERVAL_SECONDS`, well inside Discord's per-channel edit limits.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence

import aiohttp
import discord
from discord.abc import Messageable

from bots.conversation.chunking import split_message
from bots.conversation.preview_pump import PreviewPump

__all__ = [
    "EDIT_INTERVAL_SECONDS",
    "MESSAGE_LIMIT",
    "NETWORK_RETRIES",
    "NO_MENTIONS",
    "StreamingReply",
    "send_chunks",
    "send_text",
    "split_reply",
]

log = logging.getLogger(__name__)

#: Discord refuses message content over 2,000 characters (it counts code points).
MESSAGE_LIMIT = 2000

#: Generated text must never notify anyone: not @everyone/@here, not roles, not users, and
#: not even the author of the message a reply quotes.
NO_MENTIONS = discord.AllowedMentions.none()

#: Extra attempts after a 5xx that discord.py gave up on, or a dropped connection; a short
#: outage should not eat a reply that took the model seconds to write.
NETWORK_RETRIES = 2
_BACKOFF_SECONDS = 0.5

#: Least time between two edits of a streamed reply. Discord allows about five message
#: edits per five seconds in a channel; one every 1.5 s leaves room for everything else.
EDIT_INTERVAL_SECONDS = 1.5

#: Appended to a reply that is still being written.
_WRITING = " …"


def split_reply(text: str) -> list[str]:
    """``text`` as messages Discord accepts, cut between paragraphs or sentences."""
    return split_message(text, MESSAGE_LIMIT) or ["…"]


async def send_text(
    channel: Messageable, text: str, *, reference: discord.Message | None = None
) -> list[discord.Message]:
    """Send ``text`` as one or more messages, in order; the first one replies to
    ``reference`` (without pinging its author). Raises discord.py's errors once retries are
    exhausted."""
    return await send_chunks(channel, split_reply(text), reference=reference)


async def send_chunks(
    channel: Messageable, chunks: Sequence[str], *, reference: discord.Message | None = None
) -> list[discord.Message]:
    """Send pieces already cut to size, in order; only the first one quotes ``reference``
    (the rest read as its continuation)."""
    sent: list[discord.Message] = []
    for index, chunk in enumerate(chunks):
        quote = reference if index == 0 else None
        sent.append(await _retrying(functools.partial(_send_one, channel, chunk, quote)))
    return sent


async def _send_one(
    channel: Messageable, content: str, reference: discord.Message | None
) -> discord.Message:
    if reference is None:
        return await channel.send(content, allowed_mentions=NO_MENTIONS)
    return await channel.send(
        content,
        allowed_mentions=NO_MENTIONS,
        mention_author=False,
        # The reply still goes out if the user deleted their message meanwhile.
        reference=reference.to_reference(fail_if_not_exists=False),
    )


async def _retrying(send: Callable[[], Awaitable[discord.Message]]) -> discord.Message:
    attempt = 0
    while True:
        try:
            return await send()
        except (discord.DiscordServerError, aiohttp.ClientConnectionError) as exc:
            if attempt >= NETWORK_RETRIES:
                raise
            attempt += 1
            delay = _BACKOFF_SECONDS * 2 ** (attempt - 1)
            log.warning("Sending to Discord failed (%s); retrying in %.1f s.", exc, delay)
            await asyncio.sleep(delay)


class StreamingReply:
    """One message that shows a reply growing, then becomes the reply.

    :meth:`update` is the engine's ``on_partial`` callback: it only records the text, so it
    never slows generation down. A background task posts the first preview once ``ready``
    returns (earlier replies in the conversation have been sent), then edits it at most every
    ``interval`` seconds. :meth:`finish` puts the final text in place: its first part in the
    streamed message, the rest as new messages. A preview that cannot be posted or edited is
    given up silently, and :meth:`finish` falls back to sending normally.
    """

    def __init__(
        self,
        channel: Messageable,
        *,
        reference: discord.Message | None,
        ready: Callable[[], Awaitable[object]],
        interval: float = EDIT_INTERVAL_SECONDS,
    ) -> None:
        self._channel = channel
        self._reference = reference
        self._message: discord.Message | None = None
        self._pump = PreviewPump(
            self._show,
            preview=_preview,
            ready=ready,
            interval=interval,
            gives_up=(discord.HTTPException, aiohttp.ClientError),
        )

    @property
    def message(self) -> discord.Message | None:
        """The streamed message, once posted."""
        return self._message

    def update(self, text: str) -> None:
        self._pump.update(text)

    async def _show(self, preview: str) -> None:
        if self._message is None:
            self._message = await _send_one(self._channel, preview, self._reference)
        else:
            await self._message.edit(content=preview, allowed_mentions=NO_MENTIONS)

    async def finish(self, text: str) -> list[discord.Message]:
        """Show ``text`` as the final reply; returns every message it occupies."""
        await self._pump.stop()
        chunks = split_reply(text)
        message = self._message
        if message is None:
            return await send_chunks(self._channel, chunks, reference=self._reference)
        try:
            await _retrying(lambda: message.edit(content=chunks[0], allowed_mentions=NO_MENTIONS))
        except discord.NotFound:  # someone deleted the preview: send the reply afresh
            return await send_chunks(self._channel, chunks, reference=self._reference)
        return [message, *await send_chunks(self._channel, chunks[1:])]


def _preview(text: str) -> str:
    """The part of a reply being written that fits one message, marked as unfinished."""
    first = split_message(text, MESSAGE_LIMIT - len(_WRITING))[0]
    return first + _WRITING
