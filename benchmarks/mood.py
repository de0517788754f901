"""Mood detectors side by side on DailyDialog: quality and per-message latency.

    .venv/bin/python -m benchmarks.mood                     # validation split, every detector
    .venv/bin/python -m benchmarks.mood --detectors lexicon,tfidf --limit 2000

Evaluates each detector with :func:`training.mood_eval.evaluate` (one message at a time
through ``detect``, the previous utterance as context) and prints a JSON list, then a
markdown table for docs/benchmarks.md. A detector that cannot be built here (a missing
optional package, NLTK data or trained artifact) is listed as unavailable with the reason
rather than stopping the run. The TF-IDF baseline is trained on the fly from the training
split (seeded) unless ``--tfidf-model`` names a saved one, so the numbers
never depend on a stale artifact.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.mood import MoodDetector, create_mood_detector
from core.settings import Settings
from training.dailydialog import load_split
from training.mood_eval import evaluate, rounded

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "dailydialog"
DEFAULT_DETECTORS = ("lexicon", "tfidf", "text2emotion", "classifier")


def build(name: str, args: argparse.Namespace) -> tuple[MoodDetector, dict[str, Any]]:
    """The detector called ``name`` and notes on how it was obtained."""
    if name == "tfidf" and args.tfidf_model is None:
        from training.mood_baselines import train_tfidf

        started = time.perf_counter()
        baseline = train_tfidf(args.data, split=args.train_split)
        return baseline, {
            "trained_on": args.train_split,
            "train_s": round(time.perf_counter() - started, 1),
            "threshold": baseline.threshold,
        }
    if name == "tfidf":
        from core.mood.tfidf import TfidfMoodDetector

        return TfidfMoodDetector.load(args.tfidf_model), {"model": str(args.tfidf_model)}
    started = time.perf_counter()
    if name == "classifier" and args.classifier_backend != "onnx":
        from core.mood.classifier import ClassifierMoodDetector

        detector: MoodDetector = ClassifierMoodDetector.load(
            backend=args.classifier_backend, cache_dir=args.cache_dir
        )
    else:
        detector = create_mood_detector(name, cache_dir=args.cache_dir)
    notes: dict[str, Any] = {"load_s": round(time.perf_counter() - started, 1)}
    if name == "classifier":
        notes["backend"] = args.classifier_backend
    return detector, notes


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    dialogues = load_split(args.data, args.split)
    results: list[dict[str, Any]] = []
    for name in args.detectors:
        try:
            detector, notes = build(name, args)
        except (ConfigError, ImportError) as exc:
            results.append({"detector": name, "available": False, "reason": str(exc)})
            continue
        report = evaluate(detector, dialogues, limit=args.limit, progress=True)
        results.append({**rounded(report), "available": True, **notes})
    return results


def markdown(results: list[dict[str, Any]], split: str) -> str:
    lines = [
        f"DailyDialog {split}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}.",
        "",
        "| detector | micro-F1 (6 emotions) | macro-F1 (7) | accuracy | ms/message (mean) "
        "| p50 ms | p95 ms | n |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        if not r["available"]:
            reason = r["reason"].replace("|", "\\|").splitlines()[0]
            lines.append(f"| {r['detector']} | unavailable: {reason} | | | | | | |")
            continue
        lines.append(
            f"| {r['detector']} | {r['micro_f1_emotions']:.3f} | {r['macro_f1']:.3f} "
            f"| {r['accuracy']:.3f} | {r['ms_per_message']:.3f} | {r['p50_ms']:.3f} "
            f"| {r['p95_ms']:.3f} | {r['n']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="Compare the mood detectors on DailyDialog.")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="%(default)s")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--train-split", default="train", help="for the TF-IDF baseline")
    parser.add_argument(
        "--detectors",
        type=lambda value: [n.strip() for n in value.split(",") if n.strip()],
        default=list(DEFAULT_DETECTORS),
        help="comma-separated (default: %(default)s)",
    )
    parser.add_argument("--limit", type=int, default=None, help="first N utterances only")
    parser.add_argument("--tfidf-model", type=Path, default=None, help="saved TF-IDF model")
    parser.add_argument(
        "--classifier-backend",
        choices=["onnx", "torch"],
        default="onnx",
        help="how the classifier runs: onnx (the default detector) or the eager torch "
        "reference (default: %(default)s)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where the classifier's ONNX export is kept (default: the settings' cache dir)",
    )
    parser.add_argument("--json-out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    if args.cache_dir is None:
        args.cache_dir = Settings().resolved_cache_dir
    results = run(args)
    text = json.dumps(results, indent=2)
    if args.json_out is not None:
        args.json_out.write_text(text + "\n")
    print(text)
    print()
    print(markdown(results, args.split))


if __name__ == "__main__":
    main()
