"""Telegram Desktop's chat export in machine-readable JSON (``result.json``).

Export one chat (Chat menu > Export chat history > Format: JSON); the file has the chat's
``name`` and a ``messages`` list. A message's ``text`` is either a string or a list whose
items are strings or entities ``{"type": ..., "text": ...}`` (bold, mention, link, ...).
Link-like entities (``link``, ``email``, ``phone``) are dropped; the others contribute their
visible text (a ``text_link`` keeps its words, not its address). ``service`` messages
(joins, pins, calls) and forwarded messages are counted and skipped; photos, stickers, voice
notes and files are counted as media, their caption kept.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from training.chat_import.located_json import line_of
from training.chat_import.records import ChatImportError, ParsedChat

_LINK_ENTITIES = frozenset({"link", "email", "phone"})
_MEDIA_KEYS = (
    "photo",
    "file",
    "media_type",
    "sticker_emoji",
    "location_information",
    "contact_information",
    "poll",
    "game_title",
    "invoice_information",
)


def _text(path: Path, line: int, value: Any, chat: ParsedChat) -> str:
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise ChatImportError(
            path,
            line,
            f"'text' must be a string or a list of entities, not {type(value).__name__}.",
        )
    parts: list[str] = []
    for item in value:
        if isinstance(item, str):
            parts.append(item)
            continue
        where = line_of(item, line)
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            raise ChatImportError(
                path, where, "a text entity must be a string or an object with a string 'text'."
            )
        if item.get("type") in _LINK_ENTITIES:
            chat.dropped["links"] += 1
            continue
        parts.append(item["text"])
    return "".join(parts)


def _author(message: dict[str, Any]) -> str | None:
    author = message.get("from")
    if isinstance(author, str) and author.strip():
        return author.strip()
    if author is None and "from_id" in message:
        return "Deleted Account"  # how Telegram shows an account that no longer exists
    return None


def parse_telegram(path: Path, data: Any) -> ParsedChat:
    """Messages of a parsed Telegram export (objects carrying their line numbers)."""
    chat = ParsedChat(path=path, format="telegram")
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        if isinstance(data, dict) and isinstance(data.get("chats"), dict):
            raise ChatImportError(
                path,
                None,
                "this is a whole-account export; export the one chat instead (open the chat, "
                "menu > Export chat history, format JSON).",
            )
        raise ChatImportError(path, None, "expected a Telegram chat export with a 'messages' list.")
    for index, message in enumerate(data["messages"]):
        line = line_of(message)
        if not isinstance(message, dict):
            raise ChatImportError(path, line, f"message {index} is not an object.")
        kind = message.get("type")
        if kind == "service":
            chat.dropped["system"] += 1
            continue
        if kind != "message":
            raise ChatImportError(
                path, line, f"unknown message type {kind!r} (expected 'message' or 'service')."
            )
        author = _author(message)
        if author is None:
            raise ChatImportError(path, line, "the message has no sender ('from').")
        when = _when(path, line, message.get("date"))
        text = _text(path, line or 0, message.get("text", ""), chat)
        if message.get("forwarded_from") is not None:
            chat.dropped["forwarded"] += 1
            continue
        if any(key in message for key in _MEDIA_KEYS):
            chat.dropped["media"] += 1
            if not text.strip():
                continue
        chat.add(author, text, when, line or 0)
    return chat


def _when(path: Path, line: int | None, value: Any) -> datetime:
    if not isinstance(value, str):
        raise ChatImportError(path, line, "the message has no 'date'.")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ChatImportError(
            path, line, f"'date' {value!r} is not an ISO date and time."
        ) from None
