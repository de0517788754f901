"""The people and places of the Discord tests, and what every message the bot sends must be."""

from __future__ import annotations

from typing import Any

from bots.conversation.scopes import discord_dm_scope, discord_server_scope
from core.types import ConversationRef
from tests.fake_discord import GUILD_ID, FakeDiscord

JSON = dict[str, Any]

ALICE_ID = 501
"""A server admin."""
BOB_ID = 502
"""A member without permissions."""
OTHER_BOT_ID = 503
NO_PINGS = {"users": [], "roles": [], "everyone": False}
EPHEMERAL = 1 << 6
SENDS = "POST /channels/{channel_id}/messages"


def pings_nobody(allowed_mentions: JSON | None) -> bool:
    """What ``AllowedMentions.none()`` sends: nothing to parse, no one listed, and no ping
    for the author of a quoted message. Without the field, Discord would ping everything."""
    return (
        allowed_mentions is not None
        and allowed_mentions.get("parse") == []
        and not allowed_mentions.get("users")
        and not allowed_mentions.get("roles")
        and not allowed_mentions.get("replied_user")
    )


def alice(fake: FakeDiscord) -> JSON:
    return fake.users[ALICE_ID]


def bob(fake: FakeDiscord) -> JSON:
    return fake.users[BOB_ID]


def here(channel_id: int, *, dm_with: int | None = None) -> ConversationRef:
    """A channel of the test server (or a DM with ``dm_with``), in its scope."""
    scope = discord_server_scope(GUILD_ID) if dm_with is None else discord_dm_scope(dm_with)
    return ConversationRef("discord", str(channel_id), scope)
