"""Choosing the next token for every row of a batch, each row with its own sampling settings.

Why not transformers' logits processors: those take one setting for the whole batch, while a
batch here mixes conversations whose personas sample differently (a greedy evaluation next
to a warm, high-temperature persona). The same steps are applied per row, in the same order
and with the same arithmetic as ``generate`` (repetition penalty, then temperature, top-k and
top-p), so a request gets the tokens it would get alone: exactly so with greedy decoding.

Each sampling row draws from its own random generator, seeded from the request's seed, so a
seeded request gives the same reply whichever other requests share its batch.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.types import SamplingParams

_SEED_SPACE = 2**63 - 1


@dataclass(slots=True)
class RowSampler:
    """One request's sampling settings and its private random stream."""

    params: SamplingParams
    generator: Any  # torch.Generator on the CPU; None for greedy rows

    @classmethod
    def create(cls, params: SamplingParams) -> RowSampler:
        import torch

        if params.temperature <= 0:
            return cls(params, None)
        seed = params.seed if params.seed is not None else random.randrange(_SEED_SPACE)
        generator = torch.Generator(device="cpu")
        generator.manual_seed(seed)
        return cls(params, generator)

    @property
    def greedy(self) -> bool:
        return self.generator is None


class BatchSampler:
    """Per-row settings as tensors, rebuilt whenever the batch's rows change."""

    def __init__(self, rows: Sequence[RowSampler], vocab_size: int, device: Any) -> None:
        import torch

        self._rows = list(rows)
        self._vocab = vocab_size
        params = [row.params for row in self._rows]
        self._penalty = torch.tensor(
            [[p.repetition_penalty] for p in params], dtype=torch.float32, device=device
        )
        self._use_penalty = any(p.repetition_penalty != 1.0 for p in params)
        self._sampling = [i for i, row in enumerate(self._rows) if not row.greedy]
        self._any_greedy = len(self._sampling) < len(self._rows)
        sampled = [params[i] for i in self._sampling]
        self._temperature = torch.tensor(
            [[p.temperature] for p in sampled], dtype=torch.float32, device=device
        )
        # generate() adds no top-k step for top_k=0: keep every token for those rows.
        self._top_k = [min(p.top_k, vocab_size) if p.top_k > 0 else vocab_size for p in sampled]
        self._top_p = torch.tensor([[p.top_p] for p in sampled], dtype=torch.float32, device=device)
        self._use_top_p = any(p.top_p < 1.0 for p in sampled)
        self._index = torch.tensor(self._sampling, dtype=torch.long, device=device)
        self._device = device

    def next_tokens(self, logits: Any, seen: Any) -> list[int]:
        """The next token of each row, from the last position's ``logits`` [rows, vocab].

        ``seen`` [rows, vocab] marks the tokens each row's prompt and reply hold so far (for
        the repetition penalty).
        """
        import torch

        scores = logits.float()
        if self._use_penalty:
            penalised = torch.where(scores < 0, scores * self._penalty, scores / self._penalty)
            scores = torch.where(seen, penalised, scores)
        chosen = scores.argmax(dim=-1) if self._any_greedy else None
        if self._sampling:
            drawn = self._sample(scores.index_select(0, self._index))
            chosen = drawn if chosen is None else chosen.index_copy(0, self._index, drawn)
        assert chosen is not None
        return [int(token) for token in chosen.tolist()]

    def _sample(self, scores: Any) -> Any:
        import torch

        probs = self.warp(scores).softmax(dim=-1)
        # Inverse-CDF draw with one uniform number per row from that row's own generator.
        uniforms = torch.cat(
            [torch.rand(1, generator=self._rows[i].generator) for i in self._sampling]
        ).to(probs.device)
        cdf = probs.cumsum(dim=-1)
        # Never exactly 0: that would pick token 0 even where it has no probability.
        target = (uniforms.clamp(min=1e-12) * cdf[:, -1]).unsqueeze(1)
        drawn = torch.searchsorted(cdf, target).squeeze(1)
        return drawn.clamp(max=probs.shape[-1] - 1)

    def warp(self, scores: Any) -> Any:
        """Temperature, top-k and top-p of each sampling row, applied to its (penalised)
        ``scores`` [sampling rows, vocab]; tokens ruled out get ``-inf``."""
        import torch

        scores = scores / self._temperature
        limited = [k for k in self._top_k if k < self._vocab]
        if limited:
            k_max = max(limited)
            kth = torch.topk(scores, k_max, dim=-1).values
            index = torch.tensor([[min(k, k_max) - 1] for k in self._top_k], device=scores.device)
            threshold = kth.gather(1, index)
            # Rows without a top-k limit keep every token.
            unlimited = torch.tensor(
                [[k >= self._vocab] for k in self._top_k], device=scores.device
            )
            threshold = threshold.masked_fill(unlimited, float("-inf"))
            scores = scores.masked_fill(scores < threshold, float("-inf"))
        if self._use_top_p:
            # generate()'s TopPLogitsWarper: drop the least likely tokens whose probabilities
            # add up to at most 1 - top_p, always keeping the most likely one.
            ordered, order = torch.sort(scores, descending=False, dim=-1)
            cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
            drop = cumulative <= (1 - self._top_p)
            drop[:, -1] = False
            scores = scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
        return scores
