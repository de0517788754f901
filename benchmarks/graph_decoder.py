"""Greedy decoding whose whole one-token step is one CUDA graph, for the decode benchmarks.

Only :mod:`benchmarks.decode_speed` decodes this way: serving uses the batching scheduler and
``personabot eval`` uses ``generate`` (compiled by
:func:`~core.generation.local.compiled_decoding.enable_compiled_decoding`), so this path
lives beside the benchmark that measures it.
"""

from __future__ import annotations

from typing import Any

from core.generation.local.cache_keyword import cache_keyword
from core.generation.local.compiled_decoding import COMPILE_MODE


class GraphDecoder:
    """Greedy decoding whose whole one-token step (forward and argmax) is one CUDA graph.

    Why, beside ``generate``: with compiled decoding, ``generate`` still runs its per-token
    bookkeeping in Python (input preparation, logits processors, stopping criteria, a
    device-to-host sync), and on a slow host that costs more than the 4-bit forward pass
    itself. This loop does per token only a graph replay and a copy of the new token, and
    looks for end-of-sequence tokens every ``check_every`` tokens. It is the lean decode
    path for a scheduler to drive; it handles equal-length (unpadded) prompts and greedy
    decoding only.
    """

    def __init__(
        self, model: Any, max_cache_len: int, *, check_every: int = 16, compile: bool = True
    ) -> None:
        """``compile=False`` runs the same loop uncompiled (CPUs, tests)."""
        import torch

        self._model = model
        self._max_cache_len = max_cache_len
        self._check_every = check_every
        self._cache: Any = None
        self._cache_keyword = cache_keyword(model)
        self._batch = 0
        # dynamic=False: one specialised graph per batch size, never a slower dynamic one.
        self._step = (
            torch.compile(self._decode_step, mode=COMPILE_MODE, fullgraph=True, dynamic=False)
            if compile
            else self._decode_step
        )

    def _decode_step(self, tokens: Any, cache_position: Any) -> Any:
        logits = self._model(
            input_ids=tokens,
            cache_position=cache_position,
            **{self._cache_keyword: self._cache},
            # Given explicitly: derived from the cache's length, it would be a Python int
            # that changes every step and forces a recompilation each time.
            position_ids=cache_position.unsqueeze(0),
            use_cache=True,
        ).logits
        return logits[:, -1, :].argmax(dim=-1, keepdim=True)

    def _reset_cache(self, batch: int) -> None:
        from transformers import StaticCache

        if self._cache is None or batch != self._batch:
            self._cache = StaticCache(config=self._model.config, max_cache_len=self._max_cache_len)
            self._batch = batch
        else:
            self._cache.reset()

    def generate(self, input_ids: Any, max_new_tokens: int, eos_token_id: int | None = None) -> Any:
        """Prompt plus up to ``max_new_tokens`` greedy tokens, shape ``[batch, length]``."""
        import torch

        batch, prompt = input_ids.shape
        if prompt + max_new_tokens > self._max_cache_len:
            raise ValueError(
                f"prompt {prompt} + {max_new_tokens} new tokens exceed the static cache of "
                f"{self._max_cache_len} tokens"
            )
        with torch.inference_mode():
            self._reset_cache(batch)
            positions = torch.arange(prompt, device=input_ids.device)
            logits = self._model(
                input_ids=input_ids,
                cache_position=positions,
                use_cache=True,
                **{self._cache_keyword: self._cache},
            ).logits  # the prefill runs uncompiled: its shape changes with every prompt
            token = logits[:, -1, :].argmax(dim=-1, keepdim=True)
            out = [token]
            position = torch.tensor([prompt], device=input_ids.device)
            for step in range(1, max_new_tokens):
                # The graph's output buffer is overwritten by the next replay: keep a copy.
                token = self._step(token, position).clone()
                out.append(token)
                position += 1
                if eos_token_id is not None and step % self._check_every == 0:
                    done = (torch.cat(out, dim=1) == eos_token_id).any(dim=1)
                    if bool(done.all()):
                        break
            return torch.cat([input_ids, *out], dim=1)
