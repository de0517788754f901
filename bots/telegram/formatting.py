"""Model output to Telegram HTML that Telegram can always parse.

Models write Markdown-ish text full of characters that are markup to Telegram (``*``, ``_``,
``[``, backticks, ``<``, ``&``). MarkdownV2 would need every one of them escaped and breaks
on the first miss, so replies go out as HTML, where only ``<``, ``>`` and ``&`` need escaping
and :func:`html.escape` covers them all. On top of the escaped text, only constructs that are
unambiguous become formatting: fenced code blocks, inline code and ``**bold**``. Single
``*`` and ``_`` stay literal, because in model output they are as often ``*args`` or
``snake_case`` as emphasis.
"""

from __future__ import annotations

import html
import re

from core.chunking import find_code_blocks

__all__ = ["to_html", "utf16_len"]

# Inline code is one run of backticks around text on one line; bold is ** around text that
# starts and ends with a non-space, like Markdown's own rule.
_INLINE = re.compile(
    r"(?<!`)`(?P<code>[^`\n]+)`(?!`)"
    r"|\*\*(?P<bold>(?=\S)[^*\n]*?\S)\*\*"
)


def utf16_len(text: str) -> int:
    """Telegram measures message length in UTF-16 code units (an emoji counts twice)."""
    return len(text.encode("utf-16-le")) // 2


def to_html(text: str) -> str:
    """Escape ``text`` for ``parse_mode=HTML``, turning code and bold into formatting."""
    parts: list[str] = []
    position = 0
    for block in find_code_blocks(text):
        parts.append(_inline(text[position : block.start]))
        body = html.escape(text[block.body_start : block.body_end].removesuffix("\n"), quote=False)
        if block.language:
            parts.append(f'<pre><code class="language-{block.language}">{body}</code></pre>')
        else:
            parts.append(f"<pre>{body}</pre>")
        position = block.end
        if block.end > block.body_end and text[block.end - 1] == "\n":
            parts.append("\n")  # the line break after the closing fence is the text's own
    parts.append(_inline(text[position:]))
    return "".join(parts)


def _inline(text: str) -> str:
    parts: list[str] = []
    position = 0
    for match in _INLINE.finditer(text):
        parts.append(html.escape(text[position : match.start()], quote=False))
        if match.group("code") is not None:
            parts.append(f"<code>{html.escape(match.group('code'), quote=False)}</code>")
        else:
            parts.append(f"<b>{html.escape(match.group('bold'), quote=False)}</b>")
        position = match.end()
    parts.append(html.escape(text[position:], quote=False))
    return "".join(parts)
