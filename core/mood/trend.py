"""A user's mood over the conversation, not only in the last message.

One message can read sad by accident; three in a row rarely do. The trend is computed from
what is stored anyway (each user message keeps its detected mood and confidence), so it
costs no state of its own and survives restarts: an exponentially weighted reading of the
user's recent messages, and how many of their latest messages in a row carried the same
heavy mood (sadness, fear, anger).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from core.types import Mood, MoodResult, StoredMessage

#: Moods worth carrying from one message to the next: a persona should know that someone
#: has been sad or afraid for a while, not only right now.
HEAVY = frozenset({Mood.SADNESS, Mood.FEAR, Mood.ANGER})

#: Moods that, kept up, switch every persona to answering supportively first.
DISTRESS = frozenset({Mood.SADNESS, Mood.FEAR})

#: Weight of the newest message in the running reading; older ones fade by (1 - DECAY).
DECAY = 0.5

#: Below this the detector is guessing, and a guessed mood neither starts nor extends a run.
CONFIDENCE_FLOOR = 0.35


@dataclass(frozen=True, slots=True)
class MoodTrend:
    """The reading of one user's recent messages in one conversation."""

    weights: dict[Mood, float]
    """Exponentially weighted confidence per mood over the recent messages, newest heaviest."""
    run_mood: Mood | None
    """The heavy mood the latest messages share, if any."""
    run_length: int
    """How many of the latest messages in a row carry ``run_mood`` (0 without one)."""
    distress_run: int
    """How many of the latest messages in a row read sad or afraid (either)."""
    latest: Mood | None = None
    """The newest message's mood."""

    @classmethod
    def of(cls, moods: Sequence[MoodResult]) -> MoodTrend:
        """The trend of ``moods``, oldest first (the current message last)."""
        weights: dict[Mood, float] = {}
        weight = 1.0
        for result in reversed(moods):
            weights[result.mood] = weights.get(result.mood, 0.0) + weight * result.confidence
            weight *= 1.0 - DECAY
        sure = [r.mood if r.confidence >= CONFIDENCE_FLOOR else None for r in moods]
        run_mood = sure[-1] if sure and sure[-1] in HEAVY else None
        return cls(
            weights=weights,
            run_mood=run_mood,
            run_length=_trailing(sure, {run_mood}) if run_mood is not None else 0,
            distress_run=_trailing(sure, DISTRESS),
            latest=moods[-1].mood if moods else None,
        )

    @classmethod
    def of_author(
        cls, history: Sequence[StoredMessage], author_id: str, current: MoodResult | None = None
    ) -> MoodTrend:
        """The trend of ``author_id``'s messages in ``history`` (oldest first), with the
        message being answered (``current``) as the newest."""
        moods = [
            MoodResult(m.mood, m.mood_confidence or 0.0)
            for m in history
            if m.role == "user" and m.author_id == author_id and m.mood is not None
        ]
        return cls.of([*moods, *([current] if current is not None else [])])

    @property
    def leading(self) -> Mood | None:
        """The emotion with the most weight (no emotion is not one), if any was read."""
        felt = {mood: w for mood, w in self.weights.items() if mood is not Mood.NO_EMOTION}
        return max(felt, key=lambda mood: felt[mood]) if felt else None


def _trailing(moods: Sequence[Mood | None], wanted: frozenset[Mood] | set[Mood | None]) -> int:
    count = 0
    for mood in reversed(moods):
        if mood is None or mood not in wanted:
            break
        count += 1
    return count
