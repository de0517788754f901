"""Static KV cache + torch.compile (CUDA graphs) for decoding with ``generate``.

Why: at batch 1 a 7B model's decode step is a few hundred small kernels, and launching them
one by one from Python costs more than the GPU takes to run them (see
docs/benchmarks.md#decode-speed-gpu). A static cache gives every step the same tensor shapes,
so transformers' ``generate`` compiles the step once with ``mode="reduce-overhead"`` and
replays it as one CUDA graph.

Costs to know: the first reply after start-up, and the first at each new batch size or
larger cache, waits for the compilation (long for a 7B model); the cache only ever
grows, so this settles after a few replies. transformers compiles only on GPUs: on a CPU the
static cache is used without compilation, which gains nothing, so the loader refuses it there.
"""

from __future__ import annotations

from typing import Any

COMPILE_MODE = "reduce-overhead"
"""torch.compile mode: inductor kernels captured into CUDA graphs."""


def enable_compiled_decoding(model: Any, *, fullgraph: bool = False) -> None:
    """Make ``model.generate`` decode with a static KV cache and a compiled forward step.

    ``fullgraph=False`` lets torch.compile split the graph where a layer cannot be traced
    (bitsandbytes' NF4 layers) instead of failing; fully traceable models (bf16, torchao
    int4) compile into one graph either way.
    """
    from transformers import CompileConfig

    config = model.generation_config
    config.cache_implementation = "static"
    config.compile_config = CompileConfig(fullgraph=fullgraph, mode=COMPILE_MODE)
