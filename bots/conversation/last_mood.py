"""The mood of a user's last message in a conversation, as /mood shows it on every platform."""

from __future__ import annotations

from core.engine import Engine
from core.types import ConversationRef, Mood

LOOKBACK = 50
"""Messages of the conversation searched for the user's last one."""


async def last_mood(engine: Engine, conversation: ConversationRef, author_id: str) -> Mood | None:
    """The mood stored with ``author_id``'s latest message here, if any in the lookback."""
    for stored in reversed(await engine.history(conversation, limit=LOOKBACK)):
        if stored.role == "user" and stored.author_id == author_id:
            return stored.mood
    return None
