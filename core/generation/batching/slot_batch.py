"""A running batch whose KV cache is static: one slot per conversation, replayed as CUDA graphs.

Why: a 7B decode step is a few hundred small kernels, and launching them one by one from
Python takes longer than the GPU needs to run them. The padded batch of
:mod:`core.generation.batching.padded_batch` changes shape at every step, so it cannot be
captured, and the scheduler decoded eagerly, bound by kernel launches (see
docs/benchmarks.md#decode-speed-gpu).
Here every tensor a decode step touches has a fixed address:

- each layer's keys and values live in one buffer of ``[slots, kv_heads, capacity, head_dim]``;
  a conversation owns one slot, and its token at position ``p`` sits in column ``p`` of its
  slot, whatever the other rows hold, so rows never need re-padding when others join or leave;
- the running rows always occupy slots ``0 .. rows-1`` (a leaving row's slot is refilled by
  moving the last ones down), so a step runs on the first ``b`` slots for a batch-size bucket
  ``b`` and reads only the first ``w`` columns for a width bucket ``w``;
- one decode step per (adapter, ``b``, ``w``) is captured once into a CUDA graph and replayed;
  only sampling runs outside it;
- new prompts are written straight into their slots, cut into pieces of one chunk size
  (32 to 512 tokens), several pieces per pass (of one prompt or of several), padded to a
  (rows, chunk) bucket of at most :data:`PREFILL_TOKENS` tokens, each pass a replay of its
  own captured graph: an eager
  pass costs its kernel launches from Python whatever the prompt's length, and
  every running row waits for it; and one pass for several prompts reads (and, in 4-bit,
  dequantises) the weights once for all of them. (A burst of many prompts can instead go
  through one padded eager pass, ``padded_prefill_rows``; off by default, see
  :data:`PADDED_PREFILL_ROWS`.)

- a slot is not cleared when its reply ends: it keeps the conversation's keys and values
  (the free slots beyond the running rows, least recently used reused first), and a new
  prompt that starts with tokens a free slot holds encodes only the rest (prefix reuse).
  Each message of a conversation repeats the previous prompt and reply before the new
  message, so most of its prompt is already there; without this every message re-encoded
  the whole history, which was most of the GPU's work under load (see
  docs/benchmarks.md#serving-under-load).
  Reuse matches token ids, so it is exact: the same tokens at the same positions under the
  same adapter have the same keys and values.

On a CPU, or with ``graphs=False``, the same passes run eagerly, which is how the tests check
them against unbatched generation.

Memory: ``slots * capacity`` tokens of KV cache are allocated up front (128 KB per token for
a Mistral-7B in bf16), so ``capacity`` is the most a conversation's prompt and reply may
hold together.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, TypeVar

from core.errors import GenerationError
from core.generation.batching.padded_batch import PaddedBatch, cache_layers
from core.generation.local.cache_keyword import with_cache

log = logging.getLogger(__name__)

_T = TypeVar("_T")

PASS_OVERHEAD_TOKENS = 256
"""What one prompt pass costs besides its tokens, in tokens: reading (in 4-bit, dequantising)
every weight once, a few hundred tokens' worth for a Mistral-7B in NF4 (see
docs/benchmarks.md#decode-speed-gpu); bf16 pays less. It only tips the choice of chunk size between
plans of nearly equal padding."""

MIN_WIDTH_BUCKET = 128
"""Narrowest attention width captured: below it the saving is not worth another graph."""

PREFILL_CHUNKS = (32, 64, 128, 256, 512)
"""Tokens per prompt in the captured prompt-pass graphs; longer prompts take several passes."""

PREFILL_TOKENS = 2048
"""Most tokens (prompts times chunk) one captured prompt pass holds: enough to encode a
burst of prompts in few passes, small enough that a pass's activations stay small for a
Mistral-7B and every running row waits only briefly (see docs/benchmarks.md#serving-under-load)."""

PADDED_PREFILL_ROWS: int | None = None
"""From this many prompts admitted at once, one padded eager pass encodes them all instead
of the captured prompt passes; None: never. The padded pass reuses no prefix and its
activations grow with the burst; under load it measured clearly slower than the captured
passes (see docs/benchmarks.md#serving-under-load)."""

COMPARE_RUN = 256
"""Tokens compared at a time when looking for a free slot's shared prefix (list slices
compare in C; a Python loop over a 4,096-token history for every free slot would not)."""

DECODE_ATTENTION = "personabot_grouped_decode"
"""Name under which :func:`grouped_decode_attention` is registered with transformers."""


def grouped_decode_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """Attention for one new token per row, without copying the KV cache per query head.

    Why: with a mask, transformers' SDPA path repeats every key/value head for each query
    head that shares it (``repeat_kv``), a copy of the whole attended cache in every layer
    at every step (about 17 GB of memory traffic per step for 32 Mistral-7B rows at width
    512). With one query token, the query heads that share a key/value head can instead be
    that head's query rows: one SDPA call over the cache as it lies, the same mask for all.
    """
    import torch

    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    if length != 1:  # not a decode step: transformers' own SDPA path
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, dim)
    out = torch.nn.functional.scaled_dot_product_attention(
        grouped, key, value, attn_mask=attention_mask, scale=scaling
    )
    return out.reshape(batch, heads, 1, dim).transpose(1, 2), None


def _register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(DECODE_ATTENTION, grouped_decode_attention)


def buckets(limit: int, smallest: int = 1) -> list[int]:
    """Powers of two from ``smallest`` below ``limit``, then ``limit`` itself."""
    sizes = []
    size = smallest
    while size < limit:
        sizes.append(size)
        size *= 2
    sizes.append(limit)
    return sizes


def shared_prefix(held: Sequence[int], prompt: Sequence[int], limit: int) -> int:
    """How many leading tokens ``held`` and ``prompt`` share, at most ``limit``."""
    done = 0
    while done < limit:
        end = min(done + COMPARE_RUN, limit)
        if held[done:end] != prompt[done:end]:
            return next(i for i in range(done, end) if held[i] != prompt[i])
        done = end
    return limit


def _move(per_slot: list[_T], moves: Sequence[tuple[int, int]]) -> None:
    """Host bookkeeping follows the slots: ``per_slot[dst] = per_slot[src]`` for each move,
    all read before any is written (the moves may form cycles)."""
    moved = [per_slot[src] for _, src in moves]
    for (dst, _), value in zip(moves, moved, strict=True):
        per_slot[dst] = value


def _bucket(sizes: Sequence[int], need: int) -> int:
    for size in sizes:
        if size >= need:
            return size
    raise ValueError(f"{need} exceeds the largest bucket {sizes[-1]}")


def plan_passes(
    remaining: Sequence[int],
    chunks: Sequence[int],
    row_buckets: Sequence[int],
    pass_tokens: int,
    overhead_tokens: int = PASS_OVERHEAD_TOKENS,
) -> list[list[tuple[int, int]]]:
    """How to encode prompts with ``remaining[i]`` tokens still to go: a list of passes,
    each a list of (prompt index, piece size) rows.

    Every prompt is cut into pieces of one chunk size ``c`` (its last piece shorter), and
    passes of up to ``pass_tokens // c`` rows take the pieces in order, so a pass may hold
    several consecutive pieces of one prompt: they are written into the same slot, and a
    later piece attends to the earlier ones because every layer writes all rows' keys
    before it reads them back. A pass costs its (rows bucket x chunk bucket) padded tokens
    plus ``overhead_tokens`` for reading the weights; the chunk size with the cheapest plan
    wins.
    """
    best: tuple[int, list[list[tuple[int, int]]]] | None = None
    for chunk in chunks:
        fitting = [rows for rows in row_buckets if rows * chunk <= pass_tokens]
        if not fitting:
            continue
        room = fitting[-1]
        pieces = [
            (i, min(chunk, left - done))
            for i, left in enumerate(remaining)
            for done in range(0, left, chunk)
        ]
        passes = [pieces[k : k + room] for k in range(0, len(pieces), room)]
        cost = sum(
            _bucket(row_buckets, len(group)) * _bucket(chunks, max(size for _, size in group))
            + overhead_tokens
            for group in passes
        )
        if best is None or cost < best[0]:
            best = (cost, passes)
    if best is None:
        raise ValueError(f"no chunk of {list(chunks)} fits {pass_tokens} tokens a pass")
    return best[1]


class _View:
    """Which slots and columns the next forward pass works on (read by every layer)."""

    def __init__(self) -> None:
        self.prefill = False
        """A pass of prompt chunks (else a decode step of every row)."""
        self.rows = 0
        self.width = 0
        self.slot_index: Any = None
        self.positions: Any = None
        self.prefill_slots: Any = None
        """[rows]: the slot each prompt chunk is written into."""
        self.prefill_columns: Any = None
        """[rows, chunk]: the columns their tokens go to."""


def _slot_cache(keys: list[Any], values: list[Any], view: _View) -> Any:
    """A transformers ``Cache`` that writes each row's new key/value at that row's position.

    Built on transformers' public ``Cache``/``CacheLayerMixin`` so the model treats it like
    any other cache; the model gets a ready 4-D attention mask and explicit position ids, so
    it never asks the cache for lengths.
    """
    from transformers import cache_utils

    layer_base: Any = cache_utils.CacheLayerMixin

    class SlotLayer(layer_base):  # type: ignore[misc]
        is_compileable = True
        is_sliding = False

        def __init__(self, layer_keys: Any, layer_values: Any) -> None:
            super().__init__()
            self.keys = layer_keys
            self.values = layer_values
            self.is_initialized = True

        def lazy_initialization(self, key_states: Any, value_states: Any) -> None:
            return None  # allocated up front

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> Any:
            width = view.width
            if view.prefill:
                slots, columns = view.prefill_slots, view.prefill_columns
                self.keys[slots[:, None], :, columns] = key_states.transpose(1, 2)
                self.values[slots[:, None], :, columns] = value_states.transpose(1, 2)
                return (
                    self.keys[:, :, :width].index_select(0, slots),
                    self.values[:, :, :width].index_select(0, slots),
                )
            b = view.rows
            rows, columns = view.slot_index[:b], view.positions[:b]
            self.keys[rows, :, columns] = key_states[:, :, -1]
            self.values[rows, :, columns] = value_states[:, :, -1]
            return self.keys[:b, :, :width], self.values[:b, :, :width]

        def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
            return view.width, 0

        def get_seq_length(self) -> int:
            return 0  # unused: position ids are always given

        def get_max_length(self) -> int:
            return int(self.keys.shape[2])

    layers: list[Any] = [SlotLayer(k, v) for k, v in zip(keys, values, strict=True)]
    return cache_utils.Cache(layers=layers)


class SlotBatch:
    """The rows being decoded, in KV-cache slots ``0 .. rows-1`` (see the module docstring).

    The interface matches :class:`~core.generation.batching.padded_batch.PaddedBatch`, so the
    scheduler drives either.
    """

    def __init__(
        self,
        slots: int,
        capacity: int,
        vocab_size: int,
        pad_id: int,
        *,
        graphs: bool,
        padded_prefill_rows: int | None = PADDED_PREFILL_ROWS,
        reuse_prefixes: bool = True,
    ) -> None:
        """``padded_prefill_rows``: this many prompts or more admitted together are encoded
        in one padded eager pass instead of chunk by chunk (see :meth:`add`).
        ``reuse_prefixes``: start a prompt from the keys and values a free slot already
        holds for its first tokens (benchmarks that time prompt encoding turn it off)."""
        self.slots = slots
        self.capacity = capacity
        """Most tokens (prompt and reply) one conversation's slot holds."""
        self._vocab = vocab_size
        self._pad_id = pad_id
        self._graphs_wanted = graphs
        self._batch_sizes = buckets(slots)
        self._widths = buckets(capacity, min(MIN_WIDTH_BUCKET, capacity))
        self._chunks = [c for c in PREFILL_CHUNKS if c < capacity] or [capacity]
        self._pass_tokens = max(PREFILL_TOKENS, self._chunks[-1])
        self._padded_prefill_rows = padded_prefill_rows
        self._keys: list[Any] = []
        self._values: list[Any] = []
        self._view = _View()
        self._cache: Any = None
        self._tokens: Any = None
        self._positions: Any = None
        self._seen: Any = None
        self._lengths: list[int] = [0] * slots
        """Host copy of each slot's position (a running row's), so choosing a bucket needs no
        device sync; for a free slot, how many columns still hold a conversation's tokens."""
        self._held: list[list[int]] = [[] for _ in range(slots)]
        """The tokens in each slot's first ``_lengths`` columns (a running row's pending
        token follows them)."""
        self._held_adapter: list[str | None] = [None] * slots
        self._last_used: list[int] = [-1] * slots
        """When each slot last held a running row (a counter): free slots are taken least
        recently used first."""
        self._clock = 0
        self._reuse = reuse_prefixes
        self.reused_tokens = 0
        """Prompt tokens so far whose keys and values were found in a slot, not encoded."""
        self._graphs: dict[tuple[str, str | None, int, int, int], tuple[Any, Any]] = {}
        self._pool: Any = None
        self.rows = 0
        self.adapter: str | None = None
        """Adapter of the model the rows run on: graphs are kept per adapter."""
        self.captures = 0
        """CUDA graphs captured so far (for logs and tests)."""
        _register_attention()

    # -- the interface the scheduler uses -------------------------------------------------------

    @property
    def seen(self) -> Any:
        """[rows, vocab] bool: tokens in each row's prompt and reply (repetition penalty)."""
        return self._seen[: self.rows]

    @property
    def device(self) -> Any:
        return self._positions.device if self._positions is not None else None

    def add(self, model: Any, prompts: Sequence[Sequence[int]]) -> Any:
        """Encode ``prompts`` into the next free slots; their last position's logits."""

        longest = max(len(p) for p in prompts)
        if longest >= self.capacity:
            raise GenerationError(
                f"A prompt of {longest} tokens does not fit the KV cache of {self.capacity} "
                "tokens per conversation (PERSONABOT_MAX_PROMPT_TOKENS)."
            )
        if self.rows + len(prompts) > self.slots:
            raise GenerationError(f"No free KV-cache slot for {len(prompts)} more replies.")
        burst = self._padded_prefill_rows
        if self._keys and (burst is None or len(prompts) < burst):
            return self._add_by_chunks(model, prompts)
        return self._add_padded(model, prompts)

    def _add_padded(self, model: Any, prompts: Sequence[Sequence[int]]) -> Any:
        """One eager pass over the left-padded prompts, then their keys/values into slots."""
        import torch

        padded, logits = PaddedBatch.prefill(model, prompts, self._pad_id, self._vocab)
        layers = cache_layers(padded.cache)
        if not self._keys:
            self._allocate(layers)
        start, count, length = self.rows, len(prompts), padded.length
        device = self._positions.device
        lengths = torch.tensor([len(p) for p in prompts], dtype=torch.long, device=device)
        # Left-padded rows to left-aligned slots: column j of row r comes from j + (pad of r).
        shift = (length - lengths).unsqueeze(1) + torch.arange(length, device=device)
        shift = shift.clamp(max=length - 1)
        for index, (keys, values) in enumerate(layers):
            gather = shift[:, None, :, None].expand(-1, keys.shape[1], -1, keys.shape[3])
            self._keys[index][start : start + count, :, :length] = keys.gather(2, gather)
            self._values[index][start : start + count, :, :length] = values.gather(2, gather)
        self._positions[start : start + count] = lengths
        for slot, prompt in enumerate(prompts, start):
            self._hold(slot, prompt)
        self._seen[start : start + count] = padded.seen
        self.rows += count
        return logits

    def note_tokens(self, tokens: Sequence[int], start: int = 0) -> None:
        """Rows ``start ..`` sampled ``tokens``: feed them at the next step, mark them seen."""
        import torch

        device = self._positions.device
        ids = torch.tensor(list(tokens), dtype=torch.long, device=device)
        end = start + len(tokens)
        self._tokens[start:end, 0] = ids
        self._seen[torch.arange(start, end, device=device), ids] = True
        for slot, token in enumerate(tokens, start):
            held = self._held[slot]
            del held[self._lengths[slot] :]  # the previous pending token, fed since
            held.append(token)

    def step(self, model: Any) -> Any:
        """Feed every row's pending token; the next logits [rows, vocab]."""

        rows = self.rows
        size = _bucket(self._batch_sizes, rows)
        # The widest row writes at column positions[i]; it must be inside the window.
        width = _bucket(self._widths, max(self._lengths[:rows]) + 1)
        if self._use_graphs():
            graph, logits = self._graph(model, "decode", size, 1, width)
            graph.replay()
        else:
            logits = self._forward(model, size, width)
        self._positions[:rows] += 1
        for row in range(rows):
            self._lengths[row] += 1
        return logits[:rows]

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only ``rows`` (indices, in order), moved down into slots ``0 .. len-1``.

        The rows that leave move to the slots just after them, their keys and values kept
        for the conversation's next message (prefix reuse).
        """
        kept = list(rows)
        leaving = sorted(set(range(self.rows)) - set(kept))
        self._permute(kept + leaving)
        self._clock += 1
        for slot in range(len(kept), self.rows):
            self._last_used[slot] = self._clock
            del self._held[slot][self._lengths[slot] :]  # its last token was never fed
        self.rows = len(kept)
        self._park_free_slots()

    def prepare(self, model: Any, adapter: str | None) -> None:
        """Capture every bucket's graph for ``adapter`` now rather than at first use.

        Needs the cache allocated (after the first :meth:`add`, or :meth:`allocate_for`).
        """
        if not (self._positions is not None and self._use_graphs()):
            return
        started = time.monotonic()
        before = self.captures
        self.adapter = adapter
        for size in self._batch_sizes:
            for width in self._widths:
                self._graph(model, "decode", size, 1, width)
        # The warm-up passes write into a free slot's first columns.
        self._prefill_slots.fill_(self.rows)
        self._prefill_columns.copy_(
            self._columns[: self._chunks[-1]].expand_as(self._prefill_columns)
        )
        for rows, chunk in self._pass_shapes():
            for width in self._widths:
                if width >= chunk or width == self.capacity:
                    self._graph(model, "prefill", rows, chunk, width)
        for slot in range(self.rows, self.slots):  # the warm-ups wrote into free slots
            self._hold(slot, [])
        log.info(
            "Captured %d decode and prompt graphs in %.1f s.",
            self.captures - before,
            time.monotonic() - started,
        )

    def allocate_for(self, model: Any) -> None:
        """Allocate the cache by encoding one token (its shapes and dtype come from the model)."""
        if not self._keys:
            self.add(model, [[self._pad_id]])
            self.keep([])

    # -- internals ------------------------------------------------------------------------------

    def _add_by_chunks(self, model: Any, prompts: Sequence[Sequence[int]]) -> Any:
        """The prompts written straight into their slots, several per (captured) pass.

        Each prompt first gets a slot (and, from it, the prefix it already holds); what is
        left of it is cut into pieces of one chunk size, and passes of up to
        :data:`PREFILL_TOKENS` tokens take the pieces in order (see :func:`plan_passes`).
        Why passes over several prompts: each pass reads every weight once (in 4-bit:
        dequantises it), which for a short prompt costs more than its tokens do. Why pieces
        rather than one chunk per prompt per pass: padding every prompt of a burst to its
        longest one's chunk computed about twice the real tokens under load.
        """
        import torch

        first = self.rows
        starts = [self._claim_slot(prompt, first + i) for i, prompt in enumerate(prompts)]
        last_logits: list[Any] = [None] * len(prompts)
        remaining = [len(prompt) - start for prompt, start in zip(prompts, starts, strict=True)]
        for group in plan_passes(remaining, self._chunks, self._batch_sizes, self._pass_tokens):
            columns, pieces = [], []
            for i, size in group:  # one prompt's pieces follow each other in a pass
                columns.append(starts[i])
                pieces.append(list(prompts[i][starts[i] : starts[i] + size]))
                starts[i] += size
            logits = self._prefill_pass(model, [first + i for i, _ in group], columns, pieces)
            for row, ((i, size), column) in enumerate(zip(group, columns, strict=True)):
                if column + size == len(prompts[i]):
                    last_logits[i] = logits[row, -1].clone()
        device = self._positions.device
        for i, prompt in enumerate(prompts):
            slot = first + i
            self._seen[slot] = False
            self._seen[slot, torch.tensor(list(prompt), dtype=torch.long, device=device)] = True
            self._positions[slot] = len(prompt)
            self._hold(slot, prompt)
        self.rows += len(prompts)
        return torch.stack(last_logits)

    def _prefill_pass(
        self,
        model: Any,
        slots: Sequence[int],
        starts: Sequence[int],
        pieces: Sequence[Sequence[int]],
    ) -> Any:
        """Write ``pieces[r]`` into slot ``slots[r]`` from column ``starts[r]``, in one pass;
        the logits after each piece's last token [rows bucket, 1, vocab].

        Pieces are left-padded to the chunk bucket, so every row's last real token is the
        pass's last position. Padding tokens (and the rows that only fill the rows bucket)
        write to the slot's last column, which no conversation's tokens reach, and no real
        token attends to it.
        """
        import torch

        chunk = _bucket(self._chunks, max(len(p) for p in pieces))
        rows = _bucket(self._batch_sizes, len(pieces))
        width = _bucket(self._widths, min(max(s + chunk for s in starts), self.capacity))
        scratch = self.capacity - 1
        ids = [[self._pad_id] * chunk for _ in range(rows)]
        columns = [[scratch] * chunk for _ in range(rows)]
        for row, (start, piece) in enumerate(zip(starts, pieces, strict=True)):
            pad = chunk - len(piece)
            ids[row][pad:] = piece
            columns[row][pad:] = range(start, start + len(piece))
        slot_ids = list(slots) + [slots[0]] * (rows - len(slots))
        self._prefill_ids[:rows, :chunk] = torch.tensor(ids, dtype=torch.long)
        self._prefill_columns[:rows, :chunk] = torch.tensor(columns, dtype=torch.long)
        self._prefill_slots[:rows] = torch.tensor(slot_ids, dtype=torch.long)
        if self._use_graphs():
            graph, logits = self._graph(model, "prefill", rows, chunk, width)
            graph.replay()
            return logits
        return self._prefill_forward(model, rows, chunk, width)

    def _pass_shapes(self) -> list[tuple[int, int]]:
        """The (prompts, chunk) shapes of prompt passes: every rows bucket times every
        chunk that fits :data:`PREFILL_TOKENS` together."""
        return [
            (rows, chunk)
            for rows in self._batch_sizes
            for chunk in self._chunks
            if rows * chunk <= self._pass_tokens
        ]

    def _claim_slot(self, prompt: Sequence[int], slot: int) -> int:
        """Put the best free slot for ``prompt`` at ``slot`` (the first free one); how many
        of its first tokens it already holds.

        The free slot holding the longest shared prefix is taken when that is most of what
        it holds (the same conversation, one message on); when only a shorter start is
        shared (the persona's instructions, which every conversation starts with), that
        start is copied into the least recently used free slot instead, so the other
        conversation keeps its slot for its own next message.
        """
        free = range(slot, self.slots)
        target = min(free, key=lambda free_slot: self._last_used[free_slot])
        best, shared = target, 0
        if self._reuse:
            for candidate in free:
                length = self._lengths[candidate]
                if length and self._held_adapter[candidate] == self.adapter:
                    limit = min(length, len(prompt) - 1)  # the last token must be run
                    found = shared_prefix(self._held[candidate], prompt, limit)
                    if found > shared:
                        best, shared = candidate, found
        if shared and (shared * 2 >= self._lengths[best] or best == target):
            target = best
        elif shared:
            self._copy_prefix(best, target, shared)
        if target != slot:
            order = list(range(self.slots))
            order[target], order[slot] = slot, target
            self._permute(order)
        self._hold(slot, prompt[:shared])
        self.reused_tokens += shared
        return shared

    def _copy_prefix(self, source: int, target: int, columns: int) -> None:
        for buffer in (*self._keys, *self._values):
            buffer[target, :, :columns] = buffer[source, :, :columns]

    def _permute(self, order: Sequence[int]) -> None:
        """Slot ``i`` takes what slot ``order[i]`` held (``order`` may cover only the first
        slots); only the columns in use are copied."""
        import torch

        moves = [(dst, src) for dst, src in enumerate(order) if dst != src]
        if not moves:
            return
        if self._positions is not None:
            device = self._positions.device
            dst = torch.tensor([d for d, _ in moves], dtype=torch.long, device=device)
            src = torch.tensor([s for _, s in moves], dtype=torch.long, device=device)
            columns = max(self._lengths[s] for _, s in moves)
            for buffer in (*self._keys, *self._values):
                buffer[dst, :, :columns] = buffer[src, :, :columns]
            for buffer in (self._tokens, self._positions, self._seen):
                buffer.index_copy_(0, dst, buffer.index_select(0, src))
        _move(self._lengths, moves)
        _move(self._held, moves)
        _move(self._held_adapter, moves)
        _move(self._last_used, moves)

    def _hold(self, slot: int, tokens: Sequence[int]) -> None:
        """Record that ``slot`` holds ``tokens`` in its first columns, under this adapter."""
        self._held[slot] = list(tokens)
        self._lengths[slot] = len(tokens)
        self._held_adapter[slot] = self.adapter

    def _park_free_slots(self) -> None:
        """Free slots may still run as padding rows of a bucket; their writes go to the
        last column, which no conversation's tokens reach (a reply stops one short of it)."""
        if self._positions is not None:
            self._positions[self.rows :] = self.capacity - 1
            self._seen[self.rows :] = False

    def _use_graphs(self) -> bool:
        return bool(self._graphs_wanted and self._positions.is_cuda)

    def _prefill_forward(self, model: Any, rows: int, chunk: int, width: int) -> Any:
        """A prompt pass of ``rows`` chunks of ``chunk`` tokens (see :meth:`_prefill_pass`),
        attending to columns ``0 .. width-1`` of their slots; logits [rows, 1, vocab]."""
        import torch

        columns = self._prefill_columns[:rows, :chunk]
        self._view.prefill_slots = self._prefill_slots[:rows]
        self._view.prefill_columns = columns
        # A token sees its slot up to its own column; padding (in the last column) sees all.
        allowed = self._columns[:width].view(1, 1, width) <= columns.unsqueeze(2)
        mask = torch.zeros((rows, 1, chunk, width), dtype=self._dtype, device=columns.device)
        mask = mask.masked_fill(~allowed[:, None], self._mask_min)
        self._view.prefill, self._view.width = True, width
        try:
            return self._run(
                model,
                input_ids=self._prefill_ids[:rows, :chunk],
                attention_mask=mask,
                position_ids=columns,
                logits_to_keep=1,
            )
        finally:
            self._view.prefill = False

    def _run(self, model: Any, **inputs: Any) -> Any:
        """The model over the slot cache, with the grouped decode attention."""
        config = model.config
        usual = config._attn_implementation
        config._attn_implementation = DECODE_ATTENTION  # for this pass only (see above)
        try:
            output = model(use_cache=True, **with_cache(model, self._cache), **inputs)
        finally:
            config._attn_implementation = usual
        return output.logits

    def _allocate(self, prefilled: list[tuple[Any, Any]]) -> None:
        import torch

        layers, sample_keys = len(prefilled), prefilled[0][0]
        _, heads, _, head_dim = sample_keys.shape
        shape = (self.slots, heads, self.capacity, head_dim)
        dtype, device = sample_keys.dtype, sample_keys.device
        self._keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self._values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self._tokens = torch.zeros((self.slots, 1), dtype=torch.long, device=device)
        self._positions = torch.full(
            (self.slots,), self.capacity - 1, dtype=torch.long, device=device
        )
        self._seen = torch.zeros((self.slots, self._vocab), dtype=torch.bool, device=device)
        self._columns = torch.arange(max(self.capacity, self._chunks[-1]), device=device)
        passes = (self.slots, self._chunks[-1])
        self._prefill_ids = torch.full(passes, self._pad_id, dtype=torch.long, device=device)
        self._prefill_columns = torch.zeros(passes, dtype=torch.long, device=device)
        self._prefill_slots = torch.zeros(self.slots, dtype=torch.long, device=device)
        self._view.slot_index = torch.arange(self.slots, device=device)
        self._view.positions = self._positions
        self._mask_min = torch.finfo(dtype).min
        self._dtype = dtype
        self._cache = _slot_cache(self._keys, self._values, self._view)

    def _forward(self, model: Any, size: int, width: int) -> Any:
        """One decode step over slots ``0 .. size-1``, attending to columns ``0 .. width-1``."""
        import torch

        positions = self._positions[:size]
        allowed = self._columns[:width].unsqueeze(0) <= positions.unsqueeze(1)
        mask = torch.zeros((size, 1, 1, width), dtype=self._dtype, device=positions.device)
        mask = mask.masked_fill(~allowed[:, None, None, :], self._mask_min)
        self._view.rows, self._view.width = size, width
        logits = self._run(
            model,
            input_ids=self._tokens[:size],
            attention_mask=mask,
            position_ids=positions.unsqueeze(1),
            logits_to_keep=1,
        )
        return logits[:, -1, :]

    def _graph(self, model: Any, kind: str, rows: int, chunk: int, width: int) -> tuple[Any, Any]:
        """The captured pass for this adapter and bucket, captured on first use.

        ``kind`` "decode": a step of ``rows`` rows (``chunk`` 1); "prefill": a prompt pass of
        ``rows`` chunks of ``chunk`` tokens.
        """
        import torch

        key = (kind, self.adapter, rows, chunk, width)
        found = self._graphs.get(key)
        if found is not None:
            return found

        def run() -> Any:
            if kind == "decode":
                return self._forward(model, rows, width)
            return self._prefill_forward(model, rows, chunk, width)

        # Warm-up passes on a side stream, as torch.cuda.graphs requires; they write what
        # the replay will write again (each row's pending token at its position, or the
        # chunks into their slots).
        stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                run()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            logits = run()
        if self._pool is None:
            self._pool = graph.pool()
        self._graphs[key] = (graph, logits)
        self.captures += 1
        return graph, logits
