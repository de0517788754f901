"""Which mood detector a name in the settings (``PERSONABOT_MOOD_DETECTOR``) stands for.

Only the lexicon is imported eagerly: it needs nothing beyond the standard library. The
model-backed detectors import their heavy dependencies (torch, numpy, NLTK) only when one is
chosen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from core.errors import ConfigError
from core.mood.detector import MoodDetector
from core.mood.lexicon import LexiconMoodDetector

__all__ = ["DETECTORS", "create_mood_detector"]

#: Detector names accepted by :func:`create_mood_detector` (``Settings.mood_detector``).
DETECTORS: Final[tuple[str, ...]] = ("classifier", "lexicon", "tfidf", "text2emotion")


def create_mood_detector(name: str, *, cache_dir: Path | None = None) -> MoodDetector:
    """Build the detector called ``name``; raises :class:`ConfigError` listing valid names.

    ``cache_dir`` (``Settings.resolved_cache_dir``) is where a model-backed detector may keep
    converted weights between runs (the classifier's ONNX export); without it they are
    rebuilt in memory at every load.
    """
    key = name.strip().lower()
    if key == "lexicon":
        return LexiconMoodDetector()
    if key == "classifier":
        from core.mood.classifier import ClassifierMoodDetector

        return ClassifierMoodDetector.load(cache_dir=cache_dir)
    if key == "tfidf":
        from core.mood.tfidf import TfidfMoodDetector

        return TfidfMoodDetector.load()
    if key == "text2emotion":
        from core.mood.text2emotion import Text2EmotionMoodDetector

        return Text2EmotionMoodDetector.load()
    raise ConfigError(f"Unknown mood detector {name!r}. Choose one of: {', '.join(DETECTORS)}.")
