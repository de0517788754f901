"""A user's mood in a conversation, as /mood shows it on every platform: the last message's,
and the trend of their recent ones."""

from __future__ import annotations

from core.engine import Engine
from core.mood.trend import MoodTrend
from core.types import ConversationRef

LOOKBACK = 50
"""Messages of the conversation read for the user's recent ones."""


async def last_mood(
    engine: Engine, conversation: ConversationRef, author_id: str
) -> MoodTrend | None:
    """The trend of ``author_id``'s messages here (its ``latest`` is the last message's
    mood); None when they wrote nothing here within the lookback."""
    history = await engine.history(conversation, limit=LOOKBACK)
    trend = MoodTrend.of_author(history, author_id)
    return trend if trend.latest is not None else None
