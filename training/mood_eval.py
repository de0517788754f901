"""Score any mood detector on DailyDialog the way the bot uses it, quality and speed together.

Every utterance goes through ``detector.detect(text, previous)`` one at a time, with the
previous utterance of its dialogue as context, exactly as the engine calls it; so the latency
figures include whatever the detector does per message in production (a thread hop, a
tokenizer, a model call), not a batched best case.

The headline number is ``micro_f1_emotions``, DailyDialog's customary score: micro-F1 over
the six emotions, where "no emotion" (88% of the validation utterances) is neither a hit nor
a miss, so a detector that always answers "no emotion" scores 0 there, not 88% accuracy.
Accuracy and macro-F1 over all seven classes are reported next to it. The metrics are
computed here in a few lines of plain Python (checked against scikit-learn in the tests), so
evaluating needs nothing beyond the detector itself, scikit-learn being a training-only extra.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from core.mood import MoodDetector
from core.types import Mood
from training.dailydialog import Dialogue, iter_utterances

__all__ = ["aevaluate", "evaluate", "percentile", "rounded", "scores"]

EMOTIONS: tuple[Mood, ...] = tuple(m for m in Mood if m is not Mood.NO_EMOTION)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile with linear interpolation (numpy's default method)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _f1(hits: int, predicted: int, actual: int) -> float:
    return 2 * hits / (predicted + actual) if hits else 0.0


def scores(gold: Sequence[Mood], predicted: Sequence[Mood]) -> dict[str, Any]:
    """Accuracy, micro-F1 over the emotions, macro-F1 and per-class F1 of paired labels.

    F1 is written as ``2·TP / (predicted + actual)``, which equals ``2PR / (P + R)`` and is 0
    for a class that is never predicted correctly (scikit-learn's ``zero_division=0``).
    """
    if len(gold) != len(predicted):
        raise ValueError("gold and predicted labels differ in length")
    pairs = list(zip(gold, predicted, strict=True))
    per_class = {
        mood.value: _f1(
            sum(1 for g, p in pairs if g is p is mood),
            sum(1 for _, p in pairs if p is mood),
            sum(1 for g, _ in pairs if g is mood),
        )
        for mood in Mood
    }
    hits = sum(1 for g, p in pairs if g is p and g is not Mood.NO_EMOTION)
    predicted_emotions = sum(1 for _, p in pairs if p is not Mood.NO_EMOTION)
    gold_emotions = sum(1 for g, _ in pairs if g is not Mood.NO_EMOTION)
    return {
        "n": len(pairs),
        "accuracy": sum(1 for g, p in pairs if g is p) / len(pairs) if pairs else 0.0,
        "micro_f1_emotions": _f1(hits, predicted_emotions, gold_emotions),
        "precision_emotions": hits / predicted_emotions if predicted_emotions else 0.0,
        "recall_emotions": hits / gold_emotions if gold_emotions else 0.0,
        "macro_f1": sum(per_class.values()) / len(per_class),
        "per_class_f1": per_class,
    }


async def aevaluate(
    detector: MoodDetector,
    dialogues: Sequence[Dialogue],
    *,
    limit: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """:func:`evaluate` for callers already inside an event loop."""
    examples = list(iter_utterances(list(dialogues)))
    if limit is not None:
        examples = examples[:limit]
    bar: Any = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(examples), desc=f"mood eval ({detector.name})", unit="msg")
    gold: list[Mood] = []
    predicted: list[Mood] = []
    latencies_ms: list[float] = []
    try:
        for previous, turn in examples:
            started = time.perf_counter()
            result = await detector.detect(turn.text, previous)
            latencies_ms.append((time.perf_counter() - started) * 1000)
            gold.append(turn.emotion)
            predicted.append(result.mood)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    report: dict[str, Any] = {"detector": detector.name}
    report.update(scores(gold, predicted))
    report.update(
        {
            "ms_per_message": sum(latencies_ms) / len(latencies_ms) if latencies_ms else 0.0,
            "p50_ms": percentile(latencies_ms, 50),
            "p95_ms": percentile(latencies_ms, 95),
        }
    )
    return report


def evaluate(
    detector: MoodDetector,
    dialogues: Sequence[Dialogue],
    *,
    limit: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Quality and per-message latency of ``detector`` on every utterance of ``dialogues``.

    Keys: ``detector``, ``n``, ``accuracy``, ``micro_f1_emotions`` (with its
    ``precision_emotions`` and ``recall_emotions``), ``macro_f1`` (seven classes),
    ``per_class_f1``, ``ms_per_message`` (mean), ``p50_ms``, ``p95_ms``. ``limit`` keeps the
    first N utterances; ``progress`` draws a tqdm bar on standard error.
    """
    return asyncio.run(aevaluate(detector, dialogues, limit=limit, progress=progress))


def rounded(report: dict[str, Any], digits: int = 4) -> dict[str, Any]:
    """``report`` with its floats rounded, for printing."""

    def fix(value: Any) -> Any:
        if isinstance(value, float):
            return round(value, digits)
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        return value

    return {k: fix(v) for k, v in report.items()}
