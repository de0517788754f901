"""The people and places of the Discord tests, and what every message the bot sends must be."""

from __future__ import annotations

from typing import Any

from core.types import ConversationRef
from tests.fake_discord import FakeDiscord

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


def here(channel_id: int) -> ConversationRef:
    return ConversationRef("discord", str(channel_id))
