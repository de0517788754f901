"""Train the TF-IDF + logistic regression mood baseline on DailyDialog (needs scikit-learn).

The baseline answers "how much does a trained model buy over word counts?" in the benchmark,
so it is trained the straightforward way: sublinear TF-IDF over the features of
:func:`core.mood.tfidf.features`, multinomial logistic regression, and one decision
threshold. The threshold is tuned for micro-F1 over the six emotions on a seeded 10% of the
*training* dialogues held out from a first fit; the final model is then refitted on the whole
training split. Validation and test are never looked at.

    .venv/bin/python -m training.mood_baselines --data ../shared/data/dailydialog \
        --output core/mood/tfidf_model
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.mood.tfidf import DEFAULT_ARTIFACT, TfidfMoodDetector, features
from core.types import Mood
from training.dailydialog import Dialogue, iter_utterances, load_split

log = logging.getLogger(__name__)

LABELS: tuple[Mood, ...] = tuple(Mood)


@dataclass(frozen=True)
class TfidfConfig:
    """Every knob of a baseline run; stored in the artifact so a run can be repeated."""

    min_df: int = 2
    c: float = 2.0
    """Inverse regularisation: the best micro-F1 on the held-out 10% of train among C = 0.5,
    1, 2, 4 and 16, with context (the sweep: docs/benchmarks-log.md#figures-formerly-in-code)."""
    context: bool = True
    dev_fraction: float = 0.1
    seed: int = 13
    max_iter: int = 2000


def examples(dialogues: Sequence[Dialogue], context: bool) -> tuple[list[list[str]], list[int]]:
    """Feature lists and label indices, built by the same function the detector uses."""
    docs: list[list[str]] = []
    labels: list[int] = []
    for previous, turn in iter_utterances(list(dialogues)):
        docs.append(features(turn.text, previous, context=context))
        labels.append(LABELS.index(turn.emotion))
    return docs, labels


def fit_sklearn(docs: list[list[str]], labels: list[int], config: TfidfConfig) -> tuple[Any, Any]:
    """The fitted vectorizer and model; features arrive pre-tokenised, so that inference in
    :mod:`core.mood.tfidf` can rebuild them without scikit-learn."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = TfidfVectorizer(
        analyzer=_identity,
        min_df=config.min_df,
        sublinear_tf=True,
        norm="l2",
        smooth_idf=True,
        dtype=np.float32,
    )
    matrix = vectorizer.fit_transform(docs)
    model = LogisticRegression(C=config.c, max_iter=config.max_iter, random_state=config.seed)
    model.fit(matrix, labels)
    return vectorizer, model


def _identity(doc: list[str]) -> list[str]:
    return doc


def to_detector(
    vectorizer: Any, model: Any, config: TfidfConfig, threshold: float
) -> TfidfMoodDetector:
    """Copy the fitted numbers out of scikit-learn into the dependency-free detector."""
    vocabulary = [""] * len(vectorizer.vocabulary_)
    for term, index in vectorizer.vocabulary_.items():
        vocabulary[index] = term
    classes = [int(c) for c in model.classes_]
    return TfidfMoodDetector(
        vocabulary=vocabulary,
        idf=np.asarray(vectorizer.idf_, dtype=np.float32),
        coef=np.asarray(model.coef_, dtype=np.float32),
        intercept=np.asarray(model.intercept_, dtype=np.float32),
        labels=[LABELS[c] for c in classes],
        threshold=threshold,
        context=config.context,
        info={"config": asdict(config)},
    )


def micro_f1_emotions(gold: Sequence[int], predicted: Sequence[int]) -> float:
    """Micro-F1 over the six emotions; label 0 ("no emotion") is neither hit nor miss."""
    hits = sum(1 for g, p in zip(gold, predicted, strict=True) if g == p != 0)
    predicted_emotions = sum(1 for p in predicted if p != 0)
    gold_emotions = sum(1 for g in gold if g != 0)
    if not hits:
        return 0.0
    precision, recall = hits / predicted_emotions, hits / gold_emotions
    return 2 * precision * recall / (precision + recall)


def tune_threshold(probabilities: np.ndarray[Any, Any], gold: Sequence[int]) -> tuple[float, float]:
    """The emotion-probability threshold with the best micro-F1, and that F1.

    Columns of ``probabilities`` follow :data:`LABELS` (column 0 is "no emotion").
    """
    emotions = probabilities[:, 1:]
    best_emotion = emotions.argmax(axis=1) + 1
    best_probability = emotions.max(axis=1)
    best = (0.5, -1.0)
    for threshold in (step / 100 for step in range(5, 96)):
        predicted = np.where(best_probability >= threshold, best_emotion, 0)
        score = micro_f1_emotions(gold, predicted.tolist())
        if score > best[1]:
            best = (threshold, score)
    return best


def train_tfidf(
    data: Path | str, *, split: str = "train", config: TfidfConfig | None = None
) -> TfidfMoodDetector:
    """Fit the baseline on ``split`` of the DailyDialog data at ``data`` (seeded, ~1 min)."""
    config = config or TfidfConfig()
    started = time.perf_counter()
    dialogues = load_split(data, split)
    shuffled = list(dialogues)
    random.Random(config.seed).shuffle(shuffled)
    cut = max(1, int(len(shuffled) * config.dev_fraction))
    dev, fit_part = shuffled[:cut], shuffled[cut:]

    docs, labels = examples(fit_part, config.context)
    vectorizer, model = fit_sklearn(docs, labels, config)
    dev_docs, dev_labels = examples(dev, config.context)
    probs = np.zeros((len(dev_docs), len(LABELS)))
    probs[:, [int(c) for c in model.classes_]] = model.predict_proba(vectorizer.transform(dev_docs))
    threshold, dev_f1 = tune_threshold(probs, dev_labels)
    log.info(
        "TF-IDF baseline: threshold %.2f gives micro-F1 %.3f on held-out train", threshold, dev_f1
    )

    all_docs, all_labels = examples(dialogues, config.context)
    vectorizer, model = fit_sklearn(all_docs, all_labels, config)
    detector = to_detector(vectorizer, model, config, threshold)
    detector.info.update(
        {
            "split": split,
            "examples": len(all_docs),
            "features": len(vectorizer.vocabulary_),
            "heldout_micro_f1_emotions": round(dev_f1, 4),
            "train_seconds": round(time.perf_counter() - started, 1),
        }
    )
    return detector


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the TF-IDF mood baseline.")
    parser.add_argument("--data", required=True, help="DailyDialog split archive or directory")
    parser.add_argument("--split", default="train")
    parser.add_argument("--output", type=Path, default=DEFAULT_ARTIFACT)
    parser.add_argument("--c", type=float, default=TfidfConfig.c)
    parser.add_argument("--no-context", action="store_true", help="ignore the previous turn")
    parser.add_argument("--seed", type=int, default=TfidfConfig.seed)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = TfidfConfig(c=args.c, context=not args.no_context, seed=args.seed)
    detector = train_tfidf(args.data, split=args.split, config=config)
    detector.save(args.output)
    print(f"saved {args.output}: {detector.info}")


if __name__ == "__main__":
    main()
