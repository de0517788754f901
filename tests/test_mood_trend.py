"""A mood that follows the conversation, and care when it matters.

Scripted conversations through the real engine (the lexicon detector, so each message's
mood is known; the offline model writes the replies): the prompt tells the persona, even
the pirate, when a user has been sad or afraid for several messages in a row, the
operator's support text is added once a day per conversation, and /mood shows the trend.
"""

from __future__ import annotations

import io

import pytest

from bots.terminal import TerminalChat
from core.bootstrap import build_engine
from core.engine import Engine
from core.generation.local.transformers_generator import TransformersGenerator
from core.mood.trend import MoodTrend
from core.prompting import CARE_FIRST
from core.types import Author, ConversationRef, Mood, MoodResult
from tests.conftest import SettingsFactory, SharedGenerator

ALICE = Author("u1", "Alice")
BOB = Author("u2", "Bob")
HERE = ConversationRef("test", "trend")
SUPPORT = "If you need someone to talk to, you can call 116 123 (free, any time)."
SAD = [
    "I am so sad, my grandmother passed away.",
    "I still miss her so much, I cry every night.",
    "I feel so lonely and sad today.",
    "I'm scared and worried about tomorrow.",
]


def trend(*moods: tuple[Mood, float]) -> MoodTrend:
    return MoodTrend.of([MoodResult(mood, confidence) for mood, confidence in moods])


def test_runs_and_the_weighted_reading() -> None:
    sad, afraid, happy = (Mood.SADNESS, 0.8), (Mood.FEAR, 0.7), (Mood.HAPPINESS, 0.9)
    assert trend(happy, sad, sad, sad).run_length == 3
    assert trend(sad, sad, afraid).run_mood is Mood.FEAR
    assert trend(sad, sad, afraid).distress_run == 3  # sad or afraid, either
    assert trend(sad, happy).run_mood is None and trend(sad, happy).distress_run == 0
    assert trend(sad, (Mood.SADNESS, 0.1)).run_length == 0  # a guess starts no run
    assert trend(happy, happy, happy, (Mood.SADNESS, 0.5)).leading is Mood.HAPPINESS
    assert trend(sad, (Mood.NO_EMOTION, 1.0)).leading is Mood.SADNESS  # an emotion, if any
    assert trend(happy, sad, sad).leading is Mood.SADNESS  # newer messages weigh more
    assert trend().leading is None and trend().latest is None


@pytest.fixture
async def caring(
    make_settings: SettingsFactory, offline_generator: TransformersGenerator
) -> Engine:
    settings = make_settings(
        mood_detector="lexicon",
        care_after_messages=3,
        support_text=SUPPORT,
        default_persona="pirate",
    )
    # The operator's own pirate, writing a few words, so that the replies take a blink.
    folder = settings.resolved_persona_dir
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pirate.toml").write_text(
        'system_prompt = "You are a boisterous pirate. Arr!"\nmax_new_tokens = 8\n'
    )
    return await build_engine(settings, generator=SharedGenerator(offline_generator))


async def test_care_comes_first_after_three_sad_messages_even_for_the_pirate(
    caring: Engine,
) -> None:
    try:
        await caring.reply(HERE, ALICE, SAD[0])
        second = await caring.preview_prompt(HERE, ALICE, SAD[1])
        assert CARE_FIRST not in second.messages[0].content
        assert "for their last 2 messages" in second.messages[0].content
        await caring.reply(HERE, ALICE, SAD[1])
        third = await caring.preview_prompt(HERE, ALICE, SAD[2])
        system = third.messages[0].content
        assert CARE_FIRST in system and "pirate" in system.lower()
        assert "for their last 3 messages" in system
        # Another person in the same chat has their own trend.
        bob = await caring.preview_prompt(HERE, BOB, SAD[2])
        assert CARE_FIRST not in bob.messages[0].content
    finally:
        await caring.aclose()


async def test_the_support_text_is_added_once_a_day_per_conversation(caring: Engine) -> None:
    try:
        replies = [await caring.reply(HERE, ALICE, text) for text in SAD]
        assert [r.text.endswith(SUPPORT) for r in replies] == [False, False, True, False]
        stored = [m.text for m in await caring.history(HERE) if m.role == "assistant"]
        assert stored[2].endswith(SUPPORT)  # stored as sent
        elsewhere = ConversationRef("test", "elsewhere")
        others = [await caring.reply(elsewhere, ALICE, text) for text in SAD[:3]]
        assert others[2].text.endswith(SUPPORT)
    finally:
        await caring.aclose()


async def test_mood_shows_the_trend(caring: Engine) -> None:
    chat = TerminalChat(
        caring,
        conversation=HERE,
        author=ALICE,
        stdin=io.StringIO(),
        stdout=io.StringIO(),
        interactive=False,
    )
    try:
        for text in SAD[:3]:
            await caring.reply(HERE, ALICE, text)
        shown = await chat.handle("/mood")
        assert shown.text == (
            "Mood of your last message: sadness. Your last 3 messages all read sadness."
        )
        await caring.reply(HERE, ALICE, "Hello there.")
        lately = await chat.handle("/mood")
        assert lately.text == "Mood of your last message: no emotion. Lately, mostly: sadness."
    finally:
        await caring.aclose()
