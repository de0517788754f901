"""Chat exports (WhatsApp, Telegram, Discord) turned into training data for a personal persona.

``parse_export`` reads a file in any supported format into :class:`ParsedChat`;
:func:`build_dataset` turns it into chat examples with one speaker as the assistant, which
``personabot train`` reads like any chat-format JSONL. One module per format, each small and
standard-library only (``re``, ``json``, ``csv``, ``datetime``).
"""

from __future__ import annotations

import json
from pathlib import Path

from training.chat_import.discord import parse_discord_csv, parse_discord_json
from training.chat_import.examples import (
    PERSONAL_SYSTEM_PROMPT,
    ChatDataset,
    build_dataset,
    personal_persona,
    write_jsonl,
)
from training.chat_import.located_json import loads_located
from training.chat_import.records import DROP_REASONS, ChatImportError, ChatLine, ParsedChat
from training.chat_import.telegram import parse_telegram
from training.chat_import.whatsapp import parse_whatsapp

__all__ = [
    "DROP_REASONS",
    "FORMATS",
    "PERSONAL_SYSTEM_PROMPT",
    "ChatDataset",
    "ChatImportError",
    "ChatLine",
    "ParsedChat",
    "build_dataset",
    "detect_export_format",
    "parse_export",
    "personal_persona",
    "write_jsonl",
]

FORMATS: tuple[str, ...] = ("auto", "whatsapp", "telegram", "discord")


def _read(path: Path) -> str:
    if not path.is_file():
        raise ChatImportError(path, None, "does not exist or is not a file.")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ChatImportError(path, None, f"is not UTF-8 text ({exc.reason}).") from None
    except OSError as exc:
        raise ChatImportError(path, None, f"cannot be read ({exc.strerror}).") from None


def _json(path: Path, text: str) -> object:
    try:
        return loads_located(text)
    except json.JSONDecodeError as exc:
        raise ChatImportError(path, exc.lineno, f"invalid JSON ({exc.msg}).") from None


def detect_export_format(path: Path, text: str) -> str:
    """``telegram`` or ``discord`` for JSON (by its top-level keys) and CSV, else ``whatsapp``."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "discord"
    if suffix == ".json" or text.lstrip().startswith("{"):
        head = text[:4096]
        if '"guild"' in head or '"channel"' in head:
            return "discord"
        return "telegram"
    return "whatsapp"


def parse_export(path: Path | str, export_format: str = "auto") -> ParsedChat:
    """The messages of a chat export, cleaned, with counts of what was dropped.

    ``export_format`` is one of :data:`FORMATS`; ``auto`` decides by the file's name and
    first characters. Raises :class:`ChatImportError` naming the file (and line).
    """
    path = Path(path)
    if export_format not in FORMATS:
        raise ChatImportError(
            path, None, f"unknown format {export_format!r}; expected one of {', '.join(FORMATS)}."
        )
    text = _read(path)
    kind = detect_export_format(path, text) if export_format == "auto" else export_format
    if kind == "whatsapp":
        return parse_whatsapp(path, text)
    if kind == "telegram":
        return parse_telegram(path, _json(path, text))
    if path.suffix.lower() == ".csv":
        return parse_discord_csv(path, text)
    return parse_discord_json(path, _json(path, text))
