"""The static slot KV cache: buckets, per-conversation capacity, and CUDA-graph replay.

The scheduler tests in test_batching.py run every batching behaviour over both running
batches; these cover what only the slot batch has. The CUDA tests run where a GPU is (the
``device`` tool): there the captured graphs must give the same tokens as the eager step.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from benchmarks.random_models import random_mistral
from core.errors import GenerationError
from core.generation.batching import BatchingConfig
from core.generation.slot_batch import SlotBatch, buckets
from core.types import SamplingParams
from tests.test_batching import hf_generate, prompts, tiny_model, tiny_scheduler

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
    model: Any, batch: SlotBatch, inputs: list[list[int]], steps: int
) -> list[list[int]]:
    """Drive the slot batch directly: prefill, then ``steps`` greedy steps; rows 1 and 3
    leave halfway, so the rest are moved down into other slots."""
    out: list[list[int]] = [[] for _ in inputs]
    alive = list(range(len(inputs)))
    with torch.inference_mode():
        batch.allocate_for(model)
        logits = batch.add(model, inputs)
        tokens = logits.argmax(dim=-1).tolist()
        batch.note_tokens(tokens)
        for row, token in zip(alive, tokens, strict=True):
            out[row].append(token)
        for step in range(steps):
            if step == steps // 2:
                keep = [i for i, row in enumerate(alive) if row not in (1, 3)]
                batch.keep(keep)
                alive = [alive[i] for i in keep]
            tokens = batch.step(model).argmax(dim=-1).tolist()
            batch.note_tokens(tokens)
            for row, token in zip(alive, tokens, strict=True):
                out[row].append(token)
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


@cuda
@pytest.mark.parametrize("quantization", ["none", "nf4", "int4"])
def test_cuda_graph_replay_gives_the_eager_tokens(quantization: str) -> None:
    """The captured step (graphs=True) and the eager one agree token for token, in bf16
    and in both 4-bit formats (bitsandbytes NF4 and torchao int4 inside a CUDA graph)."""
    from core.generation.quantization import quantize_int4, quantize_nf4, torchao_available

    if quantization == "int4" and not torchao_available():
        pytest.skip("int4 needs torchao")
    torch.manual_seed(0)
    model = small_mistral(hidden=256, layers=2, intermediate=512, vocab=320)
    if quantization == "nf4":
        quantize_nf4(model, "cuda")
    elif quantization == "int4":
        quantize_int4(model, "cuda")
    model.to("cuda").eval()
    inputs = prompts(5, seed=10)
    results = []
    for graphs, padded_rows in ((False, 1), (True, 1), (True, None)):
        # Eager with one padded prefill; graphs with it; graphs with prompt-chunk graphs.
        batch = SlotBatch(8, 256, 320, 0, graphs=graphs, padded_prefill_rows=padded_rows)
        results.append(_greedy_rows(model, batch, inputs, 24))
        if graphs:
            assert batch.captures > 0
    assert results[0] == results[1] == results[2]


@cuda
def test_cuda_prepare_captures_every_bucket_once() -> None:
    model = small_mistral(hidden=64, layers=1, intermediate=128, vocab=300).to("cuda").eval()
    batch = SlotBatch(4, 300, 300, 0, graphs=True)
    with torch.inference_mode():
        batch.allocate_for(model)
        batch.prepare(model, None)
    decode_graphs = len(buckets(4)) * len(buckets(300, 128))
    prompt_graphs = 3 + 3 + 3 + 2  # chunks 32, 64, 128, 256 at widths 128, 256, 300 >= chunk
    assert batch.captures == decode_graphs + prompt_graphs
    assert batch.rows == 0
