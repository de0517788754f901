"""What every chat-export parser produces: messages, and counts of what was left out.

Why one shape: the WhatsApp, Telegram and Discord parsers differ only in how they read their
files. Cleaning (links out, media markers out) and the decisions about what is skipped with a
count rather than refused with an error are the same for all three, so they live here.

What is skipped (with a count, never an error), because every real export has it:

* ``system``: lines the app writes itself (encryption notices, joins, renames, pins, calls);
* ``media``: photos, videos, stickers, voice notes, files ("<Media omitted>", "image
  omitted", attachments), while any caption text is kept;
* ``links``: URLs are cut out of the text; a message that was only a link disappears;
* ``deleted``: "This message was deleted" placeholders;
* ``forwarded``: forwarded messages (Telegram), which are someone else's words;
* ``empty``: messages with no text left.

Anything that does not fit the format (a header with an impossible date, a record without an
author, a JSON value of the wrong type) is a :class:`ChatImportError` naming the file and line.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from training.dailydialog import DatasetError

DROP_REASONS: tuple[str, ...] = ("system", "media", "links", "deleted", "forwarded", "empty")
"""Keys of :attr:`ParsedChat.dropped`, in the order the summary prints them."""


class ChatImportError(DatasetError):
    """A chat export cannot be read as the format it claims; the message names file and line."""

    def __init__(self, path: Path | str, line: int | None, problem: str) -> None:
        where = f"{path}, line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")
        self.path = Path(path)
        self.line = line


@dataclass(frozen=True, slots=True)
class ChatLine:
    """One message of an export: who wrote it, its cleaned text, when, and where in the file."""

    author: str
    text: str
    time: datetime | None
    line: int


@dataclass
class ParsedChat:
    """A whole export: its messages in order and how many of each kind were dropped."""

    path: Path
    format: str
    messages: list[ChatLine] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)

    def speakers(self) -> list[str]:
        """Everyone who wrote a kept message, sorted case-insensitively."""
        return sorted({m.author for m in self.messages}, key=str.casefold)

    def add(self, author: str, text: str, time: datetime | None, line: int) -> None:
        """Keep a message after cleaning; count it as links/empty when nothing is left."""
        had_link = bool(URL.search(text))
        cleaned = clean_text(text, self.dropped)
        if not cleaned:
            if not had_link:  # a link-only message is already counted under links
                self.dropped["empty"] += 1
            return
        self.messages.append(ChatLine(author=author, text=cleaned, time=time, line=line))


URL = re.compile(
    r"(?:\b(?:https?|ftp)://|\bwww\.)[^\s<>\"]+|\b[\w.+-]+@[\w-]+\.[\w.-]+\b", re.IGNORECASE
)
"""Web links and e-mail addresses: personal data and nothing a voice is learned from."""

_CONTROL = re.compile("[\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
"""Direction marks and zero-width characters the apps insert around names and markers."""

EDITED = re.compile(r"\s*<(?:This message was edited|Diese Nachricht wurde bearbeitet)>\s*$")


def strip_controls(text: str) -> str:
    return _CONTROL.sub("", text)


def clean_text(text: str, dropped: Counter[str]) -> str:
    """The message text without links, control marks, edit markers and trailing blanks.

    Each removed link is counted in ``dropped["links"]``.
    """
    text = EDITED.sub("", strip_controls(text))
    text, links = URL.subn("", text)
    dropped["links"] += links
    lines = [re.sub(r"[ \t]{2,}", " ", line).strip() for line in text.splitlines()]
    return "\n".join(line for line in lines if line).strip()
