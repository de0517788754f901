"""The static slot KV cache: buckets, per-conversation capacity, and CUDA-graph replay.

The scheduler tests in test_batching.py run every batching behaviour over both running
batches; these cover what only the slot batch has. The CUDA tests run where a GPU is (the
``device`` tool): there the captured graphs must give the same tokens as the eager step.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
import torch

from benchmarks.random_models import random_mistral
from core.errors import GenerationError
from core.generation.batching.batch_scheduler import BatchingConfig
from core.generation.batching.slot_batch import PREFILL_CHUNKS, SlotBatch, buckets, plan_passes
from core.generation.local.quantization import NF4Kernel, Quantization
from core.types import SamplingParams
from tests.test_batching import EOS, GREEDY, hf_generate, prompts, tiny_model, tiny_scheduler

__all__ = ["tiny_model"]  # the fixture, shared with test_batching

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def small_mistral(*, hidden: int, layers: int, intermediate: int, vocab: int) -> Any:
    """A random bf16 Mistral on the CPU (4 query heads sharing 2 key/value heads)."""
    dims = {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": intermediate,
        "vocab_size": vocab,
        "max_position_embeddings": 512,
        "sliding_window": None,
    }
    return random_mistral(dims, "cpu", torch.bfloat16)


def test_buckets_are_powers_of_two_up_to_the_limit() -> None:
    assert buckets(32) == [1, 2, 4, 8, 16, 32]
    assert buckets(24) == [1, 2, 4, 8, 16, 24]
    assert buckets(1) == [1]
    assert buckets(1000, 128) == [128, 256, 512, 1000]


async def test_a_prompt_longer_than_a_slot_is_refused_and_replies_stop_when_it_is_full(
    tiny_model: Any,
) -> None:
    config = BatchingConfig(max_batch_size=2, window_seconds=0)
    scheduler = tiny_scheduler(tiny_model, config, kind="slots")
    batch: Any = scheduler._batch
    (short,) = prompts(1, seed=9)
    too_long = short * (batch.capacity // len(short) + 1)
    params = SamplingParams(temperature=0.0, max_new_tokens=100_000)
    try:
        with pytest.raises(GenerationError, match="MAX_PROMPT_TOKENS"):
            await scheduler.generate(too_long, params)
        result = await scheduler.generate(short, params)
    finally:
        await scheduler.aclose()
    room = batch.capacity - len(short)
    assert result.completion_tokens == room  # the slot filled up; the reply ends there
    expected = hf_generate(tiny_model, short, SamplingParams(temperature=0.0, max_new_tokens=room))
    assert result == expected


def _greedy_rows(
    model: Any,
    batch: SlotBatch,
    inputs: list[list[int]],
    steps: int,
    *,
    forced: list[list[int]] | None = None,
    logits_seen: list[Any] | None = None,
) -> list[list[int]]:
    """Drive the slot batch directly: prefill, then ``steps`` greedy steps; rows 1 and 3
    leave halfway, so the rest are moved down into other slots.

    With ``forced``, row r is fed ``forced[r]`` instead of its own greedy tokens (teacher
    forcing), and ``logits_seen`` collects every pass's logits (the tokens returned are
    still the greedy ones)."""
    out: list[list[int]] = [[] for _ in inputs]
    alive = list(range(len(inputs)))

    def feed(logits: Any, position: int) -> None:
        if logits_seen is not None:
            logits_seen.append(logits.float().cpu())
        tokens = logits.argmax(dim=-1).tolist()
        for row, token in zip(alive, tokens, strict=True):
            out[row].append(token)
        fed = tokens if forced is None else [forced[row][position] for row in alive]
        batch.note_tokens(fed)

    with torch.inference_mode():
        batch.allocate_for(model)
        feed(batch.add(model, inputs), 0)
        for step in range(steps):
            if step == steps // 2:
                keep = [i for i, row in enumerate(alive) if row not in (1, 3)]
                batch.keep(keep)
                alive = [alive[i] for i in keep]
            feed(batch.step(model), step + 1)
    return out


def test_prompts_written_chunk_by_chunk_decode_like_one_padded_pass(tiny_model: Any) -> None:
    """Prompts encoded into their slots chunk by chunk (as the GPU's captured prompt graphs
    do, several chunks for the longest) continue exactly as after one padded pass."""
    rng = torch.Generator().manual_seed(11)
    lengths = [5, 70, 300, 530]
    inputs = [torch.randint(3, 300, (n,), generator=rng).tolist() for n in lengths]
    chunked = SlotBatch(8, 700, 300, 0, graphs=False, padded_prefill_rows=None)
    padded = SlotBatch(8, 700, 300, 0, graphs=False, padded_prefill_rows=1)
    assert _greedy_rows(tiny_model, chunked, inputs, 12) == _greedy_rows(
        tiny_model, padded, inputs, 12
    )


def _padded_tokens(plan: list[list[tuple[int, int]]], rows: list[int]) -> int:
    """What a plan computes: each pass's rows bucket times its chunk bucket."""
    return sum(
        min(r for r in rows if r >= len(group))
        * min(c for c in PREFILL_CHUNKS if c >= max(size for _, size in group))
        for group in plan
    )


def test_prompt_pieces_cover_each_prompt_in_order_within_the_pass_limit() -> None:
    remaining = [5, 70, 300, 530]
    rows = buckets(8)
    plan = plan_passes(remaining, PREFILL_CHUNKS, rows, 2048)
    done = [0] * len(remaining)
    for group in plan:
        assert _padded_tokens([group], rows) <= 2048
        for i, size in group:
            assert 0 < size <= remaining[i] - done[i]
            done[i] += size
    assert done == remaining
    # Long prompts have several pieces in one pass; the test above decodes after this plan.
    assert any(sum(1 for i, _ in group if i == 3) > 1 for group in plan)


def test_a_burst_of_short_and_long_prompts_pads_less_than_one_chunk_per_prompt() -> None:
    """A burst as the load benchmark admits it: prompts whose earlier turns are cached
    (a dozen new tokens) among others that diverge after the persona's instructions (about
    90). One chunk per prompt per pass padded all 13 to 128 tokens in a pass of 16 rows:
    2,048 tokens computed for 967."""
    remaining = [12, 91, 66, 89, 99, 66, 88, 91, 92, 99, 12, 71, 91]
    rows = buckets(32)
    plan = plan_passes(remaining, PREFILL_CHUNKS, rows, 2048)
    assert sum(size for group in plan for _, size in group) == sum(remaining)
    assert _padded_tokens(plan, rows) <= 1280


@cuda
@pytest.mark.parametrize(
    ("quantization", "nf4_kernel"),
    [
        ("none", "bitsandbytes"),
        ("nf4", "bitsandbytes"),
        ("nf4", "triton"),
        ("int4", "bitsandbytes"),
        ("gemlite", "bitsandbytes"),
    ],
)
def test_cuda_graph_replay_gives_the_eager_tokens(
    quantization: Quantization, nf4_kernel: NF4Kernel
) -> None:
    """The captured step (graphs=True) and the eager one agree token for token, in bf16
    and in every 4-bit format (bitsandbytes NF4, torchao int4 and GemLite's Triton kernels
    inside a CUDA graph); NF4 on the fused Triton kernel and GemLite agree on logits."""
    from core.generation.local.quantization import (
        gemlite_unavailable_reason,
        int4_unavailable_reason,
        quantize,
    )

    check = {"int4": int4_unavailable_reason, "gemlite": gemlite_unavailable_reason}
    reason = check[quantization]("cuda") if quantization in check else None
    if reason is not None:
        pytest.skip(reason)
    if quantization == "gemlite":
        import gemlite

        # GemLite's default kernel settings, not its tuning (tens of seconds for each new row
        # count, and this test meets a dozen): what is checked is the graph, not the speed.
        gemlite.set_autotune("default")
    torch.manual_seed(0)
    model = small_mistral(hidden=256, layers=2, intermediate=512, vocab=320)
    quantize(model, quantization, "cuda", nf4_kernel=nf4_kernel)
    model.to("cuda").eval()
    inputs = prompts(5, seed=10)
    setups = ((False, 1), (True, 1), (True, None))
    if quantization == "gemlite" or nf4_kernel == "triton":
        # GemLite's split-K kernels add partial sums with atomics, so two runs of the same
        # pass differ in the last bits and greedy tokens part at the first near tie; the
        # fused NF4 kernel takes passes of up to 64 rows and bitsandbytes larger ones, so
        # a padded prompt pass and prompt chunks sum in different orders (seen on an H200:
        # a row's second token parted). So
        # every setup is fed the eager run's tokens and its logits are compared instead
        # (within 5% of the largest: in bf16 on a CPU the padded and the chunked prompt
        # passes alone differ by up to 0.75%; a broken graph is off by the whole range).
        forced = _greedy_rows(model, SlotBatch(8, 256, 320, 0, graphs=False), inputs, 24)
        seen: list[list[Any]] = []
        for graphs, padded_rows in setups:
            batch = SlotBatch(8, 256, 320, 0, graphs=graphs, padded_prefill_rows=padded_rows)
            seen.append([])
            _greedy_rows(model, batch, inputs, 24, forced=forced, logits_seen=seen[-1])
            assert not graphs or batch.captures > 0
        for eager, graphed in zip(seen[0], seen[1], strict=True):
            assert (eager - graphed).abs().max() <= 0.05 * eager.abs().max()
        for eager, graphed in zip(seen[0], seen[2], strict=True):
            assert (eager - graphed).abs().max() <= 0.05 * eager.abs().max()
        return
    results = []
    for graphs, padded_rows in setups:
        # Eager with one padded prefill; graphs with it; graphs with prompt-chunk graphs.
        batch = SlotBatch(8, 256, 320, 0, graphs=graphs, padded_prefill_rows=padded_rows)
        results.append(_greedy_rows(model, batch, inputs, 24))
        if graphs:
            assert batch.captures > 0
    assert results[0] == results[1] == results[2]


@cuda
def test_cuda_fused_nf4_steps_give_bitsandbytes_logits() -> None:
    """Decode steps on the fused Triton NF4 kernel (PERSONABOT_NF4_KERNEL=triton), captured
    in graphs, against bitsandbytes' own kernels on the same weights: both are fed the
    bitsandbytes run's tokens and their logits compared (the two sum in different orders,
    so greedy tokens may part at a near tie; a wrong nibble or scale is off by the range)."""
    from core.generation.local.nf4_triton import FusedNF4Linear
    from core.generation.local.quantization import quantize

    def model(kernel: Any) -> Any:
        torch.manual_seed(0)
        built = small_mistral(hidden=256, layers=2, intermediate=512, vocab=320)
        quantize(built, "nf4", "cuda", nf4_kernel=kernel)
        return built.to("cuda").eval()

    fused, plain = model("triton"), model("bitsandbytes")
    assert any(isinstance(m, FusedNF4Linear) for m in fused.modules())
    assert not any(isinstance(m, FusedNF4Linear) for m in plain.modules())
    inputs = prompts(5, seed=10)
    forced = _greedy_rows(plain, SlotBatch(8, 256, 320, 0, graphs=False), inputs, 24)
    seen: dict[str, list[Any]] = {"fused": [], "plain": []}
    for name, built in (("fused", fused), ("plain", plain)):
        batch = SlotBatch(8, 256, 320, 0, graphs=True)
        _greedy_rows(built, batch, inputs, 24, forced=forced, logits_seen=seen[name])
        assert batch.captures > 0
    for got, expected in zip(seen["fused"], seen["plain"], strict=True):
        assert (got - expected).abs().max() <= 0.02 * expected.abs().max()


@cuda
def test_cuda_prepare_captures_every_bucket_once() -> None:
    model = small_mistral(hidden=64, layers=1, intermediate=128, vocab=300).to("cuda").eval()
    batch = SlotBatch(4, 300, 300, 0, graphs=True)
    with torch.inference_mode():
        batch.allocate_for(model)
        batch.prepare(model, None)
    decode_graphs = len(buckets(4)) * len(buckets(300, 128))
    # Chunks 32, 64, 128, 256 at widths 128, 256, 300 >= chunk, for 1, 2 and 4 prompts.
    prompt_graphs = (3 + 3 + 3 + 2) * 3
    assert batch.captures == decode_graphs + prompt_graphs
    assert batch.rows == 0


# -- prefix reuse ---------------------------------------------------------------------------------


def hf_reply_ids(model: Any, ids: list[int], new_tokens: int) -> list[int]:
    """transformers' greedy reply to ``ids``, as token ids (the end-of-turn token included)."""
    with torch.inference_mode():
        out = model.generate(
            input_ids=torch.tensor([ids], device=model.device),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=model.device),
            max_new_tokens=new_tokens,
            do_sample=False,
            eos_token_id=EOS,
            pad_token_id=0,
        )
    return [int(t) for t in out[0][len(ids) :]]


async def test_the_next_message_reuses_the_conversation_slot_and_decodes_the_same(
    tiny_model: Any,
) -> None:
    """A conversation's second prompt (first prompt, reply, new message) starts from the
    keys and values its slot kept, even after three other conversations ran meanwhile with
    its slot as a padding row of their batch-size bucket, and decodes exactly as from
    scratch."""
    scheduler = tiny_scheduler(
        tiny_model, BatchingConfig(max_batch_size=4, window_seconds=0.05), kind="slots"
    )
    first = list(range(10, 40))
    try:
        assert await scheduler.generate(first, GREEDY) == hf_generate(tiny_model, first, GREEDY)
        others = [[7, *p] for p in prompts(3, seed=4)]  # never starting like ``first``
        results = await asyncio.gather(*(scheduler.generate(p, GREEDY) for p in others))
        assert scheduler.stats.peak_rows == 3  # slot 3, holding ``first``, ran as padding
        assert results == [hf_generate(tiny_model, p, GREEDY) for p in others]
        reply = hf_reply_ids(tiny_model, first, GREEDY.max_new_tokens)
        second = [*first, *reply, 41, 42, 43, 44]
        assert scheduler.stats.reused_tokens == 0
        assert await scheduler.generate(second, GREEDY) == hf_generate(tiny_model, second, GREEDY)
    finally:
        await scheduler.aclose()
    # Every token but the reply's last, which was sampled and never fed.
    assert scheduler.stats.reused_tokens == len(first) + len(reply) - 1


async def test_a_shared_start_is_copied_and_its_owner_keeps_its_slot(tiny_model: Any) -> None:
    """A prompt sharing only its start with a kept conversation (the persona's instructions,
    say) gets that start copied into another slot; the kept conversation's next message
    still finds all of its own tokens."""
    scheduler = tiny_scheduler(
        tiny_model, BatchingConfig(max_batch_size=4, window_seconds=0), kind="slots"
    )
    owner = list(range(10, 50))
    other = [*owner[:8], 200, 201, 202, 203]
    try:
        await scheduler.generate(owner, GREEDY)
        assert await scheduler.generate(other, GREEDY) == hf_generate(tiny_model, other, GREEDY)
        assert scheduler.stats.reused_tokens == 8
        reply = hf_reply_ids(tiny_model, owner, GREEDY.max_new_tokens)
        follow_up = [*owner, *reply, 60, 61]
        result = await scheduler.generate(follow_up, GREEDY)
    finally:
        await scheduler.aclose()
    assert result == hf_generate(tiny_model, follow_up, GREEDY)
    assert scheduler.stats.reused_tokens == 8 + len(owner) + len(reply) - 1


async def test_keys_and_values_are_reused_only_under_the_same_adapter(tiny_model: Any) -> None:
    """A LoRA adapter changes every layer's keys and values: a slot kept under one adapter
    is no prefix for a prompt under another."""
    scheduler = tiny_scheduler(
        tiny_model, BatchingConfig(max_batch_size=2, window_seconds=0), kind="slots"
    )
    ids = list(range(10, 30))
    persona = dataclasses.replace(GREEDY, adapter="adapters/pirate")
    try:
        await scheduler.generate(ids, GREEDY)
        await scheduler.generate([*ids, 31], persona)
        assert scheduler.stats.reused_tokens == 0
        await scheduler.generate([*ids, 31], GREEDY)
    finally:
        await scheduler.aclose()
    assert scheduler.stats.reused_tokens == len(ids)


def _two_turns(model: Any, batch: SlotBatch) -> list[list[int]]:
    """Drive the batch as the scheduler does: one conversation, three others beside it,
    then the first one's next message; every reply's greedy tokens."""
    replies: list[list[int]] = []

    def run(inputs: list[list[int]], steps: int) -> None:
        logits = batch.add(model, inputs)
        out = [[t] for t in logits.argmax(dim=-1).tolist()]
        for _ in range(steps):
            batch.note_tokens([row[-1] for row in out])
            for row, token in zip(out, batch.step(model).argmax(dim=-1).tolist(), strict=True):
                row.append(token)
        batch.keep([])
        replies.extend(out)

    first = list(range(10, 140))
    with torch.inference_mode():
        batch.allocate_for(model)
        batch.prepare(model, None)
        run([first], 20)
        run([[7, *p] for p in prompts(3, seed=4)], 30)
        run([[*first, *replies[0][:-1], 41, 42]], 20)
    return replies


def test_prefix_reuse_gives_the_tokens_of_a_fresh_prompt(tiny_model: Any) -> None:
    reusing = SlotBatch(4, 256, 300, 0, graphs=False)
    fresh = SlotBatch(4, 256, 300, 0, graphs=False, reuse_prefixes=False)
    assert _two_turns(tiny_model, reusing) == _two_turns(tiny_model, fresh)
    assert reusing.reused_tokens == 130 + 20 and fresh.reused_tokens == 0


@cuda
def test_cuda_prefix_reuse_gives_the_tokens_of_a_fresh_prompt() -> None:
    """With captured graphs, a kept slot survives other conversations' steps (as a parked
    padding row) and its reuse decodes what encoding the whole prompt again decodes."""
    torch.manual_seed(0)
    dims = {
        "hidden_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 256,
        "vocab_size": 300,
        "max_position_embeddings": 512,
        "sliding_window": None,
    }
    model = random_mistral(dims, "cuda", torch.float32).eval()
    reusing = SlotBatch(4, 256, 300, 0, graphs=True)
    fresh = SlotBatch(4, 256, 300, 0, graphs=True, reuse_prefixes=False)
    assert _two_turns(model, reusing) == _two_turns(model, fresh)
    assert reusing.reused_tokens == 130 + 20 and fresh.reused_tokens == 0
