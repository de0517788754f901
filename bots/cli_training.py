"""``personabot`` commands that train models (the mood classifier today)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from bots.cli_common import ConfigOption, settings_or_exit
from core.mood_classifier import DEFAULT_ARTIFACT


def train_mood(
    data: Annotated[
        Path,
        typer.Option(
            help="DailyDialog: a folder holding train.zip and validation.zip (or their "
            "extracted files)."
        ),
    ],
    output: Annotated[
        Path, typer.Option(help="Artifact folder to write (the shipped one is core/mood_model).")
    ] = Path("mood_model"),
    epochs: Annotated[int, typer.Option(help="Passes over the training split.")] = 4,
    batch_size: Annotated[int, typer.Option(help="Utterances per step.")] = 64,
    lr: Annotated[float, typer.Option(help="LoRA learning rate.")] = 4e-4,
    lora_r: Annotated[int, typer.Option(help="LoRA rank.")] = 32,
    context: Annotated[
        bool, typer.Option(help="Give the model the previous turn as context.")
    ] = True,
    seed: Annotated[int, typer.Option(help="Random seed (data order, initialisation).")] = 13,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    limit: Annotated[
        int | None, typer.Option(help="Train on the first N utterances only (smoke runs).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Train the mood classifier on DailyDialog (seeded; writes the artifact and metrics.json).

    It keeps the best epoch by validation micro-F1 over the six emotions, fits a calibration
    temperature and the "no emotion" threshold on validation. On a GPU it takes a few
    minutes; on a CPU about an hour per epoch. Point PERSONABOT_MOOD_DETECTOR=classifier at
    the result by copying it over core/mood_model (the default artifact).
    """
    settings_or_exit(config)
    from training.dailydialog import DatasetError
    from training.train_mood import MoodTrainConfig, train_mood_classifier

    if output.resolve() == DEFAULT_ARTIFACT.resolve():
        typer.echo(
            "personabot: refusing to overwrite the shipped artifact in place; "
            "write elsewhere and copy it over.",
            err=True,
        )
        raise typer.Exit(2)
    run = MoodTrainConfig(
        data=str(data),
        output=str(output),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        lora_r=lora_r,
        lora_alpha=2 * lora_r,
        context=context,
        seed=seed,
        device=device,
        limit=limit,
    )
    try:
        metrics = train_mood_classifier(run)
    except (DatasetError, FileNotFoundError) as exc:
        typer.echo(f"personabot: {exc}", err=True)
        raise typer.Exit(2) from None
    summary = {k: v for k, v in metrics.items() if k not in ("history", "config")}
    typer.echo(json.dumps(summary, indent=2))


def register_training_commands(app: typer.Typer) -> None:
    """Attach the training commands to the main CLI app."""
    app.command("train-mood")(train_mood)
