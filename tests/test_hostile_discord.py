"""Hostile input at the Discord frontend, property-based, through the fake Discord.

Random Unicode, control characters, markdown, huge texts and every kind of mention go in as
messages, as slash-command arguments and as "model output" on the sending path. Nothing may
crash the bot, every message it sends fits Discord's limit, and nothing it sends may ping
anyone: the ``fake`` fixture (tests/conftest.py) checks every message the bot posted or
edited, by Discord's own rules, when it shuts down; the tests check each one as it goes.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from bots.conversation.chunking import find_code_blocks
from bots.discord import PersonaBotClient
from bots.discord.sending import MESSAGE_LIMIT, send_text
from core.personas import persona_from_mapping
from tests.fake_discord import BOT_ID, BOT_ROLE_ID, GENERAL, GUILD_ID, FakeDiscord
from tests.support.discord_helpers import (
    ALICE_ID,
    BOB_ID,
    EPHEMERAL,
    NO_PINGS,
    here,
    pings_nobody,
)
from tests.support.running_bot import RunningBot, StartBot

MAX_CHARS = 1500

FRAGMENTS = st.sampled_from(
    [
        "@everyone",
        "@here",
        "@\u200beveryone",
        f"<@{ALICE_ID}>",
        f"<@!{BOB_ID}>",
        f"<@&{BOT_ROLE_ID}>",
        "<@&123456789012345678>",
        f"<@{BOT_ID}>",
        "<#1>",
        "**bold** __under__ ~~strike~~ ||spoiler||",
        "```\ncode\n```",
        "```py\n@everyone\n",
        "`",
        "> quote\n",
        "[link](https://example.invalid)",
        "<|im_start|>system\n",
        "\u202e",
        "\x00",
        "\r\n",
        "\n\n\n",
        "🙂",
        " ",
    ]
)
HOSTILE = st.lists(FRAGMENTS | st.text(st.characters(codec="utf-8"), max_size=30), max_size=25).map(
    "".join
)
LONG = st.builds(lambda s, n: (s or "@everyone ") * n, HOSTILE, st.integers(1, 400))

CI = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)
_INVISIBLE = re.compile(r"[\s`]")


def assert_safe(fake: FakeDiscord, since: int) -> None:
    """Everything the bot posted since ``since``: within the limit and pinging nobody."""
    for message in fake.sent[since:]:
        assert 0 < len(message["content"]) <= MESSAGE_LIMIT
        assert pings_nobody(message["allowed_mentions"]), message
        assert message["pings"] == NO_PINGS, message


@settings(CI, max_examples=40)
@given(text=HOSTILE | LONG)
async def test_any_reply_text_is_sent_in_parts_that_fit_and_ping_nobody(
    discord_client: PersonaBotClient, fake: FakeDiscord, text: str
) -> None:
    channel = discord_client.get_partial_messageable(GENERAL, guild_id=GUILD_ID)
    since = len(fake.sent)
    sent = await send_text(channel, text)
    assert len(sent) == len(fake.sent) - since >= 1
    assert_safe(fake, since)
    # Each part is rendered on its own, as Discord does.
    shown = "".join(visible(m["content"]) for m in fake.sent[since:])
    assert shown == (visible(text) if text.strip() else "…")


def visible(text: str) -> str:
    """What a reader sees, as compared: fences and their info strings are hidden (as in
    Markdown), and spacing, backticks and asterisks (bold markers) do not count."""
    shown: list[str] = []
    position = 0
    for block in find_code_blocks(text):
        shown += [text[position : block.start], text[block.body_start : block.body_end]]
        position = block.end
    shown.append(text[position:])
    return _INVISIBLE.sub("", "".join(shown))


@pytest.fixture
async def terse_bot(start_discord: StartBot) -> RunningBot:
    """A running bot whose persona in #general answers in a few tokens, so that each
    example costs well under a second of model time. Fixtures are set up once per test
    function: every hypothesis example talks to the same bot."""
    bot = await start_discord(
        max_message_chars=MAX_CHARS,
        mood_detector="lexicon",
        history_messages=2,  # short prompts: a loaded CI machine still answers in seconds
        max_prompt_tokens=512,
    )
    await bot.engine.create_persona(
        persona_from_mapping(
            {"name": "terse", "system_prompt": "Answer in a few words.", "max_new_tokens": 8},
            source="test",
        )
    )
    await bot.engine.set_persona(here(GENERAL), "terse")
    return bot


@pytest.mark.model
@settings(CI, max_examples=12, phases=NO_SHRINK)
@given(text=HOSTILE | LONG, argument=HOSTILE)
async def test_hostile_messages_and_command_arguments_are_survived(
    terse_bot: RunningBot, fake: FakeDiscord, text: str, argument: str
) -> None:
    engine = terse_bot.engine
    bob = fake.users[BOB_ID]
    since = len(fake.sent)
    before = len(fake.sent_to(GENERAL))
    await fake.mention(GENERAL, bob, text)
    # One answer, whatever it was: a reply, a refusal, or a hint for an empty mention.
    await fake.wait_for(lambda: len(fake.sent_to(GENERAL)) > before)
    await fake.wait_for(lambda: engine.replies_in_flight == 0)

    # Alice may switch (Manage Server), so the argument reaches the engine.
    alice = fake.users[ALICE_ID]
    chosen = await fake.answer(await fake.slash(alice, GENERAL, "persona", "set", name=argument))
    assert chosen["flags"] & EPHEMERAL or chosen["content"].startswith("Persona set to")
    mood = await fake.answer(await fake.slash(bob, GENERAL, "mood", text=argument or "x"))
    assert mood["flags"] & EPHEMERAL
    assert_safe(fake, since)
    for stored in await engine.history(here(GENERAL), limit=10_000):
        assert len(stored.text) <= MAX_CHARS
    await engine.set_persona(here(GENERAL), "terse")  # in case a valid name came up
