"""Model output to Telegram HTML that Telegram can always parse.

Models write Markdown-ish text full of characters that are markup to Telegram (``*``, ``_``,
``[``, backticks, ``<``, ``&``). MarkdownV2 would need every one of them escaped and breaks
on the first miss, so replies go out as HTML, where only ``<``, ``>`` and ``&`` need escaping
and :func:`html.escape` covers them all. On top of the escaped text, only constructs that are
unambiguous become formatting: fenced code blocks, inline code and ``**bold**``. Single
``*`` and ``_`` stay literal, because in model output they are as often ``*args`` or
``snake_case`` as emphasis.

Telegram turns an ``@username`` in a sent text into a mention that notifies that user, and
unlike Discord it has no ``allowed_mentions`` to switch that off. A public bot must not let
user text or model output ping people, so every outgoing text goes through
:func:`neutralise_mentions`, which keeps the text as it reads but no longer a mention.
"""

from __future__ import annotations

import re
from html import escape, unescape

from bots.conversation.chunking import find_code_blocks

__all__ = ["WORD_JOINER", "neutralise_mentions", "sent_len", "to_html", "utf16_len"]

WORD_JOINER = "\u2060"
"""Invisible and zero-width; after an ``@`` it ends what Telegram would read as a username."""

# Inline code is one run of backticks around text on one line; bold is ** around text that
# starts and ends with a non-space, like Markdown's own rule.
_INLINE = re.compile(
    r"(?<!`)`(?P<code>[^`\n]+)`(?!`)"
    r"|\*\*(?P<bold>(?=\S)[^*\n]*?\S)\*\*"
)
# What Telegram may read as a mention, and more (see neutralise_mentions): an @ at a word
# start and the username characters after it, ASCII only as usernames are.
_MENTION = re.compile(r"(?<![A-Za-z0-9_])@[A-Za-z0-9_]+")
# to_html's output, token by token: a tag, a character reference, or one character.
_HTML_TOKEN = re.compile(r"<(/?)([A-Za-z-]+)[^>]*>|&#?[A-Za-z0-9]+;|.", re.DOTALL)
_CODE_TAGS = frozenset({"code", "pre"})


def utf16_len(text: str) -> int:
    """Telegram measures message length in UTF-16 code units (an emoji counts twice)."""
    return len(text.encode("utf-16-le")) // 2


def sent_len(text: str) -> int:
    """Telegram's length of ``text`` once sent, at most: :func:`neutralise_mentions` adds
    one character per ``@``, and a message cut to Telegram's limit must still fit after it.
    (HTML markup only ever makes the visible text shorter.)"""
    return utf16_len(text) + text.count("@")


def neutralise_mentions(text: str, *, html: bool = False) -> str:
    """``text`` with a :data:`WORD_JOINER` after every ``@`` that Telegram could make a
    mention of, so it reads the same but notifies nobody.

    Telegram's server links ``@name`` where no letter, digit or ``_`` comes before the ``@``
    and 4-32 of ``[A-Za-z0-9_]`` (or one of a few short names such as ``gif``) follow it, up
    to a character that is none of these (tdlib's ``find_mentions``). Neutralised here is a
    superset, so that safety depends on no Unicode table and on no list of names: every
    ``@`` that no ASCII letter, digit or ``_`` precedes and one of them follows. An e-mail
    address (``bob@example.com``) is no mention and stays as it is.

    With ``html``, ``text`` is :func:`to_html`'s output: the rule is applied to the text a
    reader sees (tags and character references resolved, so ``@<b>name</b>`` counts), and
    the joiner goes into the HTML after the ``@`` without touching tags or references. A
    mention wholly inside ``<code>``/``<pre>`` is left alone: Telegram never links in code,
    and a joiner there would break code copied out of the chat (``@decorator``). Plain text
    (``html`` false) has no code entities, so every ``@`` in it counts, code fences or not.
    """
    if "@" not in text:
        return text
    shown, ends, code = _as_read(text) if html else (text, None, None)
    pieces: list[str] = []
    position = 0
    for mention in _MENTION.finditer(shown):
        at = mention.start()
        if code is not None and all(code[at : mention.end()]):
            continue
        cut = at + 1 if ends is None else ends[at]
        pieces += [text[position:cut], WORD_JOINER]
        position = cut
    pieces.append(text[position:])
    return "".join(pieces)


def _as_read(html: str) -> tuple[str, list[int], list[bool]]:
    """The text a reader sees in ``html``; for each of its characters, the index in ``html``
    just after where it comes from, and whether it shows as code."""
    shown: list[str] = []
    ends: list[int] = []
    code: list[bool] = []
    depth = 0
    for token in _HTML_TOKEN.finditer(html):
        if token.group(2) is not None:
            if token.group(2).lower() in _CODE_TAGS:
                depth += -1 if token.group(1) else 1
            continue
        for char in unescape(token.group()):
            shown.append(char)
            ends.append(token.end())
            code.append(depth > 0)
    return "".join(shown), ends, code


def to_html(text: str) -> str:
    """Escape ``text`` for ``parse_mode=HTML``, turning code and bold into formatting."""
    parts: list[str] = []
    position = 0
    for block in find_code_blocks(text):
        parts.append(_inline(text[position : block.start]))
        body = escape(text[block.body_start : block.body_end].removesuffix("\n"), quote=False)
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
        parts.append(escape(text[position : match.start()], quote=False))
        if match.group("code") is not None:
            parts.append(f"<code>{escape(match.group('code'), quote=False)}</code>")
        else:
            parts.append(f"<b>{escape(match.group('bold'), quote=False)}</b>")
        position = match.end()
    parts.append(escape(text[position:], quote=False))
    return "".join(parts)
