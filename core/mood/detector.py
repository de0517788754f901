"""The interface every mood detector implements, and the emotions it chooses among.

The engine asks a :class:`MoodDetector` for the mood of every user message and hands the
persona's matching guidance to the model, so the detector sits on the hot path of every
reply. Detectors differ in cost and quality (a lexicon, a TF-IDF model, a trained
classifier, text2emotion); :func:`core.mood.registry.create_mood_detector` picks one from
the settings without the engine noticing.
"""

from __future__ import annotations

from typing import Final, Protocol, runtime_checkable

from core.types import Mood, MoodResult

__all__ = ["EMOTIONS", "MoodDetector"]

#: The six moods that are an emotion (everything but NO_EMOTION), in DailyDialog order.
EMOTIONS: Final[tuple[Mood, ...]] = tuple(m for m in Mood if m is not Mood.NO_EMOTION)


@runtime_checkable
class MoodDetector(Protocol):
    """Anything that can tell the mood of one chat message.

    ``detect`` is async so that model-backed detectors can run off the event loop; cheap ones
    simply compute the answer. ``previous`` is the message before this one in the same
    conversation (either side), for detectors that use context; it may be ignored.
    """

    name: str

    async def detect(self, text: str, previous: str | None = None) -> MoodResult:
        """The most likely mood of ``text`` and how sure the detector is (0-1)."""
        ...
