"""Who counts as a group's admin on Telegram: the chat's administrators and owner, and an
anonymous admin posting as the group itself."""

from __future__ import annotations

import logging

from telegram import Bot, Chat, Message, User
from telegram.constants import ChatMemberStatus
from telegram.error import TelegramError

from bots.telegram.sending import Place

log = logging.getLogger(__name__)


async def is_admin(bot: Bot, place: Place, user: User | None, message: Message | None) -> bool:
    """Whether ``user`` (or ``message``'s sender) may change a chat; in a private chat, yes.

    When Telegram cannot say (an API error), no: a refused change is better than a group's
    settings changed by someone who may not.
    """
    if not place.is_group:
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
