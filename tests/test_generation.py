"""The transformers backend on the real offline model: streaming, cancellation, NF4, LoRA."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from core.generation.local.profiles import build_model_spec
from core.generation.local.transformers_generator import (
    TransformersGenerator,
    load_transformers_generator,
)
from core.types import ChatMessage, SamplingParams
from tests.conftest import SettingsFactory

CHAT = [
    ChatMessage("system", "You are a helpful assistant. Answer briefly."),
    ChatMessage("user", "Name three colours of the rainbow."),
]


async def test_stream_yields_the_same_text_as_generate(
    offline_generator: TransformersGenerator,
) -> None:
    params = SamplingParams(max_new_tokens=40, seed=7)
    whole = await offline_generator.generate(CHAT, params)
    pieces = [piece async for piece in offline_generator.stream(CHAT, params)]
    assert len(pieces) > 1
    assert "".join(pieces).strip() == whole.text.strip()
    assert whole.completion_tokens <= 40 and whole.prompt_tokens == (
        offline_generator.count_tokens(CHAT)
    )


async def test_leaving_a_stream_early_stops_decoding(
    offline_generator: TransformersGenerator,
) -> None:
    params = SamplingParams(max_new_tokens=400, temperature=0.0, repetition_penalty=1.0)
    stream = offline_generator.stream(CHAT, params)
    async for _ in stream:
        break
    started = time.perf_counter()
    await stream.aclose()  # cancels the worker's decoding
    quick = await offline_generator.generate(CHAT, SamplingParams(max_new_tokens=5))
    assert quick.completion_tokens <= 5
    # A 400-token decode on this CPU takes far longer than the rest of it would.
    assert time.perf_counter() - started < 20


async def test_greedy_decoding_is_deterministic(offline_generator: TransformersGenerator) -> None:
    params = SamplingParams(max_new_tokens=20, temperature=0.0)
    first, second = await asyncio.gather(
        offline_generator.generate(CHAT, params), offline_generator.generate(CHAT, params)
    )
    assert first.text == second.text


def test_nf4_quantised_model_loads_and_generates(make_settings: SettingsFactory) -> None:
    pytest.importorskip("bitsandbytes")
    generator = load_transformers_generator(build_model_spec(make_settings(load_in_4bit=True)))
    try:
        assert "nf4" in generator.name
        modules = {type(m).__name__ for m in generator._model.modules()}
        assert "Linear4bit" in modules
        result = asyncio.run(generator.generate(CHAT, SamplingParams(max_new_tokens=8, seed=1)))
        assert result.completion_tokens > 0
    finally:
        asyncio.run(generator.aclose())


def test_lora_adapter_is_applied(make_settings: SettingsFactory, tmp_path: Path) -> None:
    """A real (randomly initialised, non-zero) LoRA adapter changes the model's output."""
    from peft import LoraConfig, get_peft_model

    # The offline profile applies its shipped DailyDialog adapter by default: start bare.
    base = load_transformers_generator(build_model_spec(make_settings(adapter_path="none")))
    adapter_dir = tmp_path / "adapter"
    lora = get_peft_model(
        base._model,
        LoraConfig(
            r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False
        ),
    )
    lora.save_pretrained(str(adapter_dir))
    lora.unload()
    asyncio.run(base.aclose())

    plain = load_transformers_generator(build_model_spec(make_settings(adapter_path="none")))
    adapted = load_transformers_generator(build_model_spec(make_settings(adapter_path=adapter_dir)))
    try:
        assert "adapter adapter" in adapted.name
        params = SamplingParams(max_new_tokens=12, temperature=0.0)
        a = asyncio.run(plain.generate(CHAT, params))
        b = asyncio.run(adapted.generate(CHAT, params))
        assert a.text != b.text
    finally:
        asyncio.run(plain.aclose())
        asyncio.run(adapted.aclose())


async def test_a_reply_ends_where_the_model_opens_the_next_turn(
    offline_generator: TransformersGenerator,
) -> None:
    """The shipped adapter closes its turns with ``<|im_start|>`` rather than the configured
    end-of-sequence ``<|im_end|>``; the reply must stop there, not run on into a made-up
    user turn until the token budget is spent."""
    assert "adapter" in offline_generator.name  # the offline profile's default
    chat = [
        ChatMessage("system", "You are Friend, a warm friend."),
        ChatMessage("user", "I have so much homework tonight, ugh."),
    ]
    params = SamplingParams(max_new_tokens=60, temperature=0.0)
    result = await offline_generator.generate(chat, params)
    assert result.text.strip()
    assert result.completion_tokens < params.max_new_tokens
    assert "\nuser" not in result.text and "\nassistant" not in result.text
    streamed = "".join([piece async for piece in offline_generator.stream(chat, params)])
    assert streamed.strip() == result.text.strip()
