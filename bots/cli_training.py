"""``personabot`` commands that train and evaluate models: the mood classifier and the reply
model's LoRA adapters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from bots.cli_common import ConfigOption, ProfileOption, settings_or_exit
from training.train_lm import DEFAULT_TARGETS  # cheap: torch is imported only when training

BaseModelOption = Annotated[
    str | None,
    typer.Option(help="Local model folder, Hub id or .gguf file replacing the profile's weights."),
]
"""``--base-model`` of the commands that load a model (train, eval, persona-replay)."""
DeviceOption = Annotated[str | None, typer.Option(help="auto, cpu or cuda.")]
"""``--device`` of the same commands; None: the settings' choice."""


def train_mood(
    data: Annotated[
        Path,
        typer.Option(
            help="DailyDialog: a folder holding train.zip and validation.zip (or their "
            "extracted files)."
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            help="Artifact folder to write (the shipped one is core/mood/classifier_model)."
        ),
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
    the result by copying it over core/mood/classifier_model (the default artifact).
    """
    settings_or_exit(config)
    from core.mood.classifier import DEFAULT_ARTIFACT  # imports torch: only when training
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


def _fail(message: str) -> NoReturn:
    typer.echo(f"personabot: {message}", err=True)
    raise typer.Exit(2)


def _targets(value: str) -> list[str]:
    return [t.strip() for t in value.split(",") if t.strip()]


def train(
    data: Annotated[
        Path,
        typer.Option(
            help="DailyDialog (a folder holding train.zip and validation.zip, their extracted "
            "files, or one split's .zip), your own Alpaca-style .json/.jsonl file "
            "(instruction, input, output), or a chat dataset written by import-chat."
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            help="Adapter folder to write (default: DATA_DIR/adapters/<profile>-dailydialog, "
            "where the bot picks it up; <profile>-<file name> for your own data)."
        ),
    ] = None,
    profile: ProfileOption = None,
    base_model: BaseModelOption = None,
    data_format: Annotated[
        str,
        typer.Option(
            "--format", help="auto, dailydialog, alpaca or chat (auto: by file name and content)."
        ),
    ] = "auto",
    eval_data: Annotated[
        Path | None,
        typer.Option(
            help="Validation data (default: the DailyDialog validation split, or 5% of an "
            "Alpaca file held out)."
        ),
    ] = None,
    train_split: Annotated[str, typer.Option(help="DailyDialog split to train on.")] = "train",
    eval_split: Annotated[str, typer.Option(help="DailyDialog split to validate on.")] = (
        "validation"
    ),
    include_first_turn: Annotated[
        bool, typer.Option(help="Also learn each dialogue's opening turn (no history).")
    ] = False,
    persona: Annotated[
        str | None,
        typer.Option(help="Use this persona's system prompt in the examples (default: neutral)."),
    ] = None,
    extra_data: Annotated[
        list[Path] | None,
        typer.Option(
            help="Chat-format JSONL added to the training examples as it is (repeatable), "
            "e.g. the output of persona-replay, which keeps personas in character."
        ),
    ] = None,
    load_in_4bit: Annotated[
        bool,
        typer.Option(
            "--4bit/--no-4bit",
            help="QLoRA: base weights in NF4 with double quantisation (--no-4bit: bf16 on a "
            "GPU, fp32 on a CPU).",
        ),
    ] = True,
    device: DeviceOption = None,
    epochs: Annotated[float, typer.Option(help="Passes over the training data.")] = 1.0,
    max_steps: Annotated[
        int | None, typer.Option(min=1, help="Optimizer steps; overrides --epochs.")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Examples per micro-batch.")] = 16,
    grad_accum: Annotated[int, typer.Option(min=1, help="Micro-batches per optimizer step.")] = 1,
    seq_len: Annotated[
        int, typer.Option(min=32, help="Longest example in tokens (oldest turns dropped).")
    ] = 512,
    lr: Annotated[float, typer.Option(help="Peak learning rate (cosine decay).")] = 2e-4,
    warmup_ratio: Annotated[float, typer.Option(help="Share of steps warming up.")] = 0.03,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.0,
    lora_r: Annotated[int, typer.Option(min=1, help="LoRA rank.")] = 16,
    lora_alpha: Annotated[int, typer.Option(min=1, help="LoRA alpha (scale = alpha / r).")] = 32,
    lora_dropout: Annotated[float, typer.Option(help="Dropout on the LoRA input.")] = 0.05,
    lora_targets: Annotated[
        str, typer.Option(help="Comma-separated module names to adapt.")
    ] = ",".join(DEFAULT_TARGETS),
    optim: Annotated[
        str,
        typer.Option(
            help="auto (paged_adamw_32bit on CUDA, adamw on CPU), paged_adamw_32bit, adamw."
        ),
    ] = "auto",
    gradient_checkpointing: Annotated[
        bool, typer.Option(help="Recompute activations in the backward pass to save memory.")
    ] = True,
    eval_steps: Annotated[
        int, typer.Option(min=0, help="Validate every N steps (0: only at the end).")
    ] = 200,
    save_steps: Annotated[
        int | None,
        typer.Option(
            min=0, help="Resumable checkpoint every N steps (default: --eval-steps; 0: none)."
        ),
    ] = None,
    save_total_limit: Annotated[int, typer.Option(min=1, help="Checkpoints kept.")] = 2,
    max_train_examples: Annotated[
        int | None, typer.Option(min=1, help="Train on a seeded sample of N examples.")
    ] = None,
    max_eval_examples: Annotated[
        int | None, typer.Option(min=1, help="Validate on a seeded sample of N examples.")
    ] = 2000,
    group_by_length: Annotated[
        bool, typer.Option(help="Batch examples of similar length (less padding).")
    ] = True,
    resume: Annotated[
        str | None,
        typer.Option(help="Continue from a checkpoint folder, or 'last' (newest under OUTPUT)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed (data order, LoRA init).")] = 42,
    max_minutes: Annotated[
        float | None,
        typer.Option(
            help="Time budget of the training loop (evaluations included, loading not): the "
            "run is shortened after its first steps are timed so that it ends in time."
        ),
    ] = None,
    log_steps: Annotated[int, typer.Option(min=1, help="Record the loss every N steps.")] = 10,
    config: ConfigOption = None,
) -> None:
    """Fine-tune a LoRA adapter for the reply model (QLoRA) on DailyDialog or your own data.

    Each DailyDialog turn becomes one example: the earlier turns as history, the turn as the
    reply, and a system prompt asking for its emotion and dialogue act in the same words the
    bot uses at run time; loss is on the reply only. Writes the best adapter (lowest
    validation loss), train_config.json, metrics.json and resumable checkpoints to OUTPUT.
    Runs on a CUDA GPU, or slowly on a CPU for a smoke test.
    """
    settings = settings_or_exit(config, model_profile=profile)
    from core.errors import PersonabotError
    from core.generation.local.profiles import (
        SHIPPED_ADAPTERS,
        default_adapter_dir,
        resolve_profile_name,
    )
    from training.dailydialog import DatasetError
    from training.sft_data import detect_format
    from training.train_lm import LMTrainConfig, TrainingError, find_persona, summary, train_lm

    profile_name = resolve_profile_name(settings)
    try:
        kind = detect_format(data, data_format)
        chosen = find_persona(persona, settings.resolved_persona_dir) if persona else None
    except (DatasetError, PersonabotError) as exc:
        _fail(str(exc))
    if output is None:
        output = default_adapter_dir(settings, profile_name)
        if kind != "dailydialog":
            output = output.with_name(f"{profile_name}-{data.stem}")
    if output.resolve().is_relative_to(SHIPPED_ADAPTERS.resolve()):
        _fail(
            "refusing to write into the shipped adapters (core/adapters) in place; "
            "write elsewhere and copy it over."
        )
    run = LMTrainConfig(
        data=str(data),
        output=str(output),
        profile=profile_name,
        base_model=base_model,
        data_format=kind,
        train_split=train_split,
        eval_split=eval_split,
        eval_data=str(eval_data) if eval_data else None,
        include_first_turn=include_first_turn,
        persona=persona,
        extra_data=[str(path) for path in extra_data or []],
        load_in_4bit=load_in_4bit,
        device=device or settings.device,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        grad_accum=grad_accum,
        seq_len=seq_len,
        lr=lr,
        warmup_ratio=warmup_ratio,
        weight_decay=weight_decay,
        lora_r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        lora_targets=_targets(lora_targets),
        optim=optim,
        gradient_checkpointing=gradient_checkpointing,
        eval_steps=eval_steps,
        save_steps=save_steps,
        save_total_limit=save_total_limit,
        max_train_examples=max_train_examples,
        max_eval_examples=max_eval_examples,
        group_by_length=group_by_length,
        resume=resume,
        seed=seed,
        log_steps=log_steps,
        max_minutes=max_minutes,
        cache_dir=str(settings.resolved_cache_dir),
    )
    try:
        metrics = train_lm(run, persona=chosen)
    except (DatasetError, TrainingError, PersonabotError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps({"output": str(output), **summary(metrics)}, indent=2))


def evaluate(
    data: Annotated[
        Path,
        typer.Option(
            help="DailyDialog split: its official .zip (e.g. test.zip) or a folder holding it or "
            "its extracted files; or an Alpaca-style .json/.jsonl file (perplexity only)."
        ),
    ],
    split: Annotated[
        str, typer.Option(help="Split name: train, validation or test.")
    ] = "validation",
    adapter: Annotated[
        Path | None,
        typer.Option(help="Adapter folder (default: the profile's default adapter)."),
    ] = None,
    profile: ProfileOption = None,
    base_model: BaseModelOption = None,
    data_format: Annotated[
        str, typer.Option("--format", help="auto, dailydialog, alpaca or chat.")
    ] = "auto",
    device: DeviceOption = None,
    max_examples: Annotated[
        int | None, typer.Option(min=1, help="Reply turns scored for perplexity (seeded sample).")
    ] = 1000,
    max_generate: Annotated[
        int,
        typer.Option(min=0, help="Replies generated per model for emotion_match_rate (0: none)."),
    ] = 100,
    max_voice: Annotated[
        int,
        typer.Option(
            min=0,
            help="Replies generated per model and stylised persona (pirate, bard) for "
            "persona_voice_rate (0: none).",
        ),
    ] = 50,
    batch_size: Annotated[int, typer.Option(min=1, help="Examples per batch.")] = 16,
    seq_len: Annotated[int, typer.Option(min=32, help="Longest example in tokens.")] = 512,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Longest generated reply.")] = 48,
    judge: Annotated[
        str, typer.Option(help="Mood detector that judges the replies' emotion.")
    ] = "classifier",
    seed: Annotated[int, typer.Option(help="Seed of the samples.")] = 42,
    report: Annotated[
        Path | None, typer.Option("--output", help="Also write the JSON to this file.")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Perplexity on reply turns (base vs base + adapter) and how often replies carry the
    requested emotion, judged by the mood classifier: one JSON object on standard output.

    Keys include perplexity_base, perplexity_adapter, emotion_match_rate (and _base),
    persona_voice_rate (and _base: how often pirate and bard replies are in character), the
    counts, and a few sample replies. Progress bars go to standard error.
    """
    overrides: dict[str, Any] = {"model_profile": profile, "adapter_path": adapter}
    if device:
        overrides["device"] = device
    if base_model:  # a .gguf file is swapped into the spec below
        overrides["model_path"] = base_model
    settings = settings_or_exit(config, **overrides)
    from core.errors import PersonabotError
    from training.dailydialog import DatasetError
    from training.eval_lm import LMEvalConfig, run_evaluation
    from training.train_lm import TrainingError

    run = LMEvalConfig(
        data=str(data),
        split=split,
        data_format=data_format,
        max_examples=max_examples,
        max_generate=max_generate,
        max_voice=max_voice,
        batch_size=batch_size,
        seq_len=seq_len,
        max_new_tokens=max_new_tokens,
        judge=judge,
        seed=seed,
    )
    try:
        result = run_evaluation(run, settings, base_model=base_model)
    except (DatasetError, TrainingError, PersonabotError) as exc:
        _fail(str(exc))
    text = json.dumps(result)
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(result, indent=2) + "\n")
    typer.echo(text)


def persona_replay(
    data: Annotated[
        Path,
        typer.Option(help="DailyDialog: a folder holding the splits, or one split's .zip."),
    ],
    output: Annotated[Path, typer.Option(help="Chat-format JSONL to write.")],
    split: Annotated[str, typer.Option(help="DailyDialog split whose contexts to use.")] = (
        "train"
    ),
    examples: Annotated[
        int, typer.Option(min=1, help="Replies to generate, spread over the personas.")
    ] = 12000,
    personas: Annotated[
        str | None, typer.Option(help="Comma-separated persona names (default: all built-in).")
    ] = None,
    profile: ProfileOption = None,
    base_model: BaseModelOption = None,
    device: DeviceOption = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Replies generated at once.")] = 64,
    max_new_tokens: Annotated[
        int, typer.Option(min=8, help="Longest reply; longer ones are cut to a full sentence.")
    ] = 80,
    seed: Annotated[int, typer.Option(help="Seed of the sample and the sampling.")] = 42,
    config: ConfigOption = None,
) -> None:
    """Have the base model answer DailyDialog contexts in each persona's voice, for training.

    Fine-tuning on DailyDialog alone teaches the adapter to ignore the persona (the human
    replies are never in character). Pass this file to `personabot train --extra-data` so
    the adapter keeps the base model's in-character replies while it learns DailyDialog's.
    """
    settings = settings_or_exit(config, model_profile=profile)
    from core.errors import PersonabotError
    from core.generation.local.profiles import resolve_profile_name
    from training.dailydialog import DatasetError
    from training.persona_replay import ReplayConfig, ReplayError, make_replay

    run = ReplayConfig(
        data=str(data),
        output=str(output),
        split=split,
        examples=examples,
        personas=[n.strip() for n in personas.split(",") if n.strip()] if personas else None,
        profile=resolve_profile_name(settings),
        base_model=base_model,
        device=device or settings.device,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        seed=seed,
        cache_dir=str(settings.resolved_cache_dir),
    )
    try:
        report = make_replay(run)
    except (ReplayError, DatasetError, PersonabotError) as exc:
        _fail(str(exc))
    typer.echo(json.dumps({k: v for k, v in report.items() if k != "config"}, indent=2))


def register_training_commands(app: typer.Typer) -> None:
    """Attach the training commands to the main CLI app."""
    app.command("train-mood")(train_mood)
    app.command("train")(train)
    app.command("eval")(evaluate)
    app.command("persona-replay")(persona_replay)
