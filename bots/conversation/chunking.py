"""Splitting a long reply into messages that fit a chat platform's size limit.

Telegram refuses messages over 4,096 characters and Discord over 2,000, while a long-form
persona can write more. Cutting at the limit would split words, sentences and code, so a
reply is cut at the most natural boundary that still fills a reasonable share of a message:
a paragraph break, else a line break, else the end of a sentence, else a space, and only
as a last resort in the middle of a word. Fenced code blocks (```) are kept whole when they
fit; a block too long for one message is closed at a line break and reopened, with its
language, at the top of the next one, so every message renders its code as code.

The code-block parser is public because renderers (e.g. the Telegram formatter) must agree
with the splitter about what is code.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["MIN_LIMIT", "CodeBlock", "find_code_blocks", "split_message"]

#: Below this a message cannot hold a reopened code fence plus some content.
MIN_LIMIT = 64

# CommonMark-style fence lines: up to three spaces of indentation, three or more backticks,
# an optional info string (the language) that contains no backtick.
_FENCE_LINE = re.compile(r"^ {0,3}(`{3,})([^`\n]*)$", re.MULTILINE)
_LANGUAGE = re.compile(r"[A-Za-z0-9_+#.-]{1,20}")
_SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]]*(?=\s)")
_SPACES = re.compile(r"\s+")
_CLOSE = "\n```"


@dataclass(frozen=True, slots=True)
class CodeBlock:
    """A fenced code block as offsets into the text it was found in.

    ``start``/``end`` span the whole block including both fence lines (``end`` is after the
    closing fence's line break, if any); ``body_start``/``body_end`` span the code itself.
    An unclosed block (a reply cut off by its token budget) runs to the end of the text.
    """

    start: int
    body_start: int
    body_end: int
    end: int
    language: str
    closed: bool

    def opener(self) -> str:
        """The fence line that reopens this block in a following message."""
        return f"```{self.language}\n"


def find_code_blocks(text: str) -> list[CodeBlock]:
    """Fenced code blocks in ``text``, in order."""
    blocks: list[CodeBlock] = []
    opening: re.Match[str] | None = None
    for fence in _FENCE_LINE.finditer(text):
        if opening is None:
            opening = fence
            continue
        # A closing fence is at least as long as the opening one and has no info string.
        if len(fence.group(1)) >= len(opening.group(1)) and not fence.group(2).strip():
            blocks.append(_block(text, opening, fence.start(), _line_end(text, fence.end())))
            opening = None
    if opening is not None:
        blocks.append(_block(text, opening, len(text), len(text), closed=False))
    return blocks


def _block(
    text: str, opening: re.Match[str], body_end: int, end: int, *, closed: bool = True
) -> CodeBlock:
    info = opening.group(2).strip().split(" ")[0] if opening.group(2).strip() else ""
    language = info if _LANGUAGE.fullmatch(info) else ""
    body_start = min(_line_end(text, opening.end()), body_end)
    return CodeBlock(opening.start(), body_start, body_end, end, language, closed)


def _line_end(text: str, index: int) -> int:
    """The index just after the line break at ``index``, if there is one."""
    return index + 1 if text.startswith("\n", index) else index


def split_message(text: str, limit: int, *, length: Callable[[str], int] = len) -> list[str]:
    """Cut ``text`` into non-empty pieces of at most ``limit`` as measured by ``length``.

    ``length`` lets a platform count the way it does (Telegram counts UTF-16 code units); it
    must never shrink when text is appended. Whitespace at the cuts is dropped; everything
    else is kept, plus the fences that close and reopen a code block cut in two.
    """
    if limit < MIN_LIMIT:
        raise ValueError(f"limit must be at least {MIN_LIMIT}, got {limit}")
    chunks: list[str] = []
    rest = text.strip()
    while rest:
        if length(rest) <= limit:
            chunks.append(rest)
            break
        chunk, remainder = _take_chunk(rest, limit, length)
        if len(remainder) >= len(rest) or not chunk:
            # Safety net: whatever the structure, always make progress with a hard cut.
            end = max(1, _fit(rest, limit, length))
            chunk, remainder = rest[:end], rest[end:]
        if chunk.strip():
            chunks.append(chunk)
        rest = remainder.lstrip() if not remainder.startswith("```") else remainder
    return chunks


def _take_chunk(text: str, limit: int, length: Callable[[str], int]) -> tuple[str, str]:
    """The first message's text and what is left for the next ones."""
    blocks = find_code_blocks(text)
    # Room for the fence that closes a code block cut in two is always kept back; a few
    # characters of a 2,000-4,096 limit are a fair price for never overflowing.
    end = _fit(text, limit - len(_CLOSE), length)
    cut = _best_cut(text, end, blocks)
    block = next((b for b in blocks if b.start < cut < b.end), None)
    if block is None:
        return text[:cut].rstrip(), text[cut:]
    if cut <= block.body_start:
        # Only a hard cut lands in the opening fence line: the line itself does not fit.
        return text[: block.start].rstrip(), text[block.start :]
    if cut >= block.body_end:
        # The cut falls in the closing fence line: keep the whole block in this message.
        return text[: block.body_end].rstrip("\n") + _CLOSE, text[block.end :]
    return text[:cut].rstrip("\n") + _CLOSE, block.opener() + text[cut:]


def _fit(text: str, budget: int, length: Callable[[str], int]) -> int:
    """The largest ``i`` with ``length(text[:i]) <= budget``."""
    if length is len:
        return min(len(text), budget)
    low, high = 0, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if length(text[:middle]) <= budget:
            low = middle
        else:
            high = middle - 1
    return low


def _best_cut(text: str, end: int, blocks: list[CodeBlock]) -> int:
    """Where to end the first message: the best kind of boundary in its second half.

    A boundary in the first half would waste most of a message, so a worse kind of boundary
    later on wins over it; with no boundary at all, the cut is hard, at ``end``.
    """

    def in_code(index: int) -> bool:
        return any(b.body_start <= index < b.body_end for b in blocks)

    window = text[:end]
    paragraphs = [m.end() for m in re.finditer(r"\n[ \t]*\n", window) if not in_code(m.start())]
    paragraphs += [b.start for b in blocks if 0 < b.start <= end]
    paragraphs += [b.end for b in blocks if b.closed and b.end <= end]
    lines = [m.end() for m in re.finditer(r"\n", window)]
    sentences = [m.end() for m in _SENTENCE_END.finditer(window) if not in_code(m.start())]
    words = [m.end() for m in _SPACES.finditer(window) if not in_code(m.start())]

    def usable(index: int) -> bool:
        # Never inside a fence line: that would leave a fence in pieces.
        return 0 < index <= end and not any(
            b.start < index <= b.body_start or b.body_end < index < b.end for b in blocks
        )

    candidates = [[i for i in kind if usable(i)] for kind in (paragraphs, lines, sentences, words)]
    for kind in candidates:
        if kind and max(kind) >= end // 2:
            return max(kind)
    anywhere = [i for kind in candidates for i in kind if text[:i].strip()]
    return max(anywhere) if anywhere else end
