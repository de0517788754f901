"""The names of persona scopes: the communities personas belong to.

A persona made in a Discord server, a Discord DM or a Telegram chat (group or private) is
seen only there. Frontends and the operator's CLI spell scopes with these functions, so a
grant on the command line matches the conversations a frontend reports. The engine treats
them as opaque strings (``ConversationRef.scope``).
"""

from __future__ import annotations


def discord_server_scope(guild_id: int) -> str:
    return f"discord:server:{guild_id}"


def discord_dm_scope(user_id: int) -> str:
    return f"discord:dm:{user_id}"


def telegram_chat_scope(chat_id: int) -> str:
    """A group's or a private chat's (whose id is the user's)."""
    return f"telegram:chat:{chat_id}"
