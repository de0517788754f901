"""``personabot import-chat``: a chat export into training data for a personal persona."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from bots.cli_common import ConfigOption, settings_or_exit


def default_dataset_path(data_dir: Path, export: Path, speaker: str) -> Path:
    """``DATA_DIR/datasets/<export name>-<speaker>.jsonl``, a name safe on every filesystem."""
    slug = re.sub(r"[^a-z0-9]+", "-", f"{export.stem}-{speaker}".lower()).strip("-")
    return data_dir / "datasets" / f"{slug or 'chat'}.jsonl"


def import_chat(
    path: Annotated[
        Path,
        typer.Argument(
            help="The export: WhatsApp's .txt, Telegram Desktop's result.json, or a "
            "DiscordChatExporter .json/.csv.",
            show_default=False,
        ),
    ],
    speaker: Annotated[
        str,
        typer.Option(
            help="Whose voice to learn: their name as the export shows it (case ignored).",
            show_default=False,
        ),
    ],
    export_format: Annotated[
        str,
        typer.Option("--format", help="auto, whatsapp, telegram or discord (auto: by the file)."),
    ] = "auto",
    output: Annotated[
        Path | None,
        typer.Option(
            help="Dataset to write (JSONL; default DATA_DIR/datasets/<export>-<speaker>.jsonl)."
        ),
    ] = None,
    gap_hours: Annotated[
        float,
        typer.Option(min=0.01, help="A silence this long starts a new conversation."),
    ] = 6.0,
    context_turns: Annotated[
        int, typer.Option(min=1, help="Earlier turns kept as context in each example.")
    ] = 8,
    config: ConfigOption = None,
) -> None:
    """Turn a chat export into training examples in which SPEAKER is the assistant.

    Media, links, the app's own lines and deleted messages are dropped; consecutive messages
    by one person become one turn; each of the speaker's turns that answers someone becomes
    one example, with up to --context-turns earlier turns as history. Everything stays on
    this machine: the dataset is written readable by you only, and the summary shows counts,
    never message text. Then: personabot train --data DATASET, and personabot persona
    add-adapter NAME ADAPTER.
    """
    settings = settings_or_exit(config)
    from training.chat_import import DROP_REASONS, build_dataset, parse_export, write_jsonl
    from training.dailydialog import DatasetError

    try:
        chat = parse_export(path, export_format.strip().lower())
        dataset = build_dataset(chat, speaker, gap_hours=gap_hours, context_turns=context_turns)
    except DatasetError as exc:
        typer.echo(f"personabot: {exc}", err=True)
        raise typer.Exit(2) from None
    target = output or default_dataset_path(settings.data_dir, path, dataset.speaker)
    try:
        write_jsonl(dataset.examples, target)
    except OSError as exc:
        typer.echo(f"personabot: cannot write {target}: {exc.strerror}", err=True)
        raise typer.Exit(2) from None
    figures = dataset.summary()
    dropped = figures["dropped"]
    typer.echo(
        f"Imported {path.name} ({figures['format']}): {figures['messages']} messages by "
        f"{figures['speakers']} speakers."
    )
    typer.echo(
        f"Conversations: {figures['conversations']}; turns: {figures['turns']}, of which "
        f"{figures['speaker']}'s: {figures['speaker_turns']} "
        f"({figures['speaker_turns_without_context']} opening a conversation, not used)."
    )
    typer.echo(
        f"Examples: {figures['examples']}; about {figures['approx_tokens']} tokens "
        f"({figures['approx_reply_tokens']} in the replies)."
    )
    typer.echo("Dropped: " + ", ".join(f"{reason} {dropped[reason]}" for reason in DROP_REASONS))
    typer.echo(f"Wrote {target}")
    typer.echo(f"Next: personabot train --data {target}")
