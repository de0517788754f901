"""Telegram text rendering (bots/telegram/formatting.py), checked against the same HTML
rules the fake Bot API server enforces, and the neutralising of @mentions: on the rendering
alone and, end to end, through the frontend's PTB bot and the fake Bot API, which finds
mentions in what it is sent as Telegram's server does.

Mentions inside code (inline or fenced) are left as written in the HTML: Telegram never
links there, and an invisible joiner would break code copied out of the chat. The plain
text sent when Telegram cannot parse the HTML has no code, so there they are neutralised.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bots.telegram.formatting import (
    WORD_JOINER,
    neutralise_mentions,
    sent_len,
    to_html,
    utf16_len,
)
from bots.telegram.sending import edit_text, send_text
from tests.fake_telegram import BotAPIError, FakeBotAPI, parse_html, parse_text
from tests.support.telegram_helpers import ALICE, GROUP_ID

JSON = dict[str, Any]


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


# -- mentions -------------------------------------------------------------------------------


def as_shown(text: str, parse_mode: str | None) -> tuple[str, set[str]]:
    """What a reader of a sent ``text`` sees, and the kinds of its entities, as Telegram
    would make them (its own @mention detection included)."""
    visible, entities = parse_text(text, parse_mode)
    return visible, {entity["type"] for entity in entities}


def test_the_fake_finds_mentions_where_telegram_does() -> None:
    """Without this the tests below could not fail: Telegram's server links ``@name`` at a
    word start, 4-32 username characters (or a known short name), outside code and links."""
    for text in ["@someone hello", "hi @some_one2!", "(@abcd)", "@gif", "x\n@someone"]:
        assert "mention" in as_shown(text, None)[1], text
    assert "mention" in as_shown("<b>@someone</b> hi", "HTML")[1]
    for text in ["bob@example.com", "@abc", "@someoneé", "a@someone", "@" + "a" * 33]:
        assert "mention" not in as_shown(text, None)[1], text
    for html in ["<code>@someone</code>", "<pre>x @someone</pre>", '<a href="u">@someone</a>']:
        assert "mention" not in as_shown(html, "HTML")[1], html


@pytest.mark.parametrize(
    "text",
    [
        "@someone hello",
        "ask @some_one2, then @other_person.",
        "(@abcd) and @gif",
        "line\n@someone",
        "**@someone** and **hi @someone**",
        "@**someone** is bold",
        "a & @someone < b",
        "@someone's cat",
        "@2fast4you",
    ],
)
def test_a_mention_reads_the_same_but_is_no_mention(text: str) -> None:
    html = neutralise_mentions(to_html(text), html=True)
    visible, kinds = as_shown(html, "HTML")
    assert "mention" not in kinds
    assert visible.replace(WORD_JOINER, "") == parse_html(to_html(text))[0]
    plain = neutralise_mentions(text)
    visible, kinds = as_shown(plain, None)
    assert "mention" not in kinds and visible.replace(WORD_JOINER, "") == text
    assert neutralise_mentions(plain) == plain  # never neutralised twice
    assert neutralise_mentions(html, html=True) == html


def test_the_joiner_goes_right_after_the_at_sign() -> None:
    assert neutralise_mentions("@someone hello") == f"@{WORD_JOINER}someone hello"
    assert neutralise_mentions(to_html("@**someone**"), html=True) == (
        f"@{WORD_JOINER}<b>someone</b>"
    )
    assert neutralise_mentions("a &amp; @bob", html=True) == f"a &amp; @{WORD_JOINER}bob"


def test_email_addresses_are_left_as_written() -> None:
    text = "Mail bob@example.com or first.last+tag@mail.example.org, not @ alone."
    assert neutralise_mentions(text) == text
    assert neutralise_mentions(to_html(text), html=True) == to_html(text)


def test_mentions_in_code_are_left_alone_in_html_and_neutralised_in_plain_text() -> None:
    text = "Use `@property` here:\n```python\n@dataclass\nclass A:\n    pass\n```\nThanks @someone"
    html = neutralise_mentions(to_html(text), html=True)
    assert "<code>@property</code>" in html
    assert '<code class="language-python">@dataclass\n' in html  # copies out as valid code
    visible, kinds = as_shown(html, "HTML")
    assert "mention" not in kinds and visible.count(WORD_JOINER) == 1  # only @someone
    # A mention only partly in code is neutralised: Telegram would show "@someone".
    assert WORD_JOINER in neutralise_mentions(to_html("@`someone`"), html=True)
    # As plain text (Telegram could not parse the HTML) nothing is code: all are neutralised.
    plain = neutralise_mentions(text)
    assert plain.count(f"@{WORD_JOINER}") == 3
    assert "mention" not in as_shown(plain, None)[1]


@pytest.mark.parametrize(
    "text",
    [
        '<a href="tg://user?id=501">Alice</a>',
        "<a href='tg://user?id=501'>Alice</a>",
        "[Alice](tg://user?id=501)",
        '[Alice](tg://user?id=501) <a href="https://evil.invalid">click</a>',
        "tg://user?id=501",
    ],
)
def test_user_text_never_becomes_a_link_or_a_mention_by_id(text: str) -> None:
    """``<a href="tg://user?id=N">`` would notify user N: to_html never makes a link."""
    assert as_shown('<a href="tg://user?id=501">Alice</a>', "HTML")[1] == {"text_mention"}
    html = neutralise_mentions(to_html(text), html=True)
    assert "<a" not in html
    visible, kinds = as_shown(html, "HTML")
    assert visible == text and not kinds


MENTION_FRAGMENTS = [
    *["@", "@someone", "@ab", "bob", "_", " ", "\n", "`", "```\n", "```py\n", "**", "<", "&"],
    *["&amp;", "é", WORD_JOINER, "<a href='tg://user?id=1'>x</a>"],
]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(max_size=20),
            st.sampled_from(MENTION_FRAGMENTS),
        ),
        max_size=30,
    )
)
def test_whatever_is_sent_mentions_nobody_and_reads_as_written(parts: list[str]) -> None:
    text = "".join(parts)
    before = parse_html(to_html(text))[0]
    for sent, parse_mode, reads in [
        (neutralise_mentions(to_html(text), html=True), "HTML", before),
        (neutralise_mentions(text), None, text),
    ]:
        try:
            visible, kinds = as_shown(sent, parse_mode)
        except BotAPIError:  # nothing visible: Telegram refuses it, nobody is mentioned
            assert not reads.strip()
            continue
        assert not kinds & {"mention", "text_mention", "text_link"}, (text, sent)
        assert visible.replace(WORD_JOINER, "") == reads.replace(WORD_JOINER, "")
        assert utf16_len(visible) <= sent_len(text)  # what split_reply measures


# -- end to end: the frontend's bot against the fake Bot API ----------------------------------

NAMING = "@someone hello! Ask @other_person, or mail bob@example.com. `@property` stays code."


def mentions(message: JSON) -> list[JSON]:
    return [e for e in message.get("entities", []) if e["type"] in {"mention", "text_mention"}]


async def test_a_reply_naming_someone_mentions_nobody(telegram_bot: Any, api: FakeBotAPI) -> None:
    api.send(FakeBotAPI.group_chat(GROUP_ID), ALICE, "Who should I ask?")
    (message,) = await send_text(telegram_bot, GROUP_ID, NAMING)
    (sent,) = api.sent_to(GROUP_ID)
    assert sent["parse_mode"] == "HTML" and not mentions(sent), sent
    assert sent["text"].replace(WORD_JOINER, "") == NAMING.replace("`", "")
    assert "bob@example.com" in sent["text"] and "@property" in sent["text"]
    shown = {
        (e["type"], sent["text"][e["offset"] : e["offset"] + e["length"]]) for e in sent["entities"]
    }
    assert shown == {("code", "@property")}  # untouched in code, which Telegram never links

    await edit_text(telegram_bot, GROUP_ID, message.message_id, "Now ask @third_person.")
    edited = api.edits[-1]
    assert edited["text"] == f"Now ask @{WORD_JOINER}third_person." and not mentions(edited)


async def test_the_plain_text_fallback_mentions_nobody(telegram_bot: Any, api: FakeBotAPI) -> None:
    api.send(FakeBotAPI.group_chat(GROUP_ID), ALICE, "Who should I ask?")
    api.fail_next("sendMessage", 400, "Bad Request: can't parse entities: something new")
    await send_text(telegram_bot, GROUP_ID, NAMING)
    (sent,) = api.sent_to(GROUP_ID)
    assert sent["parse_mode"] is None and not mentions(sent), sent
    assert sent["text"].replace(WORD_JOINER, "") == NAMING
