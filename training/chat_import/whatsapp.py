"""WhatsApp's "Export chat" text file (Android and iPhone, any locale we have seen).

Every message starts with a header line, in one of two shapes:

* Android: ``12/31/23, 9:15 PM - Name: text`` or ``31.12.23, 21:15 - Name: text``
* iPhone: ``[31.12.23, 21:15:03] Name: text`` or ``[12/31/23, 9:15:03 PM] Name: text``

The date's order (day-month-year, month-day-year or year-month-day) and its separator depend
on the phone's locale, and the export does not say which; it is worked out from the whole
file (a first number above 12 can only be a day, and so on). When every date in the file is
ambiguous (all numbers up to 12), month first is assumed for files with a 12-hour clock (the
US style) and day first otherwise: the dates only decide where one conversation ends and the
next begins, so a wrong guess there never changes a message.

Lines without a header continue the message above (multi-line messages). Header lines
without ``Name:`` are the app's own (system) lines. A line that starts with a date and time
but is not a well-formed header is an error, never a silent guess: it names the file and
line so the person can look at it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from training.chat_import.records import ChatImportError, ParsedChat, strip_controls

_DATE = r"(?P<date>\d{1,4}[./-]\s?\d{1,2}[./-]\s?\d{1,4})\.?"
_TIME = (
    r"(?P<time>\d{1,2}[:.]\d{2}(?:[:.]\d{2})?)"
    r"(?:[\s\u202f\u00a0]*(?P<ampm>[aApP]\.?[\s\u202f\u00a0]?[mM]\.?))?"
)
_BRACKETED = re.compile(rf"^\[{_DATE},?\s+{_TIME}\]\s?(?P<rest>.*)$")
_DASHED = re.compile(rf"^{_DATE},?\s+{_TIME}\s+[-\u2013\u2014]\s(?P<rest>.*)$")
_LOOKS_LIKE_HEADER = re.compile(
    r"^\[?\d{1,4}[./-]\s?\d{1,2}[./-]\s?\d{1,4}\.?,?\s+\d{1,2}[:.]\d{2}"
)

_MEDIA = re.compile(
    r"^(?:<[^<>]*(?:omitted|ausgeschlossen|omitido|omis|omessi|weggelaten)[^<>]*>"
    r"|<attached: [^<>]+>"
    r"|(?:image|video|audio|sticker|GIF|document|Contact card|video note) omitted"
    r"|.+ \(file attached\)"
    r"|null)$",
    re.IGNORECASE,
)
_DELETED = re.compile(
    r"^(?:This message was deleted\.?|You deleted this message\.?|"
    r"Diese Nachricht wurde gelöscht\.?)$",
    re.IGNORECASE,
)
_SYSTEM_TEXT = re.compile(
    r"^(?:Messages and calls are end-to-end encrypted|Messages to this (?:group|chat) are now"
    r"|Missed (?:voice|video|group) call|Your security code with|Waiting for this message"
    r"|.{0,80} turned (?:on|off) disappearing messages)",
    re.IGNORECASE,
)
_SYSTEM_AUTHOR = re.compile(
    r" (?:changed (?:the subject|this group's|the group|their phone)|created group|"
    r"added|removed|left|joined using|pinned a message|deleted this group's)",
    re.IGNORECASE,
)
"""What an app line looks like when its own text contains ``: ``, e.g. a subject change
``Alice changed the subject from "a" to "b: c"``: never a person's name."""

_LRM = "\u200e"


@dataclass(frozen=True, slots=True)
class _Header:
    line: int
    date: tuple[str, str, str]
    time: str
    ampm: str | None
    rest: str


def _header(text: str, number: int) -> _Header | None:
    match = _BRACKETED.match(text) or _DASHED.match(text)
    if match is None:
        return None
    parts = re.split(r"[./-]\s?", match["date"].strip())
    if len(parts) != 3:
        return None
    ampm = match["ampm"]
    if ampm is not None:
        ampm = re.sub(r"[^apm]", "", ampm.lower())  # "p. m." -> "pm"
    return _Header(number, (parts[0], parts[1], parts[2]), match["time"], ampm, match["rest"])


def _date_order(path: Path, headers: list[_Header]) -> str:
    """``ymd``, ``dmy`` or ``mdy`` for the whole file (see the module docstring)."""
    if all(len(h.date[0]) == 4 for h in headers):
        return "ymd"
    day_first = month_first = True
    first_day_line = first_month_line = 0
    for header in headers:
        a, b = int(header.date[0]), int(header.date[1])
        if len(header.date[0]) == 4:
            raise ChatImportError(
                path, header.line, "this date puts the year first but others in the file do not."
            )
        if (a > 12 and b > 12) or a == 0 or b == 0:
            raise ChatImportError(
                path, header.line, f"{'/'.join(header.date)} is not a date (no month in it)."
            )
        if a > 12 and month_first:
            month_first, first_day_line = False, header.line
        if b > 12 and day_first:
            day_first, first_month_line = False, header.line
    if not day_first and not month_first:
        raise ChatImportError(
            path,
            max(first_day_line, first_month_line),
            f"the dates mix day-first (line {first_day_line}) and month-first (line "
            f"{first_month_line}) orders; a WhatsApp export uses one.",
        )
    if day_first and month_first:  # every date ambiguous
        return "mdy" if any(h.ampm for h in headers) else "dmy"
    return "dmy" if day_first else "mdy"


def _timestamp(path: Path, header: _Header, order: str) -> datetime:
    parts = dict(zip(order, (int(p) for p in header.date), strict=True))
    year = parts["y"] + 2000 if parts["y"] < 100 else parts["y"]
    clock = [int(p) for p in re.split(r"[:.]", header.time)]
    hour, minute, second = clock[0], clock[1], clock[2] if len(clock) > 2 else 0
    if header.ampm is not None:
        if not 1 <= hour <= 12:
            raise ChatImportError(
                path, header.line, f"{header.time} is not a time on a 12-hour clock."
            )
        hour = hour % 12 + (12 if header.ampm == "pm" else 0)
    try:
        return datetime(year, parts["m"], parts["d"], hour, minute, second)
    except ValueError as exc:
        shown = "/".join(header.date)
        raise ChatImportError(
            path, header.line, f"the date and time {shown} {header.time} are not valid ({exc})."
        ) from None


def _is_media(text: str) -> bool:
    return bool(_MEDIA.match(text.strip()))


def parse_whatsapp(path: Path, text: str) -> ParsedChat:
    """Messages of a WhatsApp export whose content is ``text``."""
    chat = ParsedChat(path=path, format="whatsapp")
    lines = text.splitlines()
    headers: list[_Header] = []
    owner: list[int] = []  # for each line: index of the header it belongs to
    for number, raw in enumerate(lines, start=1):
        line = strip_controls(raw)
        header = _header(line, number)
        if header is not None:
            headers.append(header)
        elif _LOOKS_LIKE_HEADER.match(line):
            raise ChatImportError(
                path,
                number,
                "starts with a date and time but is not a WhatsApp message line (expected "
                "'DATE, TIME - NAME: TEXT' or '[DATE, TIME] NAME: TEXT').",
            )
        elif not headers and line.strip():
            raise ChatImportError(
                path,
                number,
                "does not start with a date and time; a WhatsApp export begins with a message "
                "line such as '31/12/2023, 21:15 - Name: text'. Is this a WhatsApp .txt export?",
            )
        owner.append(len(headers) - 1)
    if not headers:
        raise ChatImportError(path, None, "holds no WhatsApp message lines.")
    order = _date_order(path, headers)
    bodies: list[list[str]] = [[] for _ in headers]
    for raw, index in zip(lines, owner, strict=True):
        if index >= 0:
            bodies[index].append(raw)
    for header, body in zip(headers, bodies, strict=True):
        when = _timestamp(path, header, order)
        # The header line's own text (after the prefix), then continuation lines as they are.
        first, *more = body
        _message(chat, header, when, "\n".join([header.rest, *more]), first)
    return chat


def _message(chat: ParsedChat, header: _Header, when: datetime, rest: str, raw: str) -> None:
    author, separator, body = rest.partition(": ")
    # iPhone exports mark the app's own text and attachments with a left-to-right mark.
    marked = raw.partition(": ")[2].lstrip().startswith(_LRM) if separator else False
    author = author.strip()
    if not separator or not author or _SYSTEM_AUTHOR.search(author):
        chat.dropped["system"] += 1
        return
    body = strip_controls(body)
    first_line = body.strip().splitlines()[0] if body.strip() else ""
    if _is_media(first_line):
        chat.dropped["media"] += 1
        body = "\n".join(body.strip().splitlines()[1:])  # a caption may follow
        if not body.strip():
            return
    elif _DELETED.match(body.strip()):
        chat.dropped["deleted"] += 1
        return
    elif marked or _SYSTEM_TEXT.match(first_line):
        chat.dropped["system"] += 1
        return
    chat.add(author, body, when, header.line)
