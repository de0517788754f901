"""Discord channel exports made with DiscordChatExporter, as JSON or CSV.

Discord has no export of its own for channels; DiscordChatExporter (GUI or CLI, ``-f Json``
or ``-f Csv``) is the usual tool. JSON has a ``messages`` list whose items have ``type``
(``Default`` and ``Reply`` are people's messages; joins, pins, thread and call notices are
not), ``timestamp``, ``content``, ``author`` (``name``, ``nickname``) and ``attachments`` /
``stickers``. CSV has the columns ``AuthorID, Author, Date, Content, Attachments,
Reactions``. A speaker is known by their nickname when the export has one, else their name.
"""

from __future__ import annotations

import csv
import io
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from training.chat_import.located_json import line_of
from training.chat_import.records import ChatImportError, ParsedChat

_PEOPLE = frozenset({"Default", "Reply"})
_CUSTOM_EMOJI = re.compile(r"<a?:(\w+):\d+>")
_RAW_MENTION = re.compile(r"<(?:@[!&]?|#)\d+>")
CSV_COLUMNS = ("Author", "Date", "Content")
"""Columns a DiscordChatExporter CSV must have (AuthorID, Attachments, Reactions optional)."""


def _content(text: str) -> str:
    """Custom emoji as ``:name:``; raw ``<@123>`` mentions (rare in exports) removed."""
    return _RAW_MENTION.sub("", _CUSTOM_EMOJI.sub(r":\1:", text))


def _when(path: Path, line: int | None, value: Any) -> datetime:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip())
        except ValueError:
            for layout in ("%d-%b-%y %I:%M %p", "%m/%d/%Y %I:%M %p"):  # older exporter versions
                try:
                    return datetime.strptime(value.strip(), layout)
                except ValueError:
                    continue
    raise ChatImportError(path, line, f"the date {value!r} is not a date and time.")


def parse_discord_json(path: Path, data: Any) -> ParsedChat:
    """Messages of a parsed DiscordChatExporter JSON export."""
    chat = ParsedChat(path=path, format="discord")
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        raise ChatImportError(
            path, None, "expected a DiscordChatExporter JSON export with a 'messages' list."
        )
    for index, message in enumerate(data["messages"]):
        line = line_of(message)
        if not isinstance(message, dict):
            raise ChatImportError(path, line, f"message {index} is not an object.")
        kind = message.get("type", "Default")
        if kind not in _PEOPLE:
            chat.dropped["system"] += 1
            continue
        author = message.get("author")
        name = None
        if isinstance(author, dict):
            name = author.get("nickname") or author.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ChatImportError(path, line, "the message has no author name.")
        content = message.get("content", "")
        if not isinstance(content, str):
            raise ChatImportError(path, line, "'content' must be a string.")
        when = _when(path, line, message.get("timestamp"))
        if message.get("attachments") or message.get("stickers"):
            chat.dropped["media"] += 1
            if not content.strip():
                continue
        chat.add(name.strip(), _content(content), when, line or 0)
    return chat


def parse_discord_csv(path: Path, text: str) -> ParsedChat:
    """Messages of a DiscordChatExporter CSV export (quoted multi-line content allowed)."""
    chat = ParsedChat(path=path, format="discord")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise ChatImportError(path, None, "is empty.") from None
    except csv.Error as exc:
        raise ChatImportError(path, reader.line_num, f"not valid CSV ({exc}).") from None
    columns = {name.strip(): i for i, name in enumerate(header)}
    missing = [name for name in CSV_COLUMNS if name not in columns]
    if missing:
        raise ChatImportError(
            path,
            1,
            f"the header lacks the column(s) {', '.join(missing)}; a DiscordChatExporter CSV "
            "starts with AuthorID,Author,Date,Content,Attachments,Reactions.",
        )
    attachments = columns.get("Attachments")
    line = reader.line_num
    while True:
        start = line + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise ChatImportError(path, start, f"not valid CSV ({exc}).") from None
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise ChatImportError(
                path, start, f"has {len(row)} fields where the header has {len(header)}."
            )
        author = row[columns["Author"]].strip()
        if not author:
            raise ChatImportError(path, start, "the Author field is empty.")
        when = _when(path, start, row[columns["Date"]])
        content = row[columns["Content"]]
        if attachments is not None and row[attachments].strip():
            chat.dropped["media"] += 1
            if not content.strip():
                continue
        chat.add(author, _content(content), when, start)
    return chat
