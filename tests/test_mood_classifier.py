"""The shipped mood classifier (the default detector) and the command that trains it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from core.mood import create_mood_detector
from core.mood.classifier import DEFAULT_ARTIFACT, EXPORT_SUBDIR, ClassifierMoodDetector
from core.settings import Settings
from core.types import Mood

CLEAR_EXAMPLES = [
    ("I am so happy today, this is wonderful!", None, Mood.HAPPINESS),
    ("I hate you, this makes me furious!", None, Mood.ANGER),
    ("I am scared of the dark.", None, Mood.FEAR),
    ("I am so sad, my grandmother passed away.", None, Mood.SADNESS),
    ("That is disgusting, gross!", None, Mood.DISGUST),
    ("What?! No way, really?", "I won the lottery.", Mood.SURPRISE),
    ("The meeting is at 3pm in room 4.", None, Mood.NO_EMOTION),
]
# Everyday messages, some long enough to be truncated, for comparing the two backends.
MIXED_EXAMPLES = [
    *((text, previous) for text, previous, _ in CLEAR_EXAMPLES),
    ("ok", None),
    ("Oh really? That's great news!", "I got the job."),
    ("Could you pass me the salt, please?", "Dinner is ready."),
    ("Thanks a lot.", "Here is your ticket."),
    ("I missed the bus again and now I am late for work. " * 12, "Where are you? " * 30),
]


@pytest.fixture(scope="module")
def detector(model_cache_dir: Path) -> ClassifierMoodDetector:
    """The default path: ONNX Runtime, int8, its export cached between test sessions."""
    return ClassifierMoodDetector.load(cache_dir=model_cache_dir)


@pytest.fixture(scope="module")
def torch_reference() -> ClassifierMoodDetector:
    """The eager float32 network the exports are made from."""
    return ClassifierMoodDetector.load(backend="torch", quantize=False)


def _exports(cache_dir: Path) -> list[Path]:
    return sorted((cache_dir / EXPORT_SUBDIR).iterdir())


@pytest.mark.parametrize(("text", "previous", "mood"), CLEAR_EXAMPLES)
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


def test_loading_twice_is_cheap_and_identical(
    detector: ClassifierMoodDetector, model_cache_dir: Path
) -> None:
    started = time.perf_counter()
    again = ClassifierMoodDetector.load(cache_dir=model_cache_dir)
    elapsed = time.perf_counter() - started
    text = "I can't believe you did that!"
    assert again.probabilities(text) == detector.probabilities(text)
    assert elapsed < 5.0, f"second load took {elapsed:.1f}s"


def test_classifier_is_the_default_detector(model_cache_dir: Path) -> None:
    assert Settings().mood_detector == "classifier"
    built = create_mood_detector("classifier", cache_dir=model_cache_dir)
    assert built.name == "classifier"
    assert isinstance(built, ClassifierMoodDetector) and built.backend == "onnx"


def test_encode_matches_the_transformers_tokenizer(detector: ClassifierMoodDetector) -> None:
    for text, previous in MIXED_EXAMPLES:
        expected = detector._tokenizer(
            previous or "", text, truncation="longest_first", max_length=128, return_tensors="np"
        )
        encoded = detector.encode(text, previous)
        assert encoded["input_ids"].shape[1] <= 128
        for name, ids in encoded.items():
            assert ids.tolist() == expected[name].tolist(), name


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_int8_backends_agree_with_the_float_network(
    detector: ClassifierMoodDetector,
    torch_reference: ClassifierMoodDetector,
    backend: str,
) -> None:
    """Quantisation moves probabilities a little and never flips a clear example.

    Per-tensor int8 moves an ambiguous message by up to about 0.16 (ONNX Runtime, "Oh
    really? That's great news!") or 0.07 (torch); the float export itself is exact (next
    test), so this bounds the quantisation, not the export.
    """
    int8 = detector if backend == "onnx" else ClassifierMoodDetector.load(backend="torch")
    for text, previous, mood in CLEAR_EXAMPLES:
        assert int8.detect_sync(text, previous).mood is mood
        assert torch_reference.detect_sync(text, previous).mood is mood
    gaps = [
        max(
            abs(a - b)
            for a, b in zip(
                int8.probabilities(text, previous),
                torch_reference.probabilities(text, previous),
                strict=True,
            )
        )
        for text, previous in MIXED_EXAMPLES
    ]
    assert max(gaps) < 0.2, f"{backend} int8 is up to {max(gaps):.3f} away from float32"
    assert sum(gaps) / len(gaps) < 0.05, f"{backend} int8: mean gap {sum(gaps) / len(gaps):.3f}"


def test_float_onnx_export_matches_torch(
    torch_reference: ClassifierMoodDetector, tmp_path: Path
) -> None:
    """Without quantisation the exported graph computes what the torch network does."""
    exported = ClassifierMoodDetector.load(quantize=False, cache_dir=tmp_path)
    for text, previous in MIXED_EXAMPLES:
        ours = exported.probabilities(text, previous)
        reference = torch_reference.probabilities(text, previous)
        assert max(abs(a - b) for a, b in zip(ours, reference, strict=True)) < 1e-4


def test_export_is_cached_atomically_and_reused(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    started = time.perf_counter()
    first = create_mood_detector("classifier", cache_dir=cache)
    first_s = time.perf_counter() - started
    [export] = _exports(cache)  # one finished file, no temporary left behind
    assert export.suffix == ".onnx" and not export.name.startswith(".")
    stamp = export.stat().st_mtime_ns

    started = time.perf_counter()
    second = ClassifierMoodDetector.load(cache_dir=cache)
    second_s = time.perf_counter() - started
    assert _exports(cache) == [export] and export.stat().st_mtime_ns == stamp
    assert second_s < first_s / 2, f"cached load {second_s:.2f}s vs first {first_s:.2f}s"
    text, previous = "Oh really? That's great news!", "I got the job."
    assert isinstance(first, ClassifierMoodDetector)
    assert second.probabilities(text, previous) == first.probabilities(text, previous)


def test_a_changed_artifact_gets_a_fresh_export(tmp_path: Path) -> None:
    """Retraining changes the artifact's files, so the old export must not be picked up."""
    artifact = tmp_path / "artifact"
    shutil.copytree(DEFAULT_ARTIFACT, artifact)
    cache = tmp_path / "cache"
    before = ClassifierMoodDetector.load(artifact, cache_dir=cache)
    [old_export] = _exports(cache)
    happy = "I am so happy today, this is wonderful!"
    assert before.detect_sync(happy).mood is Mood.HAPPINESS

    # "Retrain": swap the head's rows for happiness and sadness.
    labels = json.loads((artifact / "classifier.json").read_text())["labels"]
    swap = [labels.index("happiness"), labels.index("sadness")]
    head = load_file(str(artifact / "head.safetensors"))
    for name in head:
        head[name][swap] = head[name][swap[::-1]].clone()
    save_file(head, str(artifact / "head.safetensors"))

    after = ClassifierMoodDetector.load(artifact, cache_dir=cache)
    assert old_export in _exports(cache) and len(_exports(cache)) == 2
    assert after.detect_sync(happy).mood is Mood.SADNESS
    reference = ClassifierMoodDetector.load(artifact, backend="torch", quantize=False)
    assert reference.detect_sync(happy).mood is Mood.SADNESS


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
