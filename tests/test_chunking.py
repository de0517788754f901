"""Splitting long replies for chat platforms (bots/conversation/chunking.py)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bots.conversation.chunking import MIN_LIMIT, find_code_blocks, split_message

FENCE_LINE = re.compile(r"^\s*`{3,}[^`\n]*$", re.MULTILINE)


def utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def content(text: str) -> str:
    """What must survive splitting: everything but whitespace and fence lines."""
    return "".join(FENCE_LINE.sub("", text).split())


def test_short_text_is_one_message_and_is_stripped() -> None:
    assert split_message("  Hello there.  \n", 100) == ["Hello there."]
    assert split_message("   \n ", 100) == []


def test_splits_at_a_paragraph_before_a_line_or_sentence() -> None:
    first = "First paragraph, sentence one. Sentence two.\nA second line here."
    second = "Second paragraph. " * 3
    chunks = split_message(f"{first}\n\n{second}", 80)
    assert chunks[0] == first
    assert chunks[1].startswith("Second paragraph.")


def test_splits_at_a_sentence_end_rather_than_inside_one() -> None:
    text = " ".join(f"Sentence {i} goes here." for i in range(40))
    chunks = split_message(text, 100)
    assert all(len(c) <= 100 for c in chunks)
    assert all(c.endswith(".") for c in chunks)
    assert " ".join(chunks) == text


def test_a_tiny_first_paragraph_does_not_waste_a_message() -> None:
    text = "Hi.\n\n" + "word " * 60
    chunks = split_message(text, 100)
    assert len(chunks[0]) > 50  # the paragraph break after "Hi." is too early to use


def test_a_word_longer_than_the_limit_is_cut_hard() -> None:
    text = "x" * 250
    chunks = split_message(text, 100)
    assert "".join(chunks) == text and all(len(c) <= 100 for c in chunks)


def test_a_code_block_that_fits_is_moved_whole_to_the_next_message() -> None:
    prose = "Here is how you do it, step by step, with an explanation first. " * 2
    code = "```python\n" + "\n".join(f"print({i})" for i in range(8)) + "\n```"
    chunks = split_message(f"{prose.strip()}\n{code}\nThat's all.", 160)
    assert chunks[0] == prose.strip()
    assert chunks[1].startswith("```python\nprint(0)")
    assert all(len(find_code_blocks(c)) == c.count("```") // 2 for c in chunks)


def test_a_long_code_block_is_closed_and_reopened_with_its_language() -> None:
    code = "```js\n" + "\n".join(f"console.log({i});" for i in range(60)) + "\n```"
    chunks = split_message(f"Code:\n{code}\nDone.", 200)
    assert len(chunks) > 3
    for chunk in chunks:
        assert len(chunk) <= 200
        blocks = find_code_blocks(chunk)
        assert blocks and all(b.closed and b.language == "js" for b in blocks)
    assert chunks[-1].endswith("```\nDone.")
    assert content("\n".join(chunks)) == content(f"Code:\n{code}\nDone.")
    lines = [line for c in chunks for line in c.splitlines() if line.startswith("console")]
    assert lines == [f"console.log({i});" for i in range(60)]  # no line is cut in two


def test_length_is_measured_with_the_given_function() -> None:
    text = "😀 " * 100  # 200 characters, 300 UTF-16 units
    assert len(split_message(text, 250)) == 1
    chunks = split_message(text, 250, length=utf16)
    assert len(chunks) == 2 and all(utf16(c) <= 250 for c in chunks)


def test_an_unclosed_code_block_runs_to_the_end() -> None:
    (block,) = find_code_blocks("intro\n```py\nx = 1\n")
    assert (
        not block.closed
        and block.language == "py"
        and block.body_end == len("intro\n```py\nx = 1\n")
    )


def test_limits_below_the_minimum_are_refused() -> None:
    with pytest.raises(ValueError, match=str(MIN_LIMIT)):
        split_message("text", MIN_LIMIT - 1)


pieces = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=300),
    st.sampled_from(["\n\n", "\n", ". ", "! ", " ", "```\n", "```py\n", "\n```\n", "😀", "*_[`"]),
    st.builds(
        lambda lang, body: f"\n```{lang}\n{body}\n```\n",
        st.sampled_from(["", "python", "c++"]),
        st.text(st.characters(codec="utf-8", exclude_characters="`"), max_size=400),
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(pieces, max_size=30), st.integers(MIN_LIMIT, 600), st.booleans())
def test_every_chunk_fits_and_nothing_is_lost(parts: list[str], limit: int, wide: bool) -> None:
    text = "".join(parts)
    measure = utf16 if wide else len
    chunks = split_message(text, limit, length=measure)
    assert all(chunk.strip() for chunk in chunks)
    assert all(measure(chunk) <= limit for chunk in chunks)
    assert content("\n".join(chunks)) == content(text)


prose = st.text(st.characters(codec="utf-8", exclude_characters="`"), min_size=1, max_size=200)
closed_block = st.builds(
    lambda lang, body: f"\n```{lang}\n{body}\n```\n",
    st.sampled_from(["", "python", "c++"]),
    st.text(st.characters(codec="utf-8", exclude_characters="`"), max_size=500),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(prose, closed_block), max_size=20), st.integers(MIN_LIMIT, 400))
def test_every_chunk_renders_its_code_as_code(parts: list[str], limit: int) -> None:
    for chunk in split_message("".join(parts), limit):
        assert all(block.closed for block in find_code_blocks(chunk)), chunk
