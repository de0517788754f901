"""Telegram text rendering (bots/telegram/formatting.py), checked against the same HTML
rules the fake Bot API server enforces."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bots.telegram.formatting import to_html, utf16_len
from tests.fake_telegram import parse_html


def test_markup_characters_are_escaped_and_code_and_bold_rendered() -> None:
    html = to_html("a < b && c > d, `x<y`, **bold <i>**, *star_ [link](u)")
    assert html == (
        "a &lt; b &amp;&amp; c &gt; d, <code>x&lt;y</code>, <b>bold &lt;i&gt;</b>, *star_ [link](u)"
    )


def test_fenced_code_becomes_pre_with_its_language() -> None:
    html = to_html("Look:\n```python\nif a < b:\n    pass\n```\nDone.")
    assert html == (
        'Look:\n<pre><code class="language-python">if a &lt; b:\n    pass</code></pre>\nDone.'
    )
    assert to_html("```\nplain\n```") == "<pre>plain</pre>"
    assert (
        to_html("cut off:\n```js\nlet x")
        == 'cut off:\n<pre><code class="language-js">let x</code></pre>'
    )


def test_ambiguous_markers_stay_literal() -> None:
    for text in ["**", "** spaced **", "``double``", "`", "a ` b", "****", "2 * 3 * 4"]:
        visible, entities = parse_html(to_html(text))
        assert visible == text and entities == []


def test_utf16_length_counts_astral_characters_twice() -> None:
    assert utf16_len("abc") == 3
    assert utf16_len("😀") == 2 and utf16_len("é") == 1


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(max_size=40),
            st.sampled_from(["*", "**", "_", "`", "```", "```py\n", "\n", "<", ">", "&", "[", "]"]),
        ),
        max_size=40,
    )
)
def test_whatever_the_model_writes_telegram_can_parse(parts: list[str]) -> None:
    text = "".join(parts)
    visible, _ = parse_html(to_html(text))  # raises like Telegram on invalid HTML
    assert len(visible) <= len(text)
