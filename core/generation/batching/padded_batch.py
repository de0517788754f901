"""The tensors of a running batch: one KV cache for every row, left-padded to a common length.

Why left padding and our own cache handling: rows join and leave a running batch at any
step (continuous batching). A new row's prompt is encoded on its own (prefill), then its
cache is padded on the left to the running batch's length, or the batch's to the new row's,
and the two are stacked; a finished row is dropped, and padding columns no row needs any
more are cut off. The attention mask hides the padding and each row counts its own
positions, so every row computes what it would compute alone.

Only the cache's key/value tensors are touched, through ``DynamicCache``'s public
constructor; models with sliding-window or linear-attention layers are not supported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from core.generation.local.cache_keyword import with_cache


class PaddedBatch:
    """KV cache, attention mask, positions and pending tokens of the rows being decoded.

    Row ``i`` has fed its prompt and reply so far into the cache; ``pending[i]`` is the token
    it sampled last, to be fed at the next step.
    """

    def __init__(
        self,
        cache: Any,
        mask: Any,
        positions: Any,
        pending: list[int],
        seen: Any,
        *,
        pad_id: int = 0,
        vocab_size: int = 0,
    ) -> None:
        self._pad_id = pad_id
        self._vocab = vocab_size
        self.cache = cache
        self.mask = mask
        """[rows, length] int64: 1 where a column holds one of the row's tokens."""
        self.positions = positions
        """[rows] int64: the position the row's next token takes."""
        self.pending = pending
        self.seen = seen
        """[rows, vocab] bool: tokens in the row's prompt and reply (repetition penalty)."""

    capacity: int | None = None
    """No limit on a row's length here beyond the model's (the cache grows as needed)."""
    reused_tokens: int = 0
    """Always 0: this cache is dropped row by row, so every prompt is encoded in full."""

    @classmethod
    def empty(cls, pad_id: int, vocab_size: int) -> PaddedBatch:
        """A batch with no rows yet: :meth:`add` gives it some."""
        return cls(None, None, None, [], None, pad_id=pad_id, vocab_size=vocab_size)

    @property
    def rows(self) -> int:
        return len(self.pending)

    def add(self, model: Any, prompts: Sequence[Sequence[int]]) -> Any:
        """Encode ``prompts`` as new rows at the end; their last position's logits.

        The new rows' tokens are set by :meth:`note_tokens` with ``start`` at the old row
        count, before the next :meth:`step`.
        """
        batch, logits = PaddedBatch.prefill(model, prompts, self._pad_id, self._vocab)
        batch.pending = [0] * batch.rows  # placeholders until note_tokens
        if self.rows == 0:
            self.cache, self.mask, self.positions = batch.cache, batch.mask, batch.positions
            self.pending, self.seen = batch.pending, batch.seen
        else:
            self.extend(batch)
        return logits

    adapter: str | None = None
    """Adapter of the model the rows run on (unused here; the slot batch keys graphs by it)."""

    @property
    def device(self) -> Any:
        return self.mask.device

    @property
    def length(self) -> int:
        return int(self.mask.shape[1])

    @classmethod
    def prefill(
        cls, model: Any, prompts: Sequence[Sequence[int]], pad_id: int, vocab_size: int
    ) -> tuple[PaddedBatch, Any]:
        """Encode ``prompts`` together; the new batch (no pending tokens yet) and the last
        position's logits of every row."""
        import torch
        from transformers import DynamicCache

        device = _device_of(model)
        longest = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), longest), dtype=torch.long)
        seen = torch.zeros((len(prompts), vocab_size), dtype=torch.bool)
        for row, prompt in enumerate(prompts):
            ids[row, longest - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, longest - len(prompt) :] = 1
            seen[row, torch.tensor(prompt, dtype=torch.long)] = True
        ids, mask, seen = ids.to(device), mask.to(device), seen.to(device)
        # generate()'s positions for left-padded rows: count real tokens, padding at 1.
        position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        cache = DynamicCache()
        output = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
            **with_cache(model, cache),
        )
        positions = mask.sum(dim=-1)
        batch = cls(cache, mask, positions, [], seen, pad_id=pad_id, vocab_size=vocab_size)
        return batch, output.logits[:, -1, :]

    def step(self, model: Any) -> Any:
        """Feed every row's pending token; the next logits [rows, vocab]."""
        import torch

        device = self.mask.device
        ids = torch.tensor(self.pending, dtype=torch.long, device=device).unsqueeze(1)
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.rows, 1))], dim=1)
        output = model(
            input_ids=ids,
            attention_mask=self.mask,
            position_ids=self.positions.unsqueeze(1),
            use_cache=True,
            logits_to_keep=1,
            **with_cache(model, self.cache),
        )  # the DynamicCache grows in place
        self.positions = self.positions + 1
        return output.logits[:, -1, :]

    def note_tokens(self, tokens: Sequence[int], start: int = 0) -> None:
        """Rows ``start ..`` sampled ``tokens``: record them as pending and as seen."""
        import torch

        end = start + len(tokens)
        self.pending[start:end] = list(tokens)
        device = self.seen.device
        index = torch.tensor(list(tokens), dtype=torch.long, device=device)
        self.seen[torch.arange(start, end, device=device), index] = True

    def extend(self, other: PaddedBatch) -> None:
        """Append ``other``'s rows, padding the shorter of the two on the left."""
        import torch
        from transformers import DynamicCache

        length = max(self.length, other.length)
        layers = []
        for (k1, v1), (k2, v2) in zip(
            cache_layers(self.cache), cache_layers(other.cache), strict=True
        ):
            keys = torch.cat([_pad_left(k1, length), _pad_left(k2, length)], dim=0)
            values = torch.cat([_pad_left(v1, length), _pad_left(v2, length)], dim=0)
            layers.append((keys, values))
        self.cache = DynamicCache(layers)
        self.mask = torch.cat([_pad_left(self.mask, length), _pad_left(other.mask, length)])
        self.positions = torch.cat([self.positions, other.positions])
        self.pending = [*self.pending, *other.pending]
        self.seen = torch.cat([self.seen, other.seen])

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only ``rows`` (indices, in order), then cut padding no row needs any more."""
        import torch
        from transformers import DynamicCache

        if not rows:
            self.cache, self.mask, self.positions, self.pending, self.seen = (
                None,
                None,
                None,
                [],
                None,
            )
            return
        index = torch.tensor(list(rows), dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        used = mask.any(dim=0)
        start = int(used.int().argmax()) if bool(used.any()) else mask.shape[1]
        self.cache = DynamicCache(
            [
                (
                    keys.index_select(0, index)[:, :, start:],
                    values.index_select(0, index)[:, :, start:],
                )
                for keys, values in cache_layers(self.cache)
            ]
        )
        self.mask = mask[:, start:]
        self.positions = self.positions.index_select(0, index)
        self.pending = [self.pending[i] for i in rows]
        self.seen = self.seen.index_select(0, index)


def cache_layers(cache: Any) -> list[tuple[Any, Any]]:
    """Each layer's (keys, values) of a ``DynamicCache``."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def _pad_left(tensor: Any, length: int) -> Any:
    """Zeros on the left of the sequence dimension (-2 for keys/values, -1 for masks)."""
    import torch

    dim = -1 if tensor.dim() == 2 else -2
    missing = length - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _device_of(model: Any) -> Any:
    device = getattr(model, "device", None)
    if device is not None:
        return device
    return next(model.parameters()).device
