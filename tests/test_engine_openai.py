"""The engine and generator tests of the local backend, run again over the HTTP backend.

The test functions are the very ones in tests/test_engine.py and tests/test_generation.py,
collected a second time here; pytest resolves their fixtures in this module, where
``offline_generator`` is the same SmolLM2 GGUF served by llama-cpp-python's OpenAI-compatible
server and reached through :class:`~core.generation.remote.openai_generator.OpenAIGenerator`, and
``make_settings`` selects PERSONABOT_GENERATOR_BACKEND=openai, so engines that tests build
themselves (restart, shutdown) go through the factory to the server as well.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from core.generation.remote.chat_token_counter import ChatTokenCounter
from core.generation.remote.openai_generator import OpenAIGenerator, create_openai_generator
from core.settings import Settings
from core.types import SamplingParams
from tests import test_engine, test_generation
from tests.conftest import SettingsFactory
from tests.llama_server import LlamaServer

pytestmark = pytest.mark.model


@pytest.fixture
def make_settings(make_settings: SettingsFactory, llama_server: LlamaServer) -> SettingsFactory:
    """The conftest settings, with generation on the llama-cpp-python server."""

    def factory(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "generator_backend": "openai",
            "openai_base_url": llama_server.base_url,
        }
        values.update(overrides)
        return make_settings(**values)

    return factory


@pytest.fixture
async def offline_generator(
    make_settings: SettingsFactory, openai_counter: ChatTokenCounter
) -> AsyncIterator[OpenAIGenerator]:
    """The offline model behind HTTP (one client per test: a client belongs to its loop)."""
    generator = await create_openai_generator(make_settings(), counter=openai_counter)
    yield generator
    await generator.aclose()


# -- tests/test_engine.py -------------------------------------------------------------------
test_reply_end_to_end_stores_both_messages = test_engine.test_reply_end_to_end_stores_both_messages
test_persona_switch_changes_prompt_and_stored_persona = (
    test_engine.test_persona_switch_changes_prompt_and_stored_persona
)
test_mood_is_detected_and_stored_per_message = (
    test_engine.test_mood_is_detected_and_stored_per_message
)
test_history_survives_engine_restart = test_engine.test_history_survives_engine_restart
test_concurrent_messages_answered_in_arrival_order = (
    test_engine.test_concurrent_messages_answered_in_arrival_order
)
test_reset_forgets_history_but_keeps_persona = (
    test_engine.test_reset_forgets_history_but_keeps_persona
)
test_control_characters_and_lone_surrogates_are_cleaned = (
    test_engine.test_control_characters_and_lone_surrogates_are_cleaned
)
test_message_longer_than_the_prompt_budget_still_gets_a_reply = (
    test_engine.test_message_longer_than_the_prompt_budget_still_gets_a_reply
)
test_failed_generation_keeps_the_user_message = (
    test_engine.test_failed_generation_keeps_the_user_message
)

# -- tests/test_generation.py ---------------------------------------------------------------


async def test_stream_yields_the_same_text_as_generate(offline_generator: OpenAIGenerator) -> None:
    """tests/test_generation.py's test of the same name, with greedy decoding.

    That one samples (seed 7, temperature 0.7). llama.cpp keeps the previous request's
    prompt in its KV cache and then evaluates only the last prompt token, which changes the
    first logits by float rounding, so a *sampled* reply depends on what the server answered
    before; greedy ones do not.
    """
    params = SamplingParams(max_new_tokens=40, temperature=0.0)
    whole = await offline_generator.generate(test_generation.CHAT, params)
    pieces = [piece async for piece in offline_generator.stream(test_generation.CHAT, params)]
    assert len(pieces) > 1
    assert "".join(pieces).strip() == whole.text.strip()
    assert whole.completion_tokens <= 40
    assert whole.prompt_tokens == offline_generator.count_tokens(test_generation.CHAT)


test_leaving_a_stream_early_stops_decoding = (
    test_generation.test_leaving_a_stream_early_stops_decoding
)
test_greedy_decoding_is_deterministic = test_generation.test_greedy_decoding_is_deterministic
