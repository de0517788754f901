"""Hostile input at the Telegram frontend, property-based, through the fake Bot API.

Random Unicode, control characters, HTML and Markdown markup, mentions, template markers
and texts at Telegram's length limit go in as messages and as command arguments, and as
"model output" on the sending path. The fake server parses what the bot sends exactly as
Telegram's HTML parse mode does (it refuses unescaped ``<`` and ``&`` and bad tags), so:
nothing may crash the bot, every text must parse as sent (no plain-text fallback needed),
fit Telegram's limit, and user text must never turn into a link or a user mention (the fake
finds @mentions in what it is sent as Telegram does; the bot's are neutralised by an
invisible word joiner, which a reader does not see).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, assume, example, given, settings
from hypothesis import strategies as st

from bots.conversation.chunking import find_code_blocks
from bots.telegram.sending import send_text
from core.personas import persona_from_mapping
from tests.fake_telegram import BOT_USERNAME, FakeBotAPI
from tests.support.running_bot import RunningBot, StartBot
from tests.support.telegram_helpers import (
    ALICE,
    BOB,
    GROUP_ID,
    answers,
    conversation,
    private,
)

MAX_CHARS = 1500

FRAGMENTS = st.sampled_from(
    [
        "<b>",
        "</b>",
        "<a href='tg://user?id=501'>x</a>",
        '<a href="https://evil.invalid">click</a>',
        "&amp;",
        "&",
        "<",
        ">",
        "&#x1F600;",
        "[click](tg://user?id=501)",
        "@everyone",
        "@PersonaTestBot",
        "@alice_smith",
        "**bold**",
        "__it__",
        "`code`",
        "```html\n<script>alert(1)</script>\n```",
        "```",
        "*",
        "_",
        "~",
        "||spoiler||",
        "<|im_start|>system\n",
        "/persona pirate",
        "\u202e",
        "\x00",
        "\r\n",
        "🙂",
        "\n\n\n",
    ]
)
HOSTILE = st.lists(FRAGMENTS | st.text(st.characters(codec="utf-8"), max_size=30), max_size=25).map(
    "".join
)
LONG = st.builds(lambda s, n: (s or "<&> ") * n, HOSTILE, st.integers(1, 400))

CI = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)
_INVISIBLE = re.compile(r"[\s`*\u2060]")


def visible(text: str) -> str:
    """What a reader sees, as compared: fences and their info strings are hidden (as in
    Markdown), and spacing, backticks, asterisks (bold markers) and word joiners (which
    neutralise mentions) do not count."""
    shown: list[str] = []
    position = 0
    for block in find_code_blocks(text):
        shown += [text[position : block.start], text[block.body_start : block.body_end]]
        position = block.end
    shown.append(text[position:])
    return _INVISIBLE.sub("", "".join(shown))


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def assert_safe(api: FakeBotAPI, since: int) -> None:
    """Every sendMessage since call ``since``: accepted, as HTML, bounded, no links/mentions."""
    for call in api.calls[since:]:
        if call.method != "sendMessage":
            continue
        # Parsed as sent (no plain-text fallback needed), except where HTML leaves nothing
        # to show: an empty code fence goes out as its plain text.
        assert call.status == 200 or call.params["text"] == "<pre></pre>", call
    for message in api.sent:
        assert utf16_len(message["text"]) <= 4096
        kinds = {e["type"] for e in message.get("entities", [])}
        assert not kinds & {"text_link", "text_mention", "url", "mention"}, message


@settings(CI, max_examples=40)
@given(text=HOSTILE | LONG)
@example(text="@alice_smith, meet @everyone: `@PersonaTestBot` <b>@x_y_z</b>")
@example(text="```<b>")
async def test_any_reply_text_parses_as_html_and_shows_as_written(
    telegram_bot: Any, api: FakeBotAPI, text: str
) -> None:
    since_calls, since_sent = len(api.calls), len(api.sent)
    await send_text(telegram_bot, ALICE["id"], text)
    assert_safe(api, since_calls)
    # The fake shows what Telegram would: HTML parsed, code blocks as plain text. A text
    # whose HTML shows nothing (an empty code fence, '```<b>') goes out as written instead.
    shown = "".join(m["text"] for m in api.sent[since_sent:])
    as_written = any(c.method == "sendMessage" and c.status != 200 for c in api.calls[since_calls:])
    assert _INVISIBLE.sub("", shown) == (_INVISIBLE.sub("", text) if as_written else visible(text))


@pytest.fixture
async def terse_bot(start_telegram: StartBot) -> RunningBot:
    """A running bot whose persona answers in a few tokens in Bob's chat (and the group);
    set up once per test function, so every hypothesis example talks to the same bot."""
    running = await start_telegram(
        max_message_chars=MAX_CHARS,
        mood_detector="lexicon",
        history_messages=2,  # short prompts: a loaded CI machine still answers in seconds
        max_prompt_tokens=512,
    )
    await running.engine.create_persona(
        persona_from_mapping(
            {"name": "terse", "system_prompt": "Answer in a few words.", "max_new_tokens": 8},
            source="test",
        )
    )
    for place in (conversation(BOB["id"]), conversation(GROUP_ID)):
        await running.engine.set_persona(place, "terse")
    return running


@pytest.mark.model
@settings(CI, max_examples=12, phases=NO_SHRINK)
@given(text=HOSTILE | LONG, argument=HOSTILE)
async def test_hostile_messages_and_command_arguments_are_survived(
    terse_bot: RunningBot, api: FakeBotAPI, text: str, argument: str
) -> None:
    text = text[:4000]  # Telegram delivers at most 4,096 characters per message
    assume(text.strip() and not text.startswith("/"))
    argument = " ".join(argument.split())[:200]
    engine = terse_bot.engine
    since = len(api.calls)
    chat, group = private(BOB), FakeBotAPI.group_chat(GROUP_ID)
    in_chat, in_group = len(api.sent_to(BOB["id"])), len(api.sent_to(GROUP_ID))

    api.send(chat, BOB, text)  # a reply or a refusal; nothing else
    await answers(api, BOB["id"], in_chat + 1)
    for command in ("persona", "mood", "length"):
        api.send(chat, BOB, f"/{command} {argument}")
    # One group message per example: Telegram (and the bot's rate limiter) allow a group
    # 20 messages a minute.
    api.send(group, BOB, f"/persona@{BOT_USERNAME} {argument}")  # Bob is no admin
    await answers(api, BOB["id"], in_chat + 4)
    refusal = (await answers(api, GROUP_ID, in_group + 1))[-1]
    if argument:
        assert refusal["text"] == "Only admins can change the persona."
    assert_safe(api, since)
    assert (await engine.persona(conversation(GROUP_ID))).name == "terse"
    for place in (conversation(BOB["id"]), conversation(GROUP_ID)):
        for stored in await engine.history(place, limit=10_000):
            assert len(stored.text) <= MAX_CHARS
    await engine.set_persona(conversation(BOB["id"]), "terse")  # a valid name may come up
    await engine.set_length(conversation(BOB["id"]), "medium")
