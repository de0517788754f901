"""The shipped mood classifier (the default detector) and the command that trains it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.mood import create_mood_detector
from core.mood_classifier import DEFAULT_ARTIFACT, ClassifierMoodDetector
from core.settings import Settings
from core.types import Mood


@pytest.fixture(scope="module")
def detector() -> ClassifierMoodDetector:
    return ClassifierMoodDetector.load()


@pytest.mark.parametrize(
    ("text", "previous", "mood"),
    [
        ("I am so happy today, this is wonderful!", None, Mood.HAPPINESS),
        ("I hate you, this makes me furious!", None, Mood.ANGER),
        ("I am scared of the dark.", None, Mood.FEAR),
        ("I am so sad, my grandmother passed away.", None, Mood.SADNESS),
        ("That is disgusting, gross!", None, Mood.DISGUST),
        ("What?! No way, really?", "I won the lottery.", Mood.SURPRISE),
        ("The meeting is at 3pm in room 4.", None, Mood.NO_EMOTION),
    ],
)
async def test_clear_examples(
    detector: ClassifierMoodDetector, text: str, previous: str | None, mood: Mood
) -> None:
    result = await detector.detect(text, previous)
    assert result.mood is mood
    assert 0.4 <= result.confidence <= 1.0


def test_probabilities_are_a_distribution(detector: ClassifierMoodDetector) -> None:
    probabilities = detector.probabilities("Oh really? That's great news!", "I got the job.")
    assert len(probabilities) == 7
    assert abs(sum(probabilities) - 1.0) < 1e-4
    assert all(0.0 <= p <= 1.0 for p in probabilities)


def test_unsure_falls_back_to_no_emotion(detector: ClassifierMoodDetector) -> None:
    result = detector.detect_sync("ok", None)
    assert result.mood is Mood.NO_EMOTION


def test_artifact_is_small_and_documented() -> None:
    size = sum(f.stat().st_size for f in DEFAULT_ARTIFACT.rglob("*") if f.is_file())
    assert size < 30 * 1024 * 1024
    card = (DEFAULT_ARTIFACT / "MODEL_CARD.md").read_text()
    metrics = json.loads((DEFAULT_ARTIFACT / "metrics.json").read_text())
    assert f"{metrics['val_micro_f1_emotions']:.3f}" in card


def test_loading_twice_is_cheap_and_identical(detector: ClassifierMoodDetector) -> None:
    started = time.perf_counter()
    again = ClassifierMoodDetector.load()
    elapsed = time.perf_counter() - started
    text = "I can't believe you did that!"
    assert again.probabilities(text) == detector.probabilities(text)
    assert elapsed < 5.0, f"second load took {elapsed:.1f}s"


def test_classifier_is_the_default_detector() -> None:
    assert Settings().mood_detector == "classifier"
    assert create_mood_detector("classifier").name == "classifier"


def _write_split(folder: Path, split: str) -> None:
    dialogues = [
        ("Hello , how are you ?", "I am so happy today !", "0 4"),
        ("Did you hear the news ?", "What ? No way !", "0 6"),
        ("I lost my keys again .", "Oh no , that is terrible .", "5 5"),
        ("Get out of my room !", "Why are you so angry ?", "1 0"),
    ] * 8
    folder.mkdir(parents=True)
    (folder / f"dialogues_{split}.txt").write_text(
        "".join(f"{a} __eou__ {b} __eou__\n" for a, b, _ in dialogues)
    )
    (folder / f"dialogues_emotion_{split}.txt").write_text(
        "".join(f"{labels}\n" for _, _, labels in dialogues)
    )
    (folder / f"dialogues_act_{split}.txt").write_text("".join("2 1\n" for _ in dialogues))


def test_train_mood_command_writes_a_loadable_artifact(tmp_path: Path) -> None:
    data = tmp_path / "dailydialog"
    _write_split(data / "train", "train")
    _write_split(data / "validation", "validation")
    output = tmp_path / "artifact"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONABOT_")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bots",
            "train-mood",
            "--data",
            str(data),
            "--output",
            str(output),
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--device",
            "cpu",
            "--seed",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["train_examples"] == 64 and summary["validation_examples"] == 64
    assert "epoch 1/1" in done.stderr  # the progress bar
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["config"]["seed"] == 3
    trained = ClassifierMoodDetector.load(output)
    assert trained.detect_sync("I am so happy today!").mood in set(Mood)


def test_train_mood_reports_a_bad_data_path(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bots",
            "train-mood",
            "--data",
            str(tmp_path / "nope"),
            "--output",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if not k.startswith("PERSONABOT_")},
    )
    assert done.returncode == 2
    assert "does not exist" in done.stderr and "Traceback" not in done.stderr
