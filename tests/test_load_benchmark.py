"""The load generator runs end to end on a toy random model and reports what it promises."""

from __future__ import annotations

import json

import pytest

from benchmarks import load


def test_load_benchmark_smoke_run_on_a_tiny_random_model(
    capsys: pytest.CaptureFixture[str],
) -> None:
    load.main(
        [
            "--random-model",
            "tiny",
            "--device",
            "cpu",
            "--conversations",
            "3",
            "--messages",
            "2",
            "--max-new-tokens",
            "6",
            "--batch-window-ms",
            "200",
            "--warmup",
            "0",
            "--json",
        ]
    )
    result = json.loads(capsys.readouterr().out)
    assert result["replies"] == 6 and result["busy_refusals"] == 0
    assert result["generator"].startswith("random-tiny (cpu")
    assert 0 < result["reply_p50_s"] <= result["reply_p95_s"]
    assert 0 < result["first_text_p50_s"] <= result["first_text_p95_s"] <= result["reply_p95_s"]
    # Random weights rarely write the end-of-turn token: replies run to the budget.
    assert result["completion_tokens"] == 6 * 6
    assert 0 <= result["outside_generation_p50_s"] <= result["reply_p50_s"]
    # The padded cache (the CPU default) encodes every prompt in full.
    assert result["prompt_tokens"] > 0 and result["reused_prompt_tokens"] == 0


def test_load_benchmark_on_the_slot_cache_reuses_each_conversations_prompt(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--graphs`` (the GPU's decode path, eager on a CPU): each conversation's second
    message starts from the keys and values its first prompt and reply left."""
    load.main(
        [
            *("--random-model", "tiny", "--device", "cpu", "--graphs"),
            *("--conversations", "2", "--messages", "2", "--max-new-tokens", "6"),
            *("--warmup", "0", "--json"),
        ]
    )
    result = json.loads(capsys.readouterr().out)
    assert result["replies"] == 4
    assert "static KV cache" in result["generator"]
    assert 0 < result["reused_prompt_tokens"] < result["prompt_tokens"]
    assert result["tokens_per_s"] > 0
    assert 1 <= result["mean_batch_size"] <= result["peak_batch_size"] <= 3
    assert "peak_gpu_memory_gb" not in result  # CPU run


def test_random_model_tokenizer_has_mistral_format_and_exact_vocabulary() -> None:
    tokenizer = load.word_tokenizer(2000)
    assert len(tokenizer) == 2000
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello, how are you?"}], tokenize=False
    )
    assert ids.startswith("<s>[INST] Hello, how are you? [/INST]")
    encoded = tokenizer("Hi! How are you doing today?", add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in encoded  # the script's words are in the vocabulary
    assert tokenizer.decode([1999, 1500], skip_special_tokens=True).strip()
