"""Hostile input at the engine, property-based: random Unicode, control characters, lone
surrogates, template markers, markdown and mentions, and messages far over the limit.

The engine must never crash on them (a refusal is an :class:`InputError` with a message for
the user), must store at most ``max_message_chars`` of clean text, and must keep every
prompt inside its token budget. The generating test uses the real offline model with a
persona whose replies are a few tokens long, so each example takes well under a second.
Example counts are kept small for CI's two cores.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from core.bootstrap import build_engine
from core.engine import Engine
from core.errors import ConfigError, GenerationError, InputError
from core.generation.local.transformers_generator import TransformersGenerator
from core.personas import Persona, persona_from_mapping
from core.text import clean_user_text
from core.types import Author, ConversationRef
from tests.conftest import SettingsFactory, SharedGenerator

MAX_CHARS = 500
PROMPT_BUDGET = 512
#: What a stored message may never contain: C0/C1 controls (but tab and newline), DEL,
#: lone surrogates, zero-width and bidi-override marks.
FORBIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\u200b-\u200f\u202a-\u202e]")

FRAGMENTS = st.sampled_from(
    [
        "@everyone",
        "@here",
        "<@123456789012345678>",
        "<@&987654321098765432>",
        "<#111>",
        "**bold**",
        "```python\nprint(1)\n```",
        "`code`",
        "[link](http://x)",
        "<b>",
        "&amp;",
        "<|im_start|>system\n",
        "<|im_end|>",
        "</s>",
        "[INST]",
        "System:",
        "/persona pirate",
        "\u202e",
        "\u200b",
        "\x00",
        "\x1b[31m",
        "\r\n",
        "\ud800",
        "🙂",
        "e\u0301",
        "\n\n\n\n",
    ]
)
HOSTILE = st.lists(
    FRAGMENTS | st.text(st.characters(codec=None), max_size=40), min_size=0, max_size=25
).map("".join)
#: Mostly hostile text, sometimes far over the limit (a pasted novel).
MESSAGES = HOSTILE | st.builds(lambda s, n: (s or "x") * n, HOSTILE, st.integers(1, 3000))

CI = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
#: Examples that run the model are reported as found: shrinking one could take minutes.
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)


@settings(CI, max_examples=300)
@given(text=MESSAGES)
def test_cleaning_either_refuses_or_gives_bounded_clean_text(text: str) -> None:
    try:
        cleaned = clean_user_text(text, max_chars=MAX_CHARS)
    except InputError as exc:
        assert str(exc)  # a message for the user
        return
    assert 0 < len(cleaned) <= MAX_CHARS
    assert not FORBIDDEN.search(cleaned)
    assert cleaned == cleaned.strip() and "\n\n\n" not in cleaned
    cleaned.encode("utf-8")  # storable: no lone surrogates left


@pytest.fixture
async def terse_engine(
    make_settings: SettingsFactory, offline_generator: TransformersGenerator
) -> AsyncIterator[Engine]:
    """An engine whose default persona answers in at most eight tokens."""
    built = await build_engine(
        make_settings(
            max_message_chars=MAX_CHARS,
            max_prompt_tokens=PROMPT_BUDGET,
            mood_detector="lexicon",
            history_messages=6,
        ),
        generator=SharedGenerator(offline_generator),
    )
    await built.create_persona(
        persona_from_mapping(
            {"name": "terse", "system_prompt": "You answer in a few words.", "max_new_tokens": 8},
            source="test",
        )
    )
    yield built
    await built.aclose()


@settings(CI, max_examples=40)
@given(text=MESSAGES, name=HOSTILE)
async def test_any_prompt_fits_the_budget(terse_engine: Engine, text: str, name: str) -> None:
    here = ConversationRef("discord", "prompt-fuzz")
    try:
        prompt = await terse_engine.preview_prompt(here, Author("9", name[:80] or "x"), text)
    except InputError:
        return
    assert prompt.tokens <= PROMPT_BUDGET
    assert prompt.messages[0].role == "system"


@pytest.mark.model
@settings(CI, max_examples=10, phases=NO_SHRINK)
@given(texts=st.lists(MESSAGES, min_size=1, max_size=2), name=HOSTILE)
async def test_hostile_messages_are_answered_or_refused_and_stored_bounded(
    terse_engine: Engine, texts: list[str], name: str
) -> None:
    here = ConversationRef("telegram", "fuzz")
    await terse_engine.set_persona(here, "terse")
    author = Author("13", name[:80] or "x")
    for text in texts:
        before = len(await terse_engine.history(here, limit=10_000))
        try:
            reply = await terse_engine.reply(here, author, text)
        except InputError as exc:  # empty or too long: refused before anything is stored
            assert str(exc)
            assert len(await terse_engine.history(here, limit=10_000)) == before
            continue
        except GenerationError as exc:  # the model wrote nothing usable: said politely
            assert str(exc)
            stored = await terse_engine.history(here, limit=10_000)
            assert len(stored) == before + 1
            continue
        assert reply.text and reply.persona == "terse"
        assert not FORBIDDEN.search(reply.text)
        stored = await terse_engine.history(here, limit=10_000)
        assert len(stored) == before + 2
        question, answer = stored[-2:]
        assert question.text == clean_user_text(text, max_chars=MAX_CHARS)
        assert len(question.text) <= MAX_CHARS and not FORBIDDEN.search(question.text)
        assert answer.text == reply.text
    assert (await terse_engine.persona(here)).name == "terse"


async def test_a_huge_message_is_refused_quickly_and_not_stored(terse_engine: Engine) -> None:
    here = ConversationRef("telegram", "huge")
    with pytest.raises(InputError, match="2,000,000 characters long; the limit is 500"):
        await terse_engine.reply(here, Author("1", "A"), "a" * 2_000_000)
    assert await terse_engine.history(here) == []


async def test_user_made_personas_are_capped_and_validated(
    make_settings: SettingsFactory, offline_generator: TransformersGenerator
) -> None:
    built = await build_engine(
        make_settings(max_user_personas=2, mood_detector="lexicon"),
        generator=SharedGenerator(offline_generator),
    )
    try:

        def persona(name: str, prompt: str = "You are kind.") -> Persona:
            return persona_from_mapping({"name": name, "system_prompt": prompt}, source="test")

        await built.create_persona(persona("one"))
        await built.create_persona(persona("two"))
        await built.create_persona(persona("two", "You are kinder."))  # replacing is fine
        with pytest.raises(InputError, match="PERSONABOT_MAX_USER_PERSONAS=2"):
            await built.create_persona(persona("three"))
        assert "three" not in {p.name for p in built.personas()}
        assert await built.delete_persona("one")
        await built.create_persona(persona("three"))  # room again
        # Oversized or malformed definitions never get this far: they are refused by name.
        with pytest.raises(ConfigError, match="system_prompt"):
            persona("huge", "x" * 2001)
        with pytest.raises(ConfigError, match="name"):
            persona("<|im_start|>")
    finally:
        await built.aclose()
