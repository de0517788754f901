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


class PaddedBatch:
    """KV cache, attention mask, positions and pending tokens of the rows being decoded.

    Row ``i`` has fed its prompt and reply so far into the cache; ``pending[i]`` is the token
    it sampled last, to be fed at the next step.
    """

    def __init__(
        self, cache: Any, mask: Any, positions: Any, pending: list[int], seen: Any
    ) -> None:
        self.cache = cache
        self.mask = mask
        """[rows, length] int64: 1 where a column holds one of the row's tokens."""
        self.positions = positions
        """[rows] int64: the position the row's next token takes."""
        self.pending = pending
        self.seen = seen
        """[rows, vocab] bool: tokens in the row's prompt and reply (repetition penalty)."""

    @property
    def rows(self) -> int:
        return len(self.pending)

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
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        positions = mask.sum(dim=-1)
        batch = cls(output.past_key_values, mask, positions, [], seen)
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
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.cache = output.past_key_values
        self.positions = self.positions + 1
        return output.logits[:, -1, :]

    def note_tokens(self, tokens: Sequence[int]) -> None:
        """Record each row's newly sampled token as pending and as seen."""
        import torch

        self.pending = list(tokens)
        index = torch.tensor(self.pending, dtype=torch.long, device=self.seen.device)
        self.seen[torch.arange(self.rows, device=self.seen.device), index] = True

    def extend(self, other: PaddedBatch) -> None:
        """Append ``other``'s rows, padding the shorter of the two on the left."""
        import torch
        from transformers import DynamicCache

        length = max(self.length, other.length)
        layers = []
        for (k1, v1), (k2, v2) in zip(_layers(self.cache), _layers(other.cache), strict=True):
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
                for keys, values in _layers(self.cache)
            ]
        )
        self.mask = mask[:, start:]
        self.positions = self.positions.index_select(0, index)
        self.pending = [self.pending[i] for i in rows]
        self.seen = self.seen.index_select(0, index)


def _layers(cache: Any) -> list[tuple[Any, Any]]:
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
