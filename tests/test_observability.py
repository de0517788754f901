"""Structured event lines and the optional Prometheus endpoint, with the real engine."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator

import httpx
import pytest

from core.bootstrap import build_engine
from core.engine import Engine
from core.errors import ConfigError, InputError
from core.generation.local.transformers_generator import TransformersGenerator
from core.types import Author, ConversationRef
from tests.conftest import SettingsFactory, SharedGenerator
from tests.test_reliability import terse_settings
from tests.test_sft_data import MISTRAL_TEMPLATE

ALICE = Author("u1", "Alice")
HERE = ConversationRef("telegram", "42")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
async def engine(
    make_settings: SettingsFactory, offline_generator: TransformersGenerator
) -> AsyncIterator[Engine]:
    built = await build_engine(
        terse_settings(make_settings), generator=SharedGenerator(offline_generator)
    )
    yield built
    await built.aclose()


async def test_each_reply_is_one_event_line_with_its_numbers(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="personabot.events")

    reply = await engine.reply(HERE, ALICE, "I'm so happy today!")
    with pytest.raises(InputError):
        await engine.reply(HERE, ALICE, "   ")

    events = [r for r in caplog.records if r.name == "personabot.events"]
    assert [getattr(r, "event", None) for r in events] == ["reply", "reply_failed"]
    line = events[0].getMessage()
    assert "\n" not in line and line.startswith("event=reply conversation=telegram:42 ")
    fields = events[0].__dict__["fields"]
    assert fields["persona"] == "terse" and "persona=terse" in line
    assert fields["mood"] == reply.mood.mood.value == "happiness"
    assert fields["prompt_tokens"] == reply.prompt_tokens > 0
    assert fields["completion_tokens"] > 0
    assert fields["latency_ms"] >= fields["generation_ms"] >= 0
    assert fields["tokens_per_s"] > 0
    assert fields["user_message"] == reply.user_message_id
    failed = events[1].__dict__["fields"]
    assert (failed["error"], failed["conversation"]) == ("input", "telegram:42")
    assert events[1].levelno == logging.INFO  # refused input is the user's, not an alarm


async def test_reply_tokens_are_counted_under_a_strict_chat_template(
    make_settings: SettingsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Mistral-7B-Instruct's template rejects a chat that opens with the assistant, so a
    reply counted as an assistant turn of its own counted 0 tokens for the production
    model (and a streamed reply cut by its budget would not have been trimmed)."""
    import torch

    from benchmarks.load import RANDOM_MODELS, word_tokenizer
    from benchmarks.random_models import random_mistral
    from core.generation.local.profiles import ModelSpec

    torch.manual_seed(0)
    dims = RANDOM_MODELS["tiny"]
    model = random_mistral(dims, "cpu", torch.float32, bos_token_id=1, eos_token_id=2).eval()
    tokenizer = word_tokenizer(dims["vocab_size"])
    tokenizer.chat_template = MISTRAL_TEMPLATE
    spec = ModelSpec(
        profile="random-tiny",
        source="random weights",
        gguf_file=None,
        converted_dir=None,
        quantization="none",
        adapter=None,
        device="cpu",
        system_role=False,
        compile=False,
    )
    generator = TransformersGenerator(model, tokenizer, spec, system_role=False)
    engine = await build_engine(terse_settings(make_settings), generator=generator)
    caplog.set_level(logging.INFO, logger="personabot.events")
    try:
        partials: list[str] = []
        reply = await engine.reply(HERE, ALICE, "how are you today", on_partial=partials.append)
    finally:
        await engine.aclose()
    fields = next(r for r in caplog.records if getattr(r, "event", None) == "reply").__dict__
    assert reply.text and partials
    assert fields["fields"]["completion_tokens"] > 0


async def test_metrics_endpoint_serves_the_counters_when_enabled(
    make_settings: SettingsFactory, offline_generator: TransformersGenerator
) -> None:
    port = free_port()
    settings = terse_settings(make_settings, metrics_port=port)
    engine = await build_engine(settings, generator=SharedGenerator(offline_generator))
    try:
        await engine.reply(HERE, ALICE, "Hello!")
        await engine.reply(ConversationRef("telegram", "7"), ALICE, "Hi there!")
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{port}/metrics")
    finally:
        await engine.aclose()

    assert response.status_code == 200
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in response.text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples['personabot_requests_total{outcome="ok"}'] == 2
    assert samples["personabot_queue_depth"] == 0
    assert samples["personabot_reply_latency_seconds_count"] == 2
    assert samples["personabot_generation_seconds_count"] == 2
    assert samples["personabot_tokens_per_second_count"] == 2
    assert samples["personabot_generated_tokens_total"] > 0
    with pytest.raises(httpx.ConnectError):  # closed with the engine
        async with httpx.AsyncClient() as client:
            await client.get(f"http://127.0.0.1:{port}/metrics")


async def test_a_metrics_port_in_use_is_a_configuration_error(
    make_settings: SettingsFactory, offline_generator: TransformersGenerator
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = terse_settings(make_settings, metrics_port=taken.getsockname()[1])
        with pytest.raises(ConfigError, match="PERSONABOT_METRICS_PORT"):
            await build_engine(settings, generator=SharedGenerator(offline_generator))


def test_metrics_are_off_unless_a_port_is_set(make_settings: SettingsFactory) -> None:
    assert make_settings().metrics_port is None
