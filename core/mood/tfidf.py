"""TF-IDF + logistic regression mood detector: the classic baseline a trained model must beat.

Trained by :func:`training.mood_baselines.train_tfidf` (scikit-learn); at run time it needs
only numpy. The model is saved as plain data, a JSON file (settings, labels, vocabulary) and
an ``.npz`` of arrays (idf, weights, bias), rather than a pickle: loading it cannot run code,
and it does not depend on the scikit-learn version that trained it.

Features are word unigrams and bigrams of the message (``!`` and ``?`` count as words, since
they carry surprise and anger), plus the previous turn's unigrams under a ``prev:`` prefix
when the model was trained with context. The decision mirrors how DailyDialog is scored:
the most probable *emotion* is reported when its probability reaches a threshold tuned for
micro-F1 over the six emotions on held-out training dialogues; otherwise "no emotion".
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from core.errors import ConfigError
from core.types import Mood, MoodResult

__all__ = [
    "ARTIFACT_FORMAT",
    "DEFAULT_ARTIFACT",
    "TfidfMoodDetector",
    "features",
]

ARTIFACT_FORMAT: Final = 1
#: Where ``create_mood_detector("tfidf")`` looks; not shipped, train it into place with
#: ``python -m training.mood_baselines --output core/mood/tfidf_model``.
DEFAULT_ARTIFACT: Final = Path(__file__).resolve().parent / "tfidf_model"
_META = "tfidf.json"
_ARRAYS = "tfidf.npz"

_TOKEN: Final = re.compile(r"[\w']+|[!?]|[^\w\s.,;:'\"()\[\]{}<>/\\|@#$%^&*+=~`-]")
_APOSTROPHES: Final = str.maketrans({"’": "'", "‘": "'", "`": "'"})

FloatArray = npt.NDArray[np.float32]


def _tokens(text: str) -> list[str]:
    return [t.strip("'") or t for t in _TOKEN.findall(text.translate(_APOSTROPHES).lower())]


def features(text: str, previous: str | None = None, *, context: bool = True) -> list[str]:
    """The feature strings of one message, shared by training and inference."""
    tokens = _tokens(text)
    out = list(tokens)
    out.extend(f"{a} {b}" for a, b in itertools.pairwise(tokens))
    if context and previous:
        out.extend(f"prev:{token}" for token in set(_tokens(previous)))
    return out


class TfidfMoodDetector:
    """A linear model over sublinear TF-IDF features; pure numpy at inference."""

    name = "tfidf"

    def __init__(
        self,
        *,
        vocabulary: Sequence[str],
        idf: FloatArray,
        coef: FloatArray,
        intercept: FloatArray,
        labels: Sequence[Mood],
        threshold: float,
        context: bool,
        info: dict[str, Any] | None = None,
    ) -> None:
        if coef.shape != (len(labels), len(vocabulary)) or idf.shape != (len(vocabulary),):
            raise ValueError("TF-IDF model arrays do not match the vocabulary and labels")
        if Mood.NO_EMOTION not in labels:
            raise ValueError("TF-IDF model labels must include 'no emotion'")
        self._index = {term: i for i, term in enumerate(vocabulary)}
        self._vocabulary = list(vocabulary)
        self._idf = idf.astype(np.float32)
        self._coef = coef.astype(np.float32)
        self._intercept = intercept.astype(np.float32)
        self.labels = list(labels)
        self.threshold = threshold
        self.context = context
        self.info = dict(info or {})

    # -- inference -------------------------------------------------------------------------

    def probabilities(self, text: str, previous: str | None = None) -> dict[Mood, float]:
        """Class probabilities (softmax of the linear scores) for one message."""
        counts = Counter(
            index
            for feature in features(text, previous, context=self.context)
            if (index := self._index.get(feature)) is not None
        )
        logits = self._intercept.astype(np.float64)
        if counts:
            columns = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
            tf = np.fromiter(
                (1.0 + math.log(c) for c in counts.values()), dtype=np.float64, count=len(counts)
            )
            weights = tf * self._idf[columns]
            weights /= float(np.linalg.norm(weights)) or 1.0
            logits = logits + self._coef[:, columns].astype(np.float64) @ weights
        exp = np.exp(logits - logits.max())
        probs = exp / exp.sum()
        return {mood: float(p) for mood, p in zip(self.labels, probs, strict=True)}

    def detect_sync(self, text: str, previous: str | None = None) -> MoodResult:
        """Best emotion if its probability reaches the threshold, else "no emotion"."""
        probs = self.probabilities(text, previous)
        return self.decide(probs)

    def decide(self, probs: dict[Mood, float]) -> MoodResult:
        best = max((m for m in probs if m is not Mood.NO_EMOTION), key=lambda m: probs[m])
        if probs[best] >= self.threshold:
            return MoodResult(best, probs[best])
        return MoodResult(Mood.NO_EMOTION, probs[Mood.NO_EMOTION])

    async def detect(self, text: str, previous: str | None = None) -> MoodResult:
        """Inline on the event loop: a sparse dot product takes well under a millisecond."""
        return self.detect_sync(text, previous)

    # -- artifact --------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": ARTIFACT_FORMAT,
            "labels": [mood.value for mood in self.labels],
            "threshold": self.threshold,
            "context": self.context,
            "info": self.info,
            "vocabulary": self._vocabulary,
        }
        (directory / _META).write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
        np.savez_compressed(
            directory / _ARRAYS, idf=self._idf, coef=self._coef, intercept=self._intercept
        )

    @classmethod
    def load(cls, directory: Path = DEFAULT_ARTIFACT) -> TfidfMoodDetector:
        """Read a saved model; ConfigError saying how to train one when there is none."""
        meta_path, arrays_path = directory / _META, directory / _ARRAYS
        if not meta_path.is_file() or not arrays_path.is_file():
            raise ConfigError(
                f"No TF-IDF mood model in {directory}. Train one (about a minute) with "
                "`python -m training.mood_baselines --data PATH_TO_DAILYDIALOG --output "
                f"{directory}`, or set PERSONABOT_MOOD_DETECTOR=lexicon."
            )
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if meta.get("format") != ARTIFACT_FORMAT:
                raise ValueError(f"unsupported format {meta.get('format')!r}")
            with np.load(arrays_path, allow_pickle=False) as arrays:
                return cls(
                    vocabulary=meta["vocabulary"],
                    idf=arrays["idf"],
                    coef=arrays["coef"],
                    intercept=arrays["intercept"],
                    labels=[Mood.parse(label) for label in meta["labels"]],
                    threshold=float(meta["threshold"]),
                    context=bool(meta["context"]),
                    info=meta.get("info"),
                )
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"The TF-IDF mood model in {directory} is unusable: {exc}") from None
