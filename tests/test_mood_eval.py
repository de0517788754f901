"""Mood evaluation: the metrics, checked by hand on a tiny split in the official format."""

from __future__ import annotations

import random
import zipfile
from pathlib import Path
from typing import ClassVar

import pytest

from core.types import Mood, MoodResult
from training.dailydialog import load_split
from training.mood_eval import evaluate, percentile, scores

#: Two dialogues in DailyDialog's own spacing; (text, gold emotion id, act id) per turn.
DIALOGUES = [
    [("Hi there .", 0, 1), ("I am so happy !", 4, 1), ("Why are you happy ?", 0, 2)],
    [("I am angry .", 1, 1), ("That is sad .", 5, 1), ("Wow .", 6, 1), ("I am afraid .", 2, 1)],
]


def write_split(folder: Path, split: str = "test") -> Path:
    """The three files of an official split, as its zip extracts them."""
    folder.mkdir(parents=True, exist_ok=True)
    texts = "".join(" __eou__ ".join(t for t, _, _ in d) + " __eou__\n" for d in DIALOGUES)
    emotions = "".join(" ".join(str(e) for _, e, _ in d) + " \n" for d in DIALOGUES)
    acts = "".join(" ".join(str(a) for _, _, a in d) + " \n" for d in DIALOGUES)
    (folder / f"dialogues_{split}.txt").write_text(texts)
    (folder / f"dialogues_emotion_{split}.txt").write_text(emotions)
    (folder / f"dialogues_act_{split}.txt").write_text(acts)
    return folder


def write_split_zip(folder: Path, split: str = "test") -> Path:
    """The split as its official archive: ``<split>.zip`` holding ``<split>/dialogues_*``."""
    extracted = write_split(folder / "extracted", split)
    archive = folder / f"{split}.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(extracted.iterdir()):
            bundle.write(path, f"{split}/{path.name}")
    return archive


class KeywordDetector:
    """A transparent detector whose answers are known in advance, recording its inputs."""

    name = "keywords"
    KEYWORDS: ClassVar[dict[str, Mood]] = {
        "happy": Mood.HAPPINESS,
        "angry": Mood.ANGER,
        "wow": Mood.SURPRISE,
    }

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    async def detect(self, text: str, previous: str | None = None) -> MoodResult:
        self.calls.append((text, previous))
        lowered = text.lower()
        if "afraid" in lowered:
            return MoodResult(Mood.FEAR, 0.9)
        for word, mood in self.KEYWORDS.items():
            if word in lowered:
                return MoodResult(mood, 0.8)
        return MoodResult(Mood.NO_EMOTION, 0.7)


def test_metrics_by_hand(tmp_path: Path) -> None:
    # gold -> predicted:  none->none  happy->happy  none->happy  anger->anger
    #                     sad->none   surprise->surprise  disgust->fear
    detector = KeywordDetector()
    report = evaluate(detector, load_split(write_split(tmp_path), "test"))
    assert report["detector"] == "keywords"
    assert report["n"] == 7
    assert report["accuracy"] == pytest.approx(4 / 7)
    # Emotions predicted: 5 (turns 2,3,4,6,7); gold emotions: 5 (2,4,5,6,7); right: 3.
    assert report["precision_emotions"] == pytest.approx(3 / 5)
    assert report["recall_emotions"] == pytest.approx(3 / 5)
    assert report["micro_f1_emotions"] == pytest.approx(0.6)
    expected = {
        "no emotion": 0.5,  # gold {1,3}, predicted {1,5}, one right: 2*1/(2+2)
        "anger": 1.0,
        "disgust": 0.0,
        "fear": 0.0,  # predicted once, never gold
        "happiness": 2 / 3,  # gold {2}, predicted {2,3}: 2*1/(1+2)
        "sadness": 0.0,
        "surprise": 1.0,
    }
    assert report["per_class_f1"] == pytest.approx(expected)
    assert report["macro_f1"] == pytest.approx(sum(expected.values()) / 7)
    assert report["ms_per_message"] > 0
    assert 0 < report["p50_ms"] <= report["p95_ms"]


def test_each_message_gets_the_previous_one(tmp_path: Path) -> None:
    detector = KeywordDetector()
    evaluate(detector, load_split(write_split(tmp_path), "test"))
    assert detector.calls[:4] == [
        ("Hi there.", None),
        ("I am so happy!", "Hi there."),
        ("Why are you happy?", "I am so happy!"),
        ("I am angry.", None),  # a new dialogue starts without context
    ]


def test_limit_and_zip_input(tmp_path: Path) -> None:
    dialogues = load_split(write_split_zip(tmp_path), "test")
    report = evaluate(KeywordDetector(), dialogues, limit=3)
    assert report["n"] == 3
    assert report["accuracy"] == pytest.approx(2 / 3)


def test_no_emotion_only_scores_zero_micro_f1() -> None:
    gold = [Mood.NO_EMOTION, Mood.HAPPINESS, Mood.NO_EMOTION]
    result = scores(gold, [Mood.NO_EMOTION] * 3)
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["micro_f1_emotions"] == 0.0
    assert result["precision_emotions"] == 0.0


def test_scores_agree_with_scikit_learn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = random.Random(5)
    moods = list(Mood)
    gold = [rng.choice(moods[:5]) if rng.random() < 0.5 else Mood.NO_EMOTION for _ in range(400)]
    predicted = [g if rng.random() < 0.4 else rng.choice(moods) for g in gold]
    ours = scores(gold, predicted)
    gold_ids = [moods.index(m) for m in gold]
    predicted_ids = [moods.index(m) for m in predicted]
    emotions = list(range(1, 7))
    assert ours["accuracy"] == pytest.approx(metrics.accuracy_score(gold_ids, predicted_ids))
    assert ours["micro_f1_emotions"] == pytest.approx(
        metrics.f1_score(gold_ids, predicted_ids, labels=emotions, average="micro")
    )
    assert ours["macro_f1"] == pytest.approx(
        metrics.f1_score(
            gold_ids, predicted_ids, labels=list(range(7)), average="macro", zero_division=0
        )
    )
    per_class = metrics.f1_score(
        gold_ids, predicted_ids, labels=list(range(7)), average=None, zero_division=0
    )
    assert list(ours["per_class_f1"].values()) == pytest.approx(list(per_class))


def test_percentile_interpolates_like_numpy() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == pytest.approx(2.5)
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 95) == pytest.approx(4.8)
    assert percentile([7.0], 95) == 7.0
    assert percentile([], 50) == 0.0
