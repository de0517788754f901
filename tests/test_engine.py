"""The engine end to end with the real offline model (SmolLM2-135M) and a real database."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from core.bootstrap import build_engine
from core.engine import Engine
from core.errors import ConfigError, GenerationError, InputError, StorageError, UnknownPersonaError
from core.generation.generator import Generator
from core.generation.local.transformers_generator import TransformersGenerator
from core.types import Author, ConversationRef, LengthPreset, Mood
from tests.conftest import SettingsFactory, SharedGenerator

ALICE = Author("u1", "Alice")
BOB = Author("u2", "Bob")


def conv(name: str = "c1") -> ConversationRef:
    return ConversationRef("test", name)


async def test_reply_end_to_end_stores_both_messages(engine: Engine) -> None:
    reply = await engine.reply(conv(), ALICE, "Hello! How are you today?")
    assert reply.text.strip()
    assert reply.persona == "friend"
    assert "<|im_end|>" not in reply.text and "<|im_start|>" not in reply.text
    stored = await engine.history(conv())
    assert [m.role for m in stored] == ["user", "assistant"]
    assert stored[0].text == "Hello! How are you today?"
    assert stored[0].author_name == "Alice"
    assert stored[1].text == reply.text
    assert stored[1].reply_to_id == stored[0].id == reply.user_message_id
    assert stored[1].persona == "friend"


async def test_persona_switch_changes_prompt_and_stored_persona(engine: Engine) -> None:
    before = await engine.preview_prompt(conv(), ALICE, "Tell me about the sea.")
    pirate = await engine.set_persona(conv(), "Pirate")  # names are case-insensitive
    after = await engine.preview_prompt(conv(), ALICE, "Tell me about the sea.")
    assert pirate.name == "pirate"
    assert pirate.system_prompt.strip() in after.messages[0].content
    assert pirate.system_prompt.strip() not in before.messages[0].content
    assert before.messages[0].content != after.messages[0].content
    reply = await engine.reply(conv(), ALICE, "Tell me about the sea.")
    assert reply.persona == "pirate"
    stored = await engine.history(conv())
    assert stored[-1].persona == "pirate" and stored[-1].role == "assistant"
    # Another conversation keeps the default persona.
    assert (await engine.persona(conv("other"))).name == "friend"


async def test_unknown_persona_lists_valid_names(engine: Engine) -> None:
    with pytest.raises(UnknownPersonaError) as caught:
        await engine.set_persona(conv(), "wizard")
    message = str(caught.value)
    for persona in engine.personas():
        assert persona.name in message
    assert (await engine.persona(conv())).name == "friend"


async def test_mood_is_detected_and_stored_per_message(engine: Engine) -> None:
    # Each message opens its own conversation: the detector reads the previous turn as
    # context, and the model's reply in between is not under the test's control.
    happy = await engine.reply(conv("a"), ALICE, "I'm so happy today, this is wonderful!")
    sad = await engine.reply(conv("b"), ALICE, "I am so sad, my grandmother passed away.")
    assert happy.mood.mood is Mood.HAPPINESS
    assert sad.mood.mood is Mood.SADNESS
    for name, mood in (("a", Mood.HAPPINESS), ("b", Mood.SADNESS)):
        stored = await engine.history(conv(name))
        assert [m.mood for m in stored] == [mood, None]  # replies carry no mood
    # The detected mood shapes the prompt.
    prompt = await engine.preview_prompt(conv("c"), ALICE, "I am so sad, my cat died.")
    assert "sadness" in prompt.messages[0].content


async def test_history_survives_engine_restart(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings()
    first = await build_engine(settings)  # loads the model from the on-disk cache
    await first.set_persona(conv(), "mentor")
    await first.set_length(conv(), "short")
    await first.reply(conv(), ALICE, "My name is Zebulon and I collect teapots.")
    await first.aclose()

    second = await build_engine(settings)
    try:
        history = await second.history(conv())
        assert [m.role for m in history] == ["user", "assistant"]
        assert "Zebulon" in history[0].text
        assert (await second.persona(conv())).name == "mentor"
        assert await second.length(conv()) is LengthPreset.SHORT
        prompt = await second.preview_prompt(conv(), ALICE, "What do I collect?")
        assert any("Zebulon" in m.content for m in prompt.messages)
        reply = await second.reply(conv(), ALICE, "What do I collect?")
        assert reply.history_messages_used == 2
    finally:
        await second.aclose()


async def test_concurrent_messages_answered_in_arrival_order(engine: Engine) -> None:
    texts = [f"Message number {i}: tell me a fact about the number {i}." for i in range(4)]
    other = engine.reply(conv("elsewhere"), BOB, "Hi from another channel.")
    replies = await asyncio.gather(*(engine.reply(conv(), ALICE, t) for t in texts), other)
    mine = replies[:4]
    # Replies were generated and stored in arrival order...
    stored = [r.reply_message_id for r in mine]
    assert None not in stored and stored == sorted(r.reply_message_id or 0 for r in mine)
    assert [r.user_message_id for r in mine] == sorted(r.user_message_id for r in mine)
    # ...and each reply saw every earlier exchange of its conversation, none of the other's.
    assert [r.history_messages_used for r in mine] == [0, 2, 4, 6]
    assert replies[4].history_messages_used == 0
    history = await engine.history(conv())
    assert [m.text for m in history if m.role == "user"] == texts
    assert [m.role for m in history] == ["user", "assistant"] * 4
    for question, answer in zip(history[::2], history[1::2], strict=True):
        assert answer.reply_to_id == question.id


async def test_reset_forgets_history_but_keeps_persona(engine: Engine) -> None:
    await engine.set_persona(conv(), "bard")
    await engine.reply(conv(), ALICE, "Good morrow!")
    assert await engine.reset(conv()) == 2
    assert await engine.history(conv()) == []
    assert (await engine.persona(conv())).name == "bard"


@pytest.mark.parametrize("text", ["", "   ", "\n\t \n", "\x00\x01\x02"])
async def test_empty_messages_are_refused_and_not_stored(engine: Engine, text: str) -> None:
    with pytest.raises(InputError, match="empty"):
        await engine.reply(conv(), ALICE, text)
    assert await engine.history(conv()) == []


async def test_huge_message_is_refused_with_the_limit(engine: Engine) -> None:
    with pytest.raises(InputError) as caught:
        await engine.reply(conv(), ALICE, "a" * 100_000)
    assert "100,000" in str(caught.value) and "8,000" in str(caught.value)
    assert await engine.history(conv()) == []


async def test_control_characters_and_lone_surrogates_are_cleaned(engine: Engine) -> None:
    reply = await engine.reply(conv(), ALICE, "Hi\x00 there\x1b[31m \ud800friend\u202e!")
    assert reply.text
    stored = (await engine.history(conv()))[0]
    assert stored.text == "Hi there[31m \ufffdfriend!"


async def test_message_longer_than_the_prompt_budget_still_gets_a_reply(
    make_settings: SettingsFactory, offline_generator: TransformersGenerator
) -> None:
    settings = make_settings(max_prompt_tokens=300, max_message_chars=20_000)
    engine = await build_engine(settings, generator=_shared(offline_generator))
    try:
        long_text = "Here is a long story about my week. " * 300
        reply = await engine.reply(conv(), ALICE, long_text)
        assert reply.prompt_tokens <= 300
        assert (await engine.history(conv()))[0].text == long_text.strip()
    finally:
        await engine.aclose()


async def test_failed_generation_keeps_the_user_message(
    make_settings: SettingsFactory,
) -> None:
    engine = await build_engine(make_settings())
    try:
        await engine.reply(conv(), ALICE, "First message.")
        # A real failure: the generator is shut down under the engine.
        await engine._generator.aclose()
        with pytest.raises(GenerationError):
            await engine.reply(conv(), ALICE, "Will this be lost?")
        history = await engine.history(conv())
        assert history[-1].text == "Will this be lost?" and history[-1].role == "user"
    finally:
        await engine.aclose()


async def test_unwritable_data_dir_is_a_clear_error(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(ConfigError, match="PERSONABOT_DATA_DIR"):
        await build_engine(make_settings(data_dir=blocker / "data"))


async def test_unwritable_database_url_is_a_clear_error(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    url = f"sqlite+aiosqlite:///{blocker}/sub/personabot.db"
    with pytest.raises(StorageError, match=str(blocker)):
        await build_engine(make_settings(database_url=url))


async def test_default_persona_must_exist(make_settings: SettingsFactory) -> None:
    with pytest.raises(ConfigError, match="pirate"):
        await build_engine(make_settings(default_persona="nobody"))


def _shared(generator: TransformersGenerator) -> Generator:
    return SharedGenerator(generator)


async def test_retry_rewrites_the_last_reply_in_place(engine: Engine) -> None:
    first = await engine.reply(conv(), ALICE, "Hello! How are you today?")
    last = await engine.reply(conv(), ALICE, "What should I cook tonight?")
    again = await engine.retry(conv(), ALICE, may_retry_others=False)
    assert again.text.strip() and again.text != last.text
    assert again.reply_message_id == last.reply_message_id
    assert again.user_message_id == last.user_message_id
    stored = await engine.history(conv())
    assert [(m.role, m.text) for m in stored] == [
        ("user", "Hello! How are you today?"),
        ("assistant", first.text),
        ("user", "What should I cook tonight?"),
        ("assistant", again.text),
    ]
    assert stored[-1].reply_to_id == stored[-2].id
    # Retrying again moves on again, and the history still holds one answer.
    third = await engine.retry(conv(), ALICE, may_retry_others=False)
    assert third.text != again.text
    assert [m.text for m in await engine.history(conv())][-1] == third.text
    assert len(await engine.history(conv())) == 4


async def test_retry_prompt_is_the_first_one_without_the_old_reply(engine: Engine) -> None:
    await engine.reply(conv(), ALICE, "Hello there.")
    last = await engine.reply(conv(), ALICE, "I'm so happy today, this is wonderful!")
    again = await engine.retry(conv(), ALICE, may_retry_others=False)
    # The earlier exchange is history; the message's own old reply is not. Its mood stays.
    assert last.history_messages_used == again.history_messages_used == 2
    assert again.mood.mood is Mood.HAPPINESS is last.mood.mood


async def test_retry_needs_a_message_and_its_author_or_an_admin(engine: Engine) -> None:
    with pytest.raises(InputError, match="no reply here"):
        await engine.retry(conv(), ALICE, may_retry_others=True)
    reply = await engine.reply(conv(), ALICE, "Tell me a joke.")
    with pytest.raises(InputError, match="Only Alice or an admin"):
        await engine.retry(conv(), BOB, may_retry_others=False)
    assert (await engine.history(conv()))[-1].text == reply.text  # untouched
    again = await engine.retry(conv(), BOB, may_retry_others=True)
    assert (await engine.history(conv()))[-1].text == again.text
