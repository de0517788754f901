"""Mood detection: which of DailyDialog's seven emotions a chat message most likely carries.

Importers need the interface and the factory far more than any one detector, so those two
are re-exported here; everything else is imported from its module (``core.mood.lexicon``,
``core.mood.classifier``, ``core.mood.tfidf``, ``core.mood.text2emotion``,
``core.mood.trend``).
"""

from core.mood.detector import MoodDetector
from core.mood.registry import create_mood_detector

__all__ = ["MoodDetector", "create_mood_detector"]
