"""The OpenAI-compatible HTTP generation backend.

Against the real thing first: llama-cpp-python's server with the offline SmolLM2 GGUF
(tests/llama_server.py), for stop strings, streaming through the engine, a server that is
down and comes back, API keys and timeouts; tests that make sense for both backends run on
both. A scripted server on loopback (tests/fake_openai.py) covers what a real server will
not do on cue: 429/503/500 answers, an error mid-stream, vLLM's and llama.cpp's own ways of
telling their context length, and the exact request fields.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from core.bootstrap import build_engine
from core.engine import APOLOGY
from core.errors import ConfigError, GenerationError
from core.generation.generator import Generator
from core.generation.local.transformers_generator import TransformersGenerator
from core.generation.remote.chat_token_counter import ChatTokenCounter, estimate_tokens
from core.generation.remote.openai_generator import (
    DEFAULT_CONTEXT_WINDOW,
    OpenAIGenerator,
    create_openai_generator,
)
from core.settings import Settings, load_settings
from core.types import Author, ChatMessage, ConversationRef, SamplingParams
from tests.conftest import SettingsFactory, SharedGenerator
from tests.fake_openai import FakeOpenAIServer, Flavour
from tests.llama_server import LlamaServer, free_port, require_llama_cpp, start_llama_server
from tests.test_cli import personabot
from tests.test_generation import CHAT

ALICE = Author("u1", "Alice")
ESTIMATE = ChatTokenCounter(None, system_role=True, source="estimate")
API_KEY = "sk-personabot-test-2f9c1e7d4b6a8e0f"


def conv(name: str) -> ConversationRef:
    return ConversationRef("test", name)


def openai_settings(make_settings: SettingsFactory, base_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"generator_backend": "openai", "openai_base_url": base_url}
    values.update(overrides)
    return make_settings(**values)


@pytest.fixture
async def http_generator(
    make_settings: SettingsFactory, llama_server: LlamaServer, openai_counter: ChatTokenCounter
) -> AsyncIterator[OpenAIGenerator]:
    settings = openai_settings(make_settings, llama_server.base_url)
    generator = await create_openai_generator(settings, counter=openai_counter)
    yield generator
    await generator.aclose()


@pytest.fixture(params=["transformers", "openai"])
def generator(request: pytest.FixtureRequest) -> Generator:
    """The offline model, in this process or behind llama-cpp-python's server."""
    if request.param == "transformers":
        local: TransformersGenerator = request.getfixturevalue("offline_generator")
        return SharedGenerator(local)
    remote: OpenAIGenerator = request.getfixturevalue("http_generator")
    return remote


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAIServer]:
    server = FakeOpenAIServer()
    await server.start()
    yield server
    await server.stop()


async def fake_generator(
    fake: FakeOpenAIServer, make_settings: SettingsFactory, **overrides: Any
) -> OpenAIGenerator:
    settings = openai_settings(make_settings, fake.base_url, **overrides)
    return await create_openai_generator(settings, counter=ESTIMATE)


# -- both backends ----------------------------------------------------------------------------


@pytest.mark.model
async def test_stop_strings_end_the_reply(generator: Generator) -> None:
    params = SamplingParams(max_new_tokens=48, temperature=0.0, repetition_penalty=1.0)
    free = await generator.generate(CHAT, params)
    words = [w.strip(".,!?;:") for w in free.text.split()]
    candidates = [w for w in words[len(words) // 3 :] if len(w) >= 4 and w.isalpha()]
    assert candidates, f"no usable stop word in {free.text!r}"
    stop = candidates[0]
    cut = free.text.index(stop)

    stopped = await generator.generate(CHAT, dataclasses.replace(params, stop=(stop,)))

    # Greedy decoding: the same text up to the stop string, and nothing much after it (the
    # server drops the stop string; the local backend ends on the token that completes it).
    assert free.text.startswith(stopped.text.rstrip())
    assert stopped.text.startswith(free.text[:cut].rstrip())
    assert len(stopped.text) <= cut + len(stop) + 8
    assert stopped.completion_tokens < free.completion_tokens


@pytest.mark.model
async def test_streamed_engine_reply_equals_the_plain_one(
    make_settings: SettingsFactory, generator: Generator
) -> None:
    engine = await build_engine(make_settings(), generator=generator)
    try:
        text = "Hello! What do you like to do on a rainy afternoon?"
        for name in ("warm-up", "plain", "streamed"):
            await engine.set_length(conv(name), "short")
        if isinstance(generator, OpenAIGenerator):
            # The same prompt once before, so the two compared replies find llama.cpp's
            # prompt cache in the same state (tests/test_engine_openai.py says why).
            await engine.reply(conv("warm-up"), ALICE, text)
        plain = await engine.reply(conv("plain"), ALICE, text)
        partials: list[str] = []
        streamed = await engine.reply(conv("streamed"), ALICE, text, on_partial=partials.append)
    finally:
        await engine.aclose()
    assert len(partials) > 1
    # The same words, shown as they came. The stored texts may differ only where the engine
    # trimmed a reply cut off by its token budget back to its last full sentence: a streamed
    # reply's token count is re-measured from its text and can miss that cut.
    assert partials[-1].startswith(streamed.text) and partials[-1].startswith(plain.text)
    shorter, longer = sorted((plain.text, streamed.text), key=len)
    assert shorter and longer.startswith(shorter)


# -- the real server --------------------------------------------------------------------------


@pytest.mark.model
async def test_server_down_gets_the_apology_and_the_next_message_works_once_it_is_up(
    make_settings: SettingsFactory,
    openai_counter: ChatTokenCounter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    require_llama_cpp()
    port = free_port()
    settings = openai_settings(make_settings, f"http://127.0.0.1:{port}/v1", openai_max_retries=1)
    with caplog.at_level(logging.WARNING):
        engine = await build_engine(settings)  # starts although the server is down
    server: LlamaServer | None = None
    try:
        assert "cannot be reached" in caplog.text
        assert engine._generator.context_window == DEFAULT_CONTEXT_WINDOW
        with (
            caplog.at_level(logging.ERROR, logger="core.engine"),
            pytest.raises(GenerationError) as caught,
        ):
            await engine.reply(conv("down"), ALICE, "Is anybody there?")
        assert str(caught.value) == APOLOGY
        assert f"127.0.0.1:{port}" in caplog.text  # the details went to the log
        assert "PERSONABOT_OPENAI_BASE_URL" in caplog.text

        server = start_llama_server(port)
        reply = await engine.reply(conv("down"), ALICE, "Hello again, are you there now?")
        assert reply.text.strip()
        history = await engine.history(conv("down"))
        assert [m.role for m in history] == ["user", "user", "assistant"]
    finally:
        await engine.aclose()
        if server is not None:
            server.stop()


@pytest.mark.model
async def test_api_key_is_required_masked_and_never_logged(
    make_settings: SettingsFactory,
    openai_counter: ChatTokenCounter,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    model_cache_dir: Path,
) -> None:
    require_llama_cpp()
    server = start_llama_server(api_key=API_KEY)
    try:
        wrong = openai_settings(make_settings, server.base_url, openai_api_key="sk-wrong-key")
        with pytest.raises(ConfigError, match="PERSONABOT_OPENAI_API_KEY"):
            await create_openai_generator(wrong, counter=openai_counter)

        right = openai_settings(make_settings, server.base_url, openai_api_key=API_KEY)
        with caplog.at_level(logging.DEBUG):
            engine = await build_engine(right)
            try:
                reply = await engine.reply(conv("key"), ALICE, "Hello! How are you?")
                assert reply.text.strip()
                logging.getLogger("tests").warning("a careless line with %s in it", API_KEY)
            finally:
                await engine.aclose()
        assert API_KEY not in caplog.text
        assert "a careless line with *** in it" in caplog.text
    finally:
        server.stop()

    shown = personabot(
        ["config"],
        tmp_path,
        model_cache_dir,
        PERSONABOT_GENERATOR_BACKEND="openai",
        PERSONABOT_OPENAI_API_KEY=API_KEY,
    )
    assert shown.returncode == 0, shown.stderr
    assert "openai_api_key = **********" in shown.stdout
    assert API_KEY not in shown.stdout + shown.stderr


@pytest.mark.model
async def test_a_slow_server_is_a_timeout_naming_the_setting(
    make_settings: SettingsFactory, llama_server: LlamaServer, openai_counter: ChatTokenCounter
) -> None:
    settings = openai_settings(make_settings, llama_server.base_url, openai_timeout_seconds=0.2)
    generator = await create_openai_generator(settings, counter=openai_counter)
    try:
        params = SamplingParams(max_new_tokens=400, temperature=0.0, repetition_penalty=1.0)
        with pytest.raises(GenerationError, match="PERSONABOT_OPENAI_TIMEOUT_SECONDS") as caught:
            await generator.generate(CHAT, params)
        assert caught.value.__cause__ is not None  # so the engine shows its apology
    finally:
        await generator.aclose()


@pytest.mark.model
def test_the_estimate_never_undercounts(openai_counter: ChatTokenCounter) -> None:
    texts = [
        "Hello! How are you today?",
        "I'm so sorry to hear that. Is there anything I can do to help you feel better?",
        "Well, the 3:15 train to Zürich leaves from platform 7 — don't be late!!!",
        "Ahoy, matey! Tell me about yer treasure, arr.",
        "ok",
    ]
    for text in texts:
        chat = [ChatMessage("system", "You are a friend."), ChatMessage("user", text)]
        assert estimate_tokens(chat) >= openai_counter.count(chat), text


# -- the scripted server ----------------------------------------------------------------------


@pytest.mark.parametrize("flavour", ["vllm", "llama.cpp", "plain"])
async def test_requests_carry_the_sampling_parameters(
    fake: FakeOpenAIServer, make_settings: SettingsFactory, flavour: Flavour
) -> None:
    fake.flavour = flavour
    generator = await fake_generator(
        fake, make_settings, openai_lora="dailydialog", openai_api_key=API_KEY
    )
    try:
        params = SamplingParams(
            temperature=0.5,
            top_p=0.8,
            top_k=20,
            repetition_penalty=1.2,
            max_new_tokens=33,
            stop=("Alice:", "\nBob:"),
            seed=9,
        )
        result = await generator.generate(CHAT, params)
    finally:
        await generator.aclose()
    assert result.text == fake.reply
    assert (result.prompt_tokens, result.completion_tokens) == (42, 3)  # the server's usage
    [body] = fake.requests
    assert body["model"] == "dailydialog"
    assert body["messages"] == [{"role": m.role, "content": m.content} for m in CHAT]
    assert (body["temperature"], body["top_p"], body["top_k"]) == (0.5, 0.8, 20)
    assert (body["max_tokens"], body["seed"], body["stop"]) == (33, 9, ["Alice:", "\nBob:"])
    assert body["stream"] is False
    penalties = {k: v for k, v in body.items() if k in ("repetition_penalty", "repeat_penalty")}
    expected = {
        "vllm": {"repetition_penalty": 1.2},
        "llama.cpp": {"repeat_penalty": 1.2},
        "plain": {"repetition_penalty": 1.2, "repeat_penalty": 1.2},
    }
    assert penalties == expected[flavour]
    assert fake.headers[0]["Authorization"] == f"Bearer {API_KEY}"
    assert generator.dialect == {"plain": "unknown"}.get(flavour, flavour)
    assert "dailydialog" in generator.name and API_KEY not in generator.name


@pytest.mark.parametrize(
    ("flavour", "setting", "expected"),
    [
        ("vllm", None, 8192),  # /v1/models max_model_len
        ("llama.cpp", None, 8192),  # /props n_ctx
        ("plain", None, DEFAULT_CONTEXT_WINDOW),
        ("vllm", 4096, 4096),  # the setting wins
    ],
)
async def test_context_window_comes_from_the_setting_or_the_server(
    fake: FakeOpenAIServer,
    make_settings: SettingsFactory,
    flavour: Flavour,
    setting: int | None,
    expected: int,
) -> None:
    fake.flavour = flavour
    generator = await fake_generator(fake, make_settings, openai_context_window=setting)
    try:
        assert generator.context_window == expected
    finally:
        await generator.aclose()


async def test_a_model_the_server_does_not_serve_is_a_config_error(
    fake: FakeOpenAIServer, make_settings: SettingsFactory
) -> None:
    with pytest.raises(ConfigError) as caught:
        await fake_generator(fake, make_settings, openai_lora="pirate")
    message = str(caught.value)
    assert "PERSONABOT_OPENAI_LORA='pirate'" in message and "dailydialog" in message


async def test_busy_answers_are_retried_before_the_first_token(
    fake: FakeOpenAIServer, make_settings: SettingsFactory
) -> None:
    generator = await fake_generator(fake, make_settings, openai_max_retries=2)
    try:
        fake.fail_next(503, times=2, retry_after="0")
        assert (await generator.generate(CHAT, SamplingParams())).text == fake.reply
        assert len(fake.requests) == 3

        fake.fail_next(429, times=3, retry_after="0", message="too many requests")
        with pytest.raises(GenerationError, match="HTTP 429") as caught:
            await generator.generate(CHAT, SamplingParams())
        assert "gave up after 3 attempt(s)" in str(caught.value)
        assert caught.value.__cause__ is not None
        assert len(fake.requests) == 6
    finally:
        await generator.aclose()


async def test_a_server_error_is_not_retried_and_the_user_gets_the_apology(
    fake: FakeOpenAIServer, make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    settings = openai_settings(make_settings, fake.base_url, mood_detector="lexicon")
    generator = await create_openai_generator(settings, counter=ESTIMATE)
    engine = await build_engine(settings, generator=generator)
    try:
        fake.fail_next(500, message="CUDA error: an illegal memory access was encountered")
        with caplog.at_level(logging.ERROR), pytest.raises(GenerationError) as caught:
            await engine.reply(conv("500"), ALICE, "Hello?")
        assert str(caught.value) == APOLOGY
        assert "HTTP 500" in caplog.text and "illegal memory access" in caplog.text
        assert len(fake.requests) == 1
        assert (await engine.reply(conv("500"), ALICE, "Hello again?")).text == fake.reply
    finally:
        await engine.aclose()


async def test_an_error_mid_stream_ends_the_stream_with_a_generation_error(
    fake: FakeOpenAIServer, make_settings: SettingsFactory
) -> None:
    fake.stream_error_after = 2
    generator = await fake_generator(fake, make_settings)
    pieces: list[str] = []
    try:
        with pytest.raises(GenerationError, match="failed mid-reply") as caught:
            async for piece in generator.stream(CHAT, SamplingParams()):
                pieces.append(piece)
        assert caught.value.__cause__ is not None
    finally:
        await generator.aclose()
    assert pieces == ["Hello", " there,"]
    assert fake.requests[0]["stream"] is True


async def test_a_persona_adapter_is_asked_for_by_its_directory_name(
    fake: FakeOpenAIServer, make_settings: SettingsFactory
) -> None:
    generator = await fake_generator(fake, make_settings)
    try:
        await generator.generate(CHAT, SamplingParams(adapter="/srv/adapters/dailydialog"))
        await generator.generate(CHAT, SamplingParams())
    finally:
        await generator.aclose()
    assert [body["model"] for body in fake.requests] == [
        "dailydialog",
        "mistralai/Mistral-7B-Instruct-v0.2",  # no OPENAI_MODEL: the first one served
    ]


def test_backend_settings_are_checked() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env={"PERSONABOT_GENERATOR_BACKEND": "vllm"})
    assert "PERSONABOT_GENERATOR_BACKEND" in str(caught.value) and "'openai'" in str(caught.value)
    with pytest.raises(ConfigError, match="PERSONABOT_OPENAI_BASE_URL"):
        load_settings(env={"PERSONABOT_OPENAI_BASE_URL": "localhost:8000/v1"})
    settings = load_settings(
        env={"PERSONABOT_GENERATOR_BACKEND": "openai", "PERSONABOT_OPENAI_API_KEY": API_KEY}
    )
    assert settings.openai_api_key is not None and API_KEY not in repr(settings)
