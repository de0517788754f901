"""The TF-IDF baseline: training on a tiny split, numpy inference equal to scikit-learn's."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from core.errors import ConfigError
from core.mood import MoodDetector
from core.mood.tfidf import TfidfMoodDetector, features
from core.types import Mood
from training.dailydialog import load_split
from training.mood_baselines import (
    TfidfConfig,
    examples,
    fit_sklearn,
    to_detector,
    train_tfidf,
    tune_threshold,
)

PHRASES = {
    0: [
        "Where is the station ?",
        "I will call you tomorrow .",
        "The bus leaves at nine .",
        "Can you pass the salt ?",
        "We need two tickets .",
    ],
    4: ["I am so happy !", "That is wonderful , thanks !", "Great news , I love it !"],
    1: ["I am furious with you !", "Stop it , that makes me angry !"],
    5: ["I feel so sad and lonely .", "My dog died , I am heartbroken ."],
}


def write_train_split(folder: Path, dialogues: int = 60, seed: int = 3) -> Path:
    rng = random.Random(seed)
    texts, emotions, acts = [], [], []
    for _ in range(dialogues):
        turns = []
        for _ in range(rng.randint(2, 5)):
            label = rng.choice([0, 0, 0, 4, 1, 5])
            turns.append((rng.choice(PHRASES[label]), label))
        texts.append(" __eou__ ".join(t for t, _ in turns) + " __eou__")
        emotions.append(" ".join(str(label) for _, label in turns))
        acts.append(" ".join("1" for _ in turns))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dialogues_train.txt").write_text("\n".join(texts) + "\n")
    (folder / "dialogues_emotion_train.txt").write_text("\n".join(emotions) + "\n")
    (folder / "dialogues_act_train.txt").write_text("\n".join(acts) + "\n")
    return folder


CONFIG = TfidfConfig(min_df=1, dev_fraction=0.2, c=4.0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TfidfMoodDetector:
    data = write_train_split(tmp_path_factory.mktemp("dd"))
    return train_tfidf(data, config=CONFIG)


def test_features_words_bigrams_and_context() -> None:
    feats = features("I’m SO happy!", "Really?")
    assert {"i'm", "so", "happy", "!", "i'm so", "happy !"} <= set(feats)
    assert {"prev:really", "prev:?"} <= set(feats)
    assert not any(f.startswith("prev:") for f in features("hi", "there", context=False))
    assert features("") == []


def test_learns_the_tiny_split(trained: TfidfMoodDetector) -> None:
    assert isinstance(trained, MoodDetector)
    assert trained.name == "tfidf"
    assert trained.detect_sync("I am so happy, I love it!").mood is Mood.HAPPINESS
    assert trained.detect_sync("I am furious, that makes me angry").mood is Mood.ANGER
    assert trained.detect_sync("The bus leaves at nine.").mood is Mood.NO_EMOTION
    probs = trained.probabilities("anything at all", previous="hello")
    assert set(probs) == set(Mood) - {Mood.DISGUST, Mood.FEAR, Mood.SURPRISE}
    assert sum(probs.values()) == pytest.approx(1.0)
    assert trained.info["config"]["seed"] == CONFIG.seed
    assert 0.05 <= trained.threshold <= 0.95


async def test_async_detect_matches_sync(trained: TfidfMoodDetector) -> None:
    text = "I feel so sad and lonely"
    assert await trained.detect(text, "hi") == trained.detect_sync(text, "hi")


def test_save_load_round_trip(trained: TfidfMoodDetector, tmp_path: Path) -> None:
    trained.save(tmp_path / "model")
    loaded = TfidfMoodDetector.load(tmp_path / "model")
    for text, previous in [("I am so happy!", None), ("Where is it?", "I am angry!"), ("", None)]:
        assert loaded.probabilities(text, previous) == pytest.approx(
            trained.probabilities(text, previous)
        )
    assert loaded.threshold == trained.threshold and loaded.info == trained.info


def test_numpy_inference_equals_scikit_learn(tmp_path: Path) -> None:
    dialogues = load_split(write_train_split(tmp_path, dialogues=30, seed=9), "train")
    docs, labels = examples(dialogues, context=True)
    vectorizer, model = fit_sklearn(docs, labels, CONFIG)
    detector = to_detector(vectorizer, model, CONFIG, threshold=0.5)
    cases = [("I am so so happy !", "Where is it ?"), ("Stop it !", None), ("unseen words", None)]
    expected = model.predict_proba(vectorizer.transform([features(t, p) for t, p in cases]))
    for (text, previous), row in zip(cases, expected, strict=True):
        ours = detector.probabilities(text, previous)
        classes = [Mood.from_dailydialog(int(c)) for c in model.classes_]
        theirs = {mood: float(p) for mood, p in zip(classes, row, strict=True)}
        assert ours == pytest.approx(theirs, abs=1e-5)


def test_threshold_tuning_picks_the_best_cut() -> None:
    # Columns follow Mood order; gold 4 (happiness) has emotion probability 0.6, the
    # neutral rows 0.3: any threshold in (0.3, 0.6] is perfect, and the first one wins.
    probs = np.zeros((3, 7))
    probs[0, [0, 4]] = [0.4, 0.6]
    probs[1, [0, 4]] = [0.7, 0.3]
    probs[2, [0, 1]] = [0.7, 0.3]
    threshold, f1 = tune_threshold(probs, [4, 0, 0])
    assert f1 == pytest.approx(1.0)
    assert threshold == pytest.approx(0.31)


def test_missing_or_broken_artifact_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"No TF-IDF mood model .*training\.mood_baselines"):
        TfidfMoodDetector.load(tmp_path / "nothing")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tfidf.json").write_text(json.dumps({"format": 99}))
    (broken / "tfidf.npz").write_bytes(b"not numpy")
    with pytest.raises(ConfigError, match="unusable"):
        TfidfMoodDetector.load(broken)
