"""Showing a Telegram reply while the model writes it, within Telegram's flood limits.

In a private chat the partial text is a *draft* (Bot API ``sendMessageDraft``): an animated
preview that is not a message, so it costs no edits and leaves nothing behind; the finished
reply is then sent as usual. In groups, where drafts do not exist, one message is posted and
edited as the text grows, then replaced by the reply. Either way the preview changes at most
once per interval (:data:`PRIVATE_INTERVAL_SECONDS`, :data:`GROUP_INTERVAL_SECONDS`): Telegram
allows about one message a second in a chat and twenty a minute in a group, edits included.
A 429 is the rate limiter's (it waits ``retry_after`` and retries); a preview that still
fails is given up, and the reply is sent whole. Previews, like replies, carry no mention
that could notify anyone (:func:`~bots.telegram.formatting.neutralise_mentions`).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable

from telegram import Bot, Message
from telegram.constants import MessageLimit
from telegram.error import BadRequest, TelegramError

from bots.conversation.chunking import split_message
from bots.conversation.preview_pump import PreviewPump
from bots.telegram.formatting import neutralise_mentions, sent_len
from bots.telegram.sending import edit_text, quoting, send_text, split_reply

__all__ = ["GROUP_INTERVAL_SECONDS", "PRIVATE_INTERVAL_SECONDS", "StreamingReply"]

log = logging.getLogger(__name__)

PRIVATE_INTERVAL_SECONDS = 1.0
"""Least time between two draft updates in a private chat."""

GROUP_INTERVAL_SECONDS = 3.0
"""Least time between two edits of a group's preview: twenty a minute, all of them ours."""

_WRITING = " …"
"""Appended to a preview that is still being written."""


class StreamingReply:
    """One reply, shown while it grows (a draft, or an edited message), then sent in full.

    :meth:`update` is the engine's ``on_partial`` callback: it only records the text. A
    background task shows the latest text once ``ready`` returns (earlier replies in the
    conversation have been sent), at most once per ``interval``. :meth:`finish` sends the
    final text and logs, never raises, what cannot be sent.
    """

    def __init__(
        self,
        bot: Bot,
        chat_id: int,
        *,
        private: bool,
        thread_id: int | None,
        reply_to: int | None,
        ready: Callable[[], Awaitable[object]],
        interval: float | None = None,
    ) -> None:
        self._bot = bot
        self._chat_id = chat_id
        self._private = private
        self._thread_id = thread_id
        self._reply_to = reply_to
        self._draft_id = secrets.randbelow(2**31 - 1) + 1  # any non-zero id
        self._message: Message | None = None
        default = PRIVATE_INTERVAL_SECONDS if private else GROUP_INTERVAL_SECONDS
        self._pump = PreviewPump(
            self._show_preview,
            preview=_preview,
            ready=ready,
            interval=default if interval is None else interval,
            gives_up=(TelegramError,),
        )

    def update(self, text: str) -> None:
        self._pump.update(text)

    async def _show_preview(self, preview: str) -> None:
        # Plain text: a half-written reply may hold unbalanced Markdown. These calls bypass
        # sending.py, so they neutralise mentions themselves.
        preview = neutralise_mentions(preview)
        if self._private:
            await self._bot.send_message_draft(
                self._chat_id, self._draft_id, preview, message_thread_id=self._thread_id
            )
        elif self._message is None:
            self._message = await self._bot.send_message(
                self._chat_id,
                preview,
                message_thread_id=self._thread_id,
                reply_parameters=quoting(self._reply_to),
            )
        else:
            await self._bot.edit_message_text(
                preview, chat_id=self._chat_id, message_id=self._message.message_id
            )

    async def finish(self, text: str) -> list[Message]:
        """Send ``text`` as the reply (the group's preview becomes its first part); returns
        the messages it occupies, none when it could not be sent."""
        await self._pump.stop()
        try:
            return await self._send_final(text)
        except TelegramError as exc:
            log.error("Could not deliver a reply to chat %s: %s", self._chat_id, exc)
            return []

    async def _send_final(self, text: str) -> list[Message]:
        chunks = split_reply(text)
        message = self._message
        if message is not None:
            try:
                await edit_text(self._bot, self._chat_id, message.message_id, chunks[0])
            except BadRequest as exc:  # the preview was deleted: send the reply afresh
                log.info("Could not edit the preview in chat %s: %s", self._chat_id, exc)
            else:
                sent = [message]
                for chunk in chunks[1:]:
                    sent += await send_text(
                        self._bot, self._chat_id, chunk, thread_id=self._thread_id
                    )
                return sent
        return await send_text(
            self._bot, self._chat_id, text, thread_id=self._thread_id, reply_to=self._reply_to
        )


def _preview(text: str) -> str:
    """The part of a reply being written that fits one message, marked as unfinished."""
    limit = MessageLimit.MAX_TEXT_LENGTH - len(_WRITING)
    return split_message(text, limit, length=sent_len)[0] + _WRITING
