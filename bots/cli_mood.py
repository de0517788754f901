"""``personabot`` commands about mood detection (detect, evaluate, train)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, get_args

import typer

from bots.cli_common import ConfigOption, run_command, settings_or_exit
from core.settings import MoodDetectorName

DETECTOR_NAMES: tuple[str, ...] = get_args(MoodDetectorName)

DetectorOption = Annotated[
    str | None,
    typer.Option(
        "--detector",
        help=f"Mood detector: {', '.join(DETECTOR_NAMES)} "
        "(default: the configured one, PERSONABOT_MOOD_DETECTOR).",
    ),
]


def register_mood_commands(app: typer.Typer) -> None:
    """Attach the mood commands to the main CLI app."""
    app.command("mood")(mood)
    app.command("eval-mood")(eval_mood)


def _detector_name(option: str | None, configured: str) -> str:
    """``--detector`` checked up front, so a typo is named as the option the user typed."""
    if option is None:
        return configured
    name = option.strip().lower()
    if name not in DETECTOR_NAMES:
        typer.echo(
            f"personabot: unknown mood detector {option!r} (--detector); choose one of: "
            f"{', '.join(DETECTOR_NAMES)}.",
            err=True,
        )
        raise typer.Exit(2)
    return name


def mood(
    text: Annotated[str, typer.Argument(help="The message to classify.")],
    previous: Annotated[
        str | None,
        typer.Option(help="The message before it in the conversation (context)."),
    ] = None,
    detector: DetectorOption = None,
    config: ConfigOption = None,
) -> None:
    """Print the mood of TEXT and the detector's confidence, e.g. `happiness 0.87`."""
    settings = settings_or_exit(config)
    name = _detector_name(detector, settings.mood_detector)
    run_command(
        _mood(name, text, previous, settings.max_message_chars, settings.resolved_cache_dir)
    )


async def _mood(name: str, text: str, previous: str | None, max_chars: int, cache_dir: Path) -> int:
    from core.mood import create_mood_detector
    from core.text import clean_user_text

    # The same normalisation the engine applies before it asks the detector.
    text = clean_user_text(text, max_chars=max_chars)
    detector = create_mood_detector(name, cache_dir=cache_dir)
    result = await detector.detect(text, previous or None)
    typer.echo(f"{result.mood.value} {result.confidence:.2f}")
    return 0


def eval_mood(
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            help="DailyDialog split: its official .zip (e.g. test.zip), or a directory "
            "holding the .zip or the extracted files.",
        ),
    ],
    split: Annotated[str, typer.Option("--split", help="Split name: train, validation or test.")],
    detector: DetectorOption = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Evaluate only the first N utterances.")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Score a mood detector on a DailyDialog split: one JSON object on standard output.

    Each utterance goes through the detector one at a time with the previous one as context,
    as in a chat, so the latencies are per message. A progress bar goes to standard error.
    """
    settings = settings_or_exit(config)
    name = _detector_name(detector, settings.mood_detector)
    run_command(_eval_mood(name, data, split, limit, settings.resolved_cache_dir))


async def _eval_mood(name: str, data: Path, split: str, limit: int | None, cache_dir: Path) -> int:
    from core.mood import create_mood_detector
    from training.dailydialog import DatasetError, load_split
    from training.mood_eval import aevaluate, rounded

    # The data first: a wrong path should not wait for a model to load.
    try:
        dialogues = load_split(data, split)
    except DatasetError as exc:
        typer.echo(f"personabot: {exc}", err=True)
        return 2
    mood_detector = create_mood_detector(name, cache_dir=cache_dir)
    report = await aevaluate(mood_detector, dialogues, limit=limit, progress=True)
    report.update(data=str(data), split=split)
    typer.echo(json.dumps(rounded(report)))
    return 0
