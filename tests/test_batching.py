"""Continuous batching: same tokens as unbatched decoding, per-request settings, cancellation,
back-pressure and streaming, on a tiny random Mistral (fast) and on the real offline model.

The reference for "unbatched" is transformers' own ``generate`` with one prompt at a time,
so these tests also check the scheduler's decode loop against the library's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
import torch

from bots.terminal import TerminalChat
from core.bootstrap import build_engine
from core.engine import BUSY, Engine
from core.errors import GeneratorBusyError
from core.generation.batching.batch_scheduler import BatchingConfig, BatchScheduler, ModelFacts
from core.generation.batching.slot_batch import SlotBatch
from core.generation.generator import Generation
from core.generation.local.transformers_generator import TransformersGenerator, model_facts
from core.generation.sampling import BatchSampler, RowSampler
from core.types import Author, ChatMessage, ConversationRef, SamplingParams
from tests.conftest import SettingsFactory
from tests.test_reliability import terse_settings

GREEDY = SamplingParams(temperature=0.0, repetition_penalty=1.0, max_new_tokens=12)
EOS = 2


# -- a tiny random model: fast checks of the decode loop itself -----------------------------------


@pytest.fixture(scope="module")
def tiny_model() -> Any:
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=300,
        max_position_embeddings=512,
        sliding_window=None,
        eos_token_id=EOS,
        pad_token_id=0,
    )
    model: Any = MistralForCausalLM(config)
    model.eval()
    model.generation_config.pad_token_id = 0
    return model


def tiny_decode(ids: Sequence[int]) -> str:
    """A stand-in tokenizer: one letter per token (the EOS token writes nothing)."""
    return "".join(chr(ord("a") + i % 26) for i in ids if i != EOS)


SLOT_CAPACITY = 512
"""Tokens per conversation in the slot batch's cache (the tiny model's context window)."""


def tiny_scheduler(
    model: Any,
    config: BatchingConfig,
    adapters: list[str | None] | None = None,
    *,
    kind: str = "padded",
) -> BatchScheduler:
    def select(adapter: str | None) -> Any:
        if adapters is not None:
            adapters.append(adapter)
        return model

    facts = ModelFacts(frozenset({EOS}), 0, model.config.vocab_size, tiny_decode)
    batch = None
    if kind == "slots":
        batch = SlotBatch(
            config.max_batch_size, SLOT_CAPACITY, model.config.vocab_size, 0, graphs=True
        )
    return BatchScheduler(select, facts, config, batch=batch)


SchedulerFactory = Callable[..., BatchScheduler]


@pytest.fixture(params=["padded", "slots"])
def make_scheduler(request: pytest.FixtureRequest, tiny_model: Any) -> SchedulerFactory:
    """The scheduler over either running batch: a padded dynamic cache, or static slots
    (eager here on the CPU; the same step is what the GPU captures as a CUDA graph)."""

    def make(config: BatchingConfig, adapters: list[str | None] | None = None) -> BatchScheduler:
        return tiny_scheduler(tiny_model, config, adapters, kind=request.param)

    return make


def prompts(count: int, seed: int = 1) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, 300) for _ in range(rng.randrange(2, 40))] for _ in range(count)]


def hf_generate(model: Any, ids: list[int], params: SamplingParams) -> Generation:
    """transformers' own greedy decoding of one prompt: the unbatched reference."""
    with torch.inference_mode():
        out = model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=params.max_new_tokens,
            do_sample=False,
            repetition_penalty=params.repetition_penalty,
            eos_token_id=EOS,
            pad_token_id=0,
        )
    new = out[0][len(ids) :].tolist()
    return Generation(tiny_decode(new), len(ids), len(new))


async def wait_for(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def test_batched_greedy_matches_generate_one_at_a_time(
    tiny_model: Any, make_scheduler: SchedulerFactory
) -> None:
    inputs = prompts(8)
    params = [
        SamplingParams(temperature=0.0, repetition_penalty=[1.0, 1.3][i % 2], max_new_tokens=20)
        for i in range(len(inputs))
    ]
    expected = [hf_generate(tiny_model, ids, p) for ids, p in zip(inputs, params, strict=True)]
    scheduler = make_scheduler(BatchingConfig(max_batch_size=8, window_seconds=0.2))
    try:
        results = await asyncio.gather(
            *(scheduler.generate(ids, p) for ids, p in zip(inputs, params, strict=True))
        )
    finally:
        await scheduler.aclose()
    assert results == expected
    assert scheduler.stats.prefills == 1 and scheduler.stats.peak_rows == 8


async def test_requests_join_a_running_batch_and_leave_it_when_done(
    tiny_model: Any, make_scheduler: SchedulerFactory
) -> None:
    inputs = prompts(6, seed=2)
    lengths = [5, 30, 12, 30, 1, 18]
    params = [SamplingParams(temperature=0.0, max_new_tokens=n) for n in lengths]
    expected = [hf_generate(tiny_model, ids, p) for ids, p in zip(inputs, params, strict=True)]
    scheduler = make_scheduler(BatchingConfig(max_batch_size=4, window_seconds=0))

    async def later(i: int) -> Generation:
        await asyncio.sleep(0.002 * i)
        return await scheduler.generate(inputs[i], params[i])

    try:
        results = await asyncio.gather(*(later(i) for i in range(len(inputs))))
    finally:
        await scheduler.aclose()
    assert results == expected
    assert scheduler.stats.prefills > 1  # later requests were admitted mid-batch
    assert 1 < scheduler.stats.peak_rows <= 4


async def test_each_row_keeps_its_own_sampling_settings(
    tiny_model: Any, make_scheduler: SchedulerFactory
) -> None:
    greedy, other = prompts(2, seed=3)
    sampled = SamplingParams(
        temperature=1.3, top_p=0.8, top_k=40, repetition_penalty=1.2, max_new_tokens=25, seed=11
    )
    short = SamplingParams(temperature=0.0, max_new_tokens=3)
    scheduler = make_scheduler(BatchingConfig(max_batch_size=8, window_seconds=0.2))
    try:
        alone_greedy = await scheduler.generate(greedy, GREEDY)
        alone_sampled = await scheduler.generate(other, sampled)
        stop_at = alone_greedy.text[4:6]
        stopping = SamplingParams(temperature=0.0, max_new_tokens=12, stop=(stop_at,))
        together = await asyncio.gather(
            scheduler.generate(greedy, GREEDY),
            scheduler.generate(other, sampled),
            scheduler.generate(greedy, short),
            scheduler.generate(greedy, stopping),
            scheduler.generate(other, SamplingParams(temperature=1.3, max_new_tokens=25, seed=12)),
        )
    finally:
        await scheduler.aclose()
    assert scheduler.stats.peak_rows == 5
    assert together[0] == alone_greedy
    assert together[1] == alone_sampled  # a seeded row draws from its own random stream
    assert together[2].completion_tokens == 3 and alone_greedy.text.startswith(together[2].text)
    stopped = together[3].text
    assert stop_at in stopped and alone_greedy.text.startswith(stopped)
    assert len(stopped) < len(alone_greedy.text)
    assert together[4].text != together[1].text  # another seed, another reply


async def test_cancelling_one_row_leaves_the_others_unchanged(
    tiny_model: Any, make_scheduler: SchedulerFactory
) -> None:
    first, second, third = prompts(3, seed=4)
    params = SamplingParams(temperature=0.0, max_new_tokens=60)
    endless = SamplingParams(temperature=0.0, max_new_tokens=100_000)
    expected = [hf_generate(tiny_model, ids, params) for ids in (first, third)]
    scheduler = make_scheduler(BatchingConfig(max_batch_size=8, window_seconds=0.2))
    try:
        a = asyncio.create_task(scheduler.generate(first, params))
        b = asyncio.create_task(scheduler.generate(second, endless))
        c = asyncio.create_task(scheduler.generate(third, params))
        await wait_for(lambda: scheduler.running == 3)
        b.cancel()
        await wait_for(lambda: scheduler.running <= 2)
        steps = scheduler.stats.steps
        assert [await a, await c] == expected
        with pytest.raises(asyncio.CancelledError):
            await b
        # Two rows for the rest of the batch's steps; the endless row is gone.
        await wait_for(lambda: scheduler.running == 0)
        assert scheduler.stats.steps - steps <= 60
    finally:
        await scheduler.aclose()


async def test_a_full_queue_refuses_at_once_and_recovers(
    tiny_model: Any, make_scheduler: SchedulerFactory
) -> None:
    first, second, third = prompts(3, seed=5)
    config = BatchingConfig(max_batch_size=1, window_seconds=0, max_queued=1)
    scheduler = make_scheduler(config)
    try:
        stream = scheduler.stream(first, SamplingParams(temperature=0.0, max_new_tokens=100_000))
        await anext(stream)  # decoding: the batch is full
        waiting = asyncio.create_task(scheduler.generate(second, GREEDY))
        await wait_for(lambda: scheduler.waiting == 1)
        started = time.perf_counter()
        with pytest.raises(GeneratorBusyError, match="MAX_QUEUED_REQUESTS=1"):
            await scheduler.generate(third, GREEDY)
        assert time.perf_counter() - started < 0.5  # refused, not queued
        await stream.aclose()  # the long reply is abandoned; the waiting one goes next
        assert (await waiting) == hf_generate(tiny_model, second, GREEDY)
        assert (await scheduler.generate(third, GREEDY)).completion_tokens > 0
    finally:
        await scheduler.aclose()


async def test_a_batch_never_mixes_adapters_and_the_oldest_goes_first(
    tiny_model: Any, make_scheduler: SchedulerFactory
) -> None:
    inputs = prompts(4, seed=6)
    wanted: list[str | None] = [None, "persona-a", None, "persona-a"]
    activated: list[str | None] = []
    scheduler = make_scheduler(BatchingConfig(max_batch_size=8, window_seconds=0.2), activated)
    try:
        results = await asyncio.gather(
            *(
                scheduler.generate(
                    ids, SamplingParams(temperature=0.0, max_new_tokens=8, adapter=a)
                )
                for ids, a in zip(inputs, wanted, strict=True)
            )
        )
    finally:
        await scheduler.aclose()
    # Arrival order is kept: the second request needs another adapter, so the first batch
    # holds only the first, and the third waits behind the second.
    assert activated == [None, "persona-a", None, "persona-a"]
    assert scheduler.stats.peak_rows == 1
    reference = SamplingParams(temperature=0.0, max_new_tokens=8)
    assert results == [hf_generate(tiny_model, ids, reference) for ids in inputs]


async def test_streaming_yields_the_final_text(
    tiny_model: Any, make_scheduler: SchedulerFactory
) -> None:
    inputs = prompts(3, seed=7)
    params = SamplingParams(temperature=0.9, max_new_tokens=20, seed=3)
    scheduler = make_scheduler(BatchingConfig(max_batch_size=8, window_seconds=0.2))

    async def streamed(ids: list[int]) -> list[str]:
        return [piece async for piece in scheduler.stream(ids, params)]

    try:
        whole = await asyncio.gather(*(scheduler.generate(ids, params) for ids in inputs))
        pieces = await asyncio.gather(*(streamed(ids) for ids in inputs))
    finally:
        await scheduler.aclose()
    for generation, parts in zip(whole, pieces, strict=True):
        assert len(parts) > 1
        assert "".join(parts) == generation.text


def test_per_row_warping_matches_transformers_warpers() -> None:
    """Temperature, top-k and top-p per row give what transformers' warpers give that row."""
    from transformers import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    settings = [(0.7, 50, 0.9), (1.3, 0, 0.8), (1.0, 5, 1.0), (0.5, 0, 1.0), (2.0, 300, 0.5)]
    rows = [
        RowSampler.create(SamplingParams(temperature=t, top_k=k, top_p=p, seed=1))
        for t, k, p in settings
    ]
    torch.manual_seed(0)
    scores = torch.randn(len(rows), 300) * 4
    warped = BatchSampler(rows, 300, "cpu").warp(scores)
    for row, (t, k, p) in enumerate(settings):
        warpers = LogitsProcessorList([TemperatureLogitsWarper(t)])
        if k > 0:
            warpers.append(TopKLogitsWarper(k))
        if p < 1.0:
            warpers.append(TopPLogitsWarper(p))
        no_ids: Any = torch.zeros(1, 1, dtype=torch.long)  # the warpers ignore the ids
        expected = warpers(no_ids, scores[row : row + 1].clone())
        assert torch.equal(warped[row : row + 1], expected), settings[row]
    assert (warped[3] > float("-inf")).all()  # no limits: every token stays possible


# -- the real offline model -----------------------------------------------------------------------

CHATS = [
    [ChatMessage("user", "Hi!")],
    [
        ChatMessage("system", "You are a helpful assistant. Answer briefly."),
        ChatMessage("user", "Name three colours of the rainbow."),
    ],
    [
        ChatMessage("system", "You are a pirate."),
        ChatMessage("user", "I lost my keys this morning and I was late for work."),
        ChatMessage("assistant", "Arr, that be a rough start to the day, matey!"),
        ChatMessage("user", "What should I do so it never happens again?"),
    ],
]


@pytest.fixture(params=[False, True], ids=["padded", "slots"])
async def batched(
    request: pytest.FixtureRequest, offline_generator: TransformersGenerator
) -> AsyncIterator[TransformersGenerator]:
    """A generator of its own over the session's weights (closing it closes nothing shared),
    decoding on a padded dynamic cache or, as ``PERSONABOT_COMPILE`` does on a GPU, on the
    static slot cache (eager on this CPU)."""
    generator = TransformersGenerator(
        offline_generator._model,
        offline_generator._tokenizer,
        dataclasses.replace(offline_generator._spec, compile=request.param),
        offline_generator._system_role,
        batching=BatchingConfig(max_batch_size=8, window_seconds=0.5),
    )
    yield generator
    await generator.aclose()


@pytest.mark.model
async def test_offline_model_batched_greedy_equals_unbatched(
    batched: TransformersGenerator,
) -> None:
    params = SamplingParams(temperature=0.0, repetition_penalty=1.1, max_new_tokens=16)
    model, tokenizer = batched._model, batched._tokenizer
    expected = []
    for chat in CHATS:
        ids = batched._encode(chat)
        with torch.inference_mode():
            out = model.generate(
                input_ids=torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=16,
                do_sample=False,
                repetition_penalty=1.1,
                pad_token_id=tokenizer.pad_token_id,
                # The generator ends a reply at any chat-turn marker, not only at EOS.
                eos_token_id=sorted(model_facts(model, tokenizer).eos_ids),
            )
        expected.append(tokenizer.decode(out[0][len(ids) :], skip_special_tokens=True))
    assert len({len(batched._encode(chat)) for chat in CHATS}) == len(CHATS)

    results = await asyncio.gather(*(batched.generate(chat, params) for chat in CHATS))

    assert [r.text for r in results] == expected
    assert batched.batch_stats.peak_rows == len(CHATS)


@pytest.mark.model
async def test_offline_model_streams_the_same_text_in_a_batch(
    batched: TransformersGenerator,
) -> None:
    params = SamplingParams(max_new_tokens=14, seed=7)  # sampled, seeded

    async def streamed(chat: list[ChatMessage]) -> str:
        return "".join([piece async for piece in batched.stream(chat, params)])

    texts = await asyncio.gather(*(streamed(chat) for chat in CHATS))
    whole = await asyncio.gather(*(batched.generate(chat, params) for chat in CHATS))
    assert texts == [w.text for w in whole]
    assert all(texts)


@pytest.mark.model
async def test_engine_answers_concurrent_conversations_in_batches(
    make_settings: SettingsFactory, offline_generator: TransformersGenerator
) -> None:
    settings = terse_settings(make_settings, max_new_tokens=8, batch_window_ms=300)
    generator = TransformersGenerator(
        offline_generator._model,
        offline_generator._tokenizer,
        offline_generator._spec,
        offline_generator._system_role,
        batching=BatchingConfig.from_settings(settings),
    )
    engine = await build_engine(settings, generator=generator)
    people = [Author(f"u{i}", name) for i, name in enumerate(["Ann", "Bob", "Cid", "Dee"])]
    partials: dict[str, list[str]] = {}

    async def chat(i: int, author: Author) -> list[str]:
        here = ConversationRef("test", f"room-{i}")
        seen = partials.setdefault(here.key(), [])
        replies = []
        for text in ("Hello, how are you?", "Tell me about your day."):
            reply = await engine.reply(here, author, text, on_partial=seen.append)
            replies.append(reply.text)
        return replies

    try:
        replies = await asyncio.gather(*(chat(i, a) for i, a in enumerate(people)))
        for i, texts in enumerate(replies):
            history = await engine.history(ConversationRef("test", f"room-{i}"))
            assert [(m.role, m.text) for m in history if m.role == "assistant"] == [
                ("assistant", t) for t in texts
            ]
            assert [m.role for m in history] == ["user", "assistant"] * 2
            assert all(texts) and partials[f"test:room-{i}"]
        assert generator.batch_stats.peak_rows > 1  # conversations shared decode steps
    finally:
        await engine.aclose()


COUNTING = [ChatMessage("user", "Count from 1 to 200, separated by commas.")]


@pytest.mark.model
async def test_a_busy_model_is_a_polite_try_again(
    make_settings: SettingsFactory, offline_generator: TransformersGenerator
) -> None:
    settings = terse_settings(make_settings, max_batch_size=1, max_queued_requests=0)
    generator = TransformersGenerator(
        offline_generator._model,
        offline_generator._tokenizer,
        offline_generator._spec,
        offline_generator._system_role,
        batching=BatchingConfig.from_settings(settings),
    )
    engine: Engine = await build_engine(settings, generator=generator)
    # Another conversation's long reply holds the only place in the batch.
    counting = generator.stream(COUNTING, SamplingParams(temperature=0.0, max_new_tokens=400))
    here = ConversationRef("test", "busy")
    chat = TerminalChat(
        engine,
        conversation=here,
        author=Author("u2", "Bob"),
        stdin=io.StringIO(),
        stdout=io.StringIO(),
        interactive=False,
    )
    try:
        await anext(counting)
        line = await chat.handle("Hello?")
        assert (line.kind, line.text) == ("error", BUSY)
        assert engine.metrics.errors.labels("busy")._value.get() == 1
        assert [m.text for m in await engine.history(here)] == ["Hello?"]  # nothing lost
        await counting.aclose()
        assert (await chat.handle("And now?")).kind == "reply"
    finally:
        await counting.aclose()
        await engine.aclose()
