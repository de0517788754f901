"""JSON whose objects know the line they start on, for error messages about export files.

Why: Telegram and Discord exports are one big JSON document, and "message 4127 is malformed"
is useless to someone opening it in an editor; "line 52 311" is not. The standard library's
pure-Python scanner accepts a replacement for its object parser, which is told where each
object starts; that is all this needs. It is slower than the C scanner, but reading even a
large export this way costs nothing next to training.
"""

from __future__ import annotations

import bisect
import json
import json.decoder
import json.scanner
from typing import Any


class Located(dict[str, Any]):
    """A JSON object and the 1-based line its opening brace is on."""

    line: int = 0


def loads_located(text: str) -> Any:
    """``json.loads`` whose objects are :class:`Located`; raises ``json.JSONDecodeError``."""
    newlines = [i for i, char in enumerate(text) if char == "\n"]
    decoder = json.JSONDecoder()

    def parse_object(
        s_and_end: tuple[str, int],
        strict: bool,
        scan_once: Any,
        object_hook: Any,
        object_pairs_hook: Any,
        memo: Any = None,
    ) -> tuple[Located, int]:
        start = s_and_end[1] - 1  # the scanner passes the position after "{"
        obj, end = json.decoder.JSONObject(  # type: ignore[attr-defined]
            s_and_end, strict, scan_once, object_hook, object_pairs_hook, memo
        )
        located = Located(obj)
        located.line = bisect.bisect_left(newlines, start) + 1
        return located, end

    decoder.parse_object = parse_object  # type: ignore[attr-defined]
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    return decoder.decode(text)


def line_of(value: object, fallback: int | None = None) -> int | None:
    """The line a parsed object starts on, when it is one."""
    return value.line if isinstance(value, Located) else fallback
