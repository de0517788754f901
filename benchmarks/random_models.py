"""Random-weight models of Mistral-7B's shape, shared by the speed benchmarks.

Speed and memory depend on the shapes, not the values, so the benchmarks build the model
directly on the device with random weights instead of downloading 14 GB from the Hub.
"""

from __future__ import annotations

from typing import Any

MISTRAL_7B_DIMS: dict[str, Any] = {
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 14336,
    "vocab_size": 32000,
    "max_position_embeddings": 32768,
    "rope_theta": 1_000_000.0,
    "sliding_window": None,
}
"""Mistral-7B-Instruct-v0.2's dimensions (no sliding window)."""


def random_mistral(dims: dict[str, Any], device: str, dtype: Any, **config: Any) -> Any:
    """A ``MistralForCausalLM`` of ``dims`` with random weights, created on ``device`` in
    ``dtype`` (seconds for a 7B on a GPU, no fp32 copy on the CPU). ``config`` adds
    ``MistralConfig`` fields (token ids, say)."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    causal_lm: Any = MistralForCausalLM  # untyped in transformers
    with torch.device(device):
        return causal_lm._from_config(
            MistralConfig(**dims, tie_word_embeddings=False, **config), dtype=dtype
        )
