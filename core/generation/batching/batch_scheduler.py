"""Continuous batching: replies for many conversations decoded together on one worker thread.

Why: on a GPU, one decode step for 16 replies costs about as much as for one (the step is
bound by reading the weights), so serving concurrent conversations one after another wastes
most of the GPU. Here every request joins the running batch at the next decode step
(continuous batching), each row with its own sampling settings, stop strings and token
budget, and leaves it as soon as it is finished or its caller stops listening; its caller
gets the result at once, without waiting for the rest of the batch.

transformers' own continuous-batching manager is not used: it samples with one setting per
batch, has no stop strings or per-request seeds, and cannot switch LoRA adapters between
batches. The decode loop here is plain ``model(...)`` calls on one of two running batches:
a padded ``DynamicCache`` that grows and shrinks with the rows
(:mod:`core.generation.batching.padded_batch`, the default, best on CPUs), or a static KV
cache with one slot per conversation whose decode step is replayed as a CUDA graph
(:mod:`core.generation.batching.slot_batch`, for GPUs).

Rules:

- When the model is idle, the first request waits up to the gather window for others, so
  messages that arrive together are encoded in one pass.
- A batch holds requests for one LoRA adapter only. Requests are admitted in arrival order;
  when the oldest waiting one needs another adapter, the batch takes no one else until it
  has drained, then the adapter is switched (no starvation).
- Back-pressure: a request that would be the ``max_queued + 1``-th one waiting for a place
  in the batch is refused at once with :class:`~core.errors.GeneratorBusyError`.
- All model work happens on the one worker thread; the event loop only queues requests and
  receives pieces of text.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from core.errors import GenerationError, GeneratorBusyError
from core.generation.batching.incremental_text import Decode, IncrementalText
from core.generation.batching.padded_batch import PaddedBatch
from core.generation.generator import Generation
from core.generation.local.profiles import prompt_budget
from core.generation.sampling import BatchSampler, RowSampler
from core.settings import Settings
from core.types import SamplingParams

log = logging.getLogger(__name__)

SelectModel = Callable[[str | None], Any]
"""Activate a request's adapter (None: the default) and return the model to run."""


class RunningBatch(Protocol):
    """The KV cache and per-row tensors of the rows being decoded (worker thread only).

    Rows are numbered ``0 .. rows-1`` in the order they were added; :meth:`keep` renumbers.
    """

    adapter: str | None
    """The adapter the rows run on (set by the scheduler when a batch starts)."""

    @property
    def rows(self) -> int: ...

    @property
    def capacity(self) -> int | None:
        """Most tokens (prompt and reply) one row may hold; None: the model's limit."""

    @property
    def seen(self) -> Any:
        """[rows, vocab] bool: tokens each row's prompt and reply hold (repetition penalty)."""

    @property
    def device(self) -> Any: ...

    @property
    def reused_tokens(self) -> int:
        """Prompt tokens so far whose keys and values the cache already held (prefix reuse)."""

    def add(self, model: Any, prompts: Sequence[Sequence[int]]) -> Any:
        """Encode ``prompts`` as new rows; their last position's logits [len(prompts), vocab]."""

    def note_tokens(self, tokens: Sequence[int], start: int = 0) -> None:
        """Rows ``start ..`` sampled ``tokens``, to be fed at the next step."""

    def step(self, model: Any) -> Any:
        """Feed every row's pending token; the next logits [rows, vocab]."""

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only ``rows`` (indices, in order)."""


@dataclass(frozen=True, slots=True)
class BatchingConfig:
    """How big batches get and how long requests may wait (PERSONABOT_* settings)."""

    max_batch_size: int = 16
    window_seconds: float = 0.01
    max_queued: int = 64
    conversation_tokens: int = 2048
    """Prompt plus reply of one conversation at most: the engine's prompt budget, which is
    what a static KV cache gives each conversation (capped by the model's context window)."""
    padded_prefill_rows: int | None = None
    """Static KV cache only: from this many prompts admitted at once, one padded pass
    encodes them; None: never (see
    :data:`core.generation.batching.slot_batch.PADDED_PREFILL_ROWS`)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> BatchingConfig:
        return cls(
            max_batch_size=settings.max_batch_size,
            window_seconds=settings.batch_window_ms / 1000,
            max_queued=settings.max_queued_requests,
            conversation_tokens=prompt_budget(settings),
        )


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """What the decode loop needs to know about the model and its tokenizer."""

    eos_ids: frozenset[int]
    pad_id: int
    vocab_size: int
    decode: Decode


@dataclass(slots=True)
class BatchStats:
    """Counters of the decode loop, for tests, benchmarks and logs (worker thread writes)."""

    prefills: int = 0
    """Prefill passes (each admits one or more requests)."""
    steps: int = 0
    """Decode steps."""
    row_steps: int = 0
    """Rows decoded, summed over the steps: ``row_steps / steps`` is the mean batch size."""
    peak_rows: int = 0
    """Most rows decoded together."""
    tokens: int = 0
    """Tokens generated, every row's (end-of-turn tokens included)."""
    prompt_tokens: int = 0
    """Prompt tokens admitted, whether encoded or found in the cache."""
    reused_tokens: int = 0
    """Prompt tokens whose keys and values the cache already held, so not encoded again."""
    prefill_s: float = 0.0
    """Seconds in prefill passes (encoding admitted prompts, their first tokens included)."""
    step_s: float = 0.0
    """Seconds in decode steps' forward passes (graph replays on a GPU)."""
    sample_s: float = 0.0
    """Seconds sampling and handing text to callers after decode steps."""


class _Request:
    """One submitted request: its inputs, and the channel its results go back through."""

    def __init__(
        self, ids: Sequence[int], params: SamplingParams, streaming: bool, owner: BatchScheduler
    ) -> None:
        self.ids = list(ids)
        self.params = params
        self.streaming = streaming
        self.arrived = time.monotonic()
        self.cancelled = False
        self._owner = owner
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[str | Generation | BaseException] = asyncio.Queue()

    def emit(self, event: str | Generation | BaseException) -> None:
        """Hand an event to the caller's event loop (worker thread)."""
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:  # the caller's loop is gone; nobody is listening any more
            self.cancelled = True

    async def next_event(self) -> str | Generation | BaseException:
        return await self._events.get()

    def cancel(self) -> None:
        """The caller stopped listening: drop the request, or its row at the next step."""
        self.cancelled = True
        self._owner._withdraw(self)


class _Row:
    """A request being decoded: its sampler, its text so far and its token count."""

    def __init__(self, request: _Request, decode: Decode, capacity: int | None) -> None:
        self.request = request
        self.limit = request.params.max_new_tokens
        if capacity is not None:  # the row's KV-cache slot must hold prompt and reply
            self.limit = min(self.limit, capacity - len(request.ids))
        self.sampler = RowSampler.create(request.params)
        self.text = IncrementalText(decode, request.params.stop)
        self.tokens = 0
        self.finished = False

    def accept(self, token: int, eos_ids: frozenset[int]) -> None:
        """Take the next sampled token; emit text and, once finished, the result."""
        self.tokens += 1
        if token in eos_ids:
            self.finished = True
        else:
            piece = self.text.push(token)
            if piece and self.request.streaming:
                self.request.emit(piece)
            self.finished = self.text.stopped or self.tokens >= self.limit
        if self.finished:
            piece = self.text.finish()
            if piece and self.request.streaming:
                self.request.emit(piece)
            self.request.emit(
                Generation(
                    text=self.text.text,
                    prompt_tokens=len(self.request.ids),
                    completion_tokens=self.tokens,
                )
            )


class _Running:
    """The worker's view of the batch being decoded."""

    def __init__(self, batch: RunningBatch) -> None:
        self.rows: list[_Row] = []
        self.batch = batch
        self.sampler: BatchSampler | None = None
        self.model: Any = None


class BatchScheduler:
    """Queues requests and decodes them in continuous batches on one worker thread."""

    def __init__(
        self,
        select_model: SelectModel,
        facts: ModelFacts,
        config: BatchingConfig,
        *,
        batch: RunningBatch | None = None,
        thread_name: str = "personabot-gen",
    ) -> None:
        """``batch``: where rows are decoded (default: a padded dynamic-cache batch)."""
        self._select_model = select_model
        self._batch: RunningBatch = batch or PaddedBatch.empty(facts.pad_id, facts.vocab_size)
        self._facts = facts
        self._config = config
        self._thread_name = thread_name
        self._cond = threading.Condition()
        self._waiting: deque[_Request] = deque()
        self._active: set[_Request] = set()
        """Requests admitted into the batch and still wanted (finished or cancelled: gone)."""
        self._closing = False
        self._thread: threading.Thread | None = None
        self.stats = BatchStats()

    # -- event-loop side -------------------------------------------------------------------------

    @property
    def config(self) -> BatchingConfig:
        return self._config

    @property
    def waiting(self) -> int:
        """Requests not yet admitted into the batch."""
        with self._cond:
            return len(self._waiting)

    @property
    def running(self) -> int:
        """Requests being decoded now."""
        with self._cond:
            return len(self._active)

    async def generate(self, ids: Sequence[int], params: SamplingParams) -> Generation:
        """The whole completion of ``ids``; cancelling the task frees its row at once."""
        request = self._submit(ids, params, streaming=False)
        try:
            while True:
                event = await request.next_event()
                if isinstance(event, Generation):
                    return event
                if isinstance(event, BaseException):
                    raise event
        finally:
            request.cancel()  # a no-op once finished

    async def stream(self, ids: Sequence[int], params: SamplingParams) -> AsyncGenerator[str, None]:
        """The completion in pieces as decoded; leaving early frees the row at the next step."""
        request = self._submit(ids, params, streaming=True)
        try:
            while True:
                event = await request.next_event()
                if isinstance(event, str):
                    yield event
                elif isinstance(event, Generation):
                    return
                else:
                    raise event
        finally:
            request.cancel()

    async def aclose(self) -> None:
        """Fail what waits, stop the worker after its current step and wait for it."""
        with self._cond:
            self._closing = True
            waiting = list(self._waiting)
            self._waiting.clear()
            self._cond.notify_all()
        for request in waiting:
            request.emit(_shut_down())
        thread = self._thread
        if thread is not None:
            await asyncio.to_thread(thread.join)

    def _submit(self, ids: Sequence[int], params: SamplingParams, streaming: bool) -> _Request:
        if not ids:
            raise GenerationError("Cannot generate from an empty prompt.")
        capacity = self._batch.capacity
        if capacity is not None and len(ids) >= capacity:
            raise GenerationError(
                f"The prompt has {len(ids)} tokens; a conversation's KV cache holds "
                f"{capacity}; raise PERSONABOT_MAX_PROMPT_TOKENS to serve longer prompts."
            )
        request = _Request(ids, params, streaming, self)
        with self._cond:
            if self._closing:
                raise _shut_down()
            free = max(0, self._config.max_batch_size - len(self._active))
            if len(self._waiting) + 1 > free + self._config.max_queued:
                raise GeneratorBusyError(
                    f"The model is busy: {len(self._waiting)} replies are already waiting "
                    f"(PERSONABOT_MAX_QUEUED_REQUESTS={self._config.max_queued}, "
                    f"PERSONABOT_MAX_BATCH_SIZE={self._config.max_batch_size}). Try again "
                    "in a moment."
                )
            self._waiting.append(request)
            self._cond.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._work, name=self._thread_name, daemon=True
                )
                self._thread.start()
        return request

    def _withdraw(self, request: _Request) -> None:
        """Forget a request at once: its place in the queue or the batch is free again."""
        with self._cond:
            self._active.discard(request)
            with contextlib.suppress(ValueError):
                self._waiting.remove(request)

    def _release(self, requests: Sequence[_Request]) -> None:
        with self._cond:
            self._active.difference_update(requests)

    # -- worker thread ----------------------------------------------------------------------------

    def _take(self, adapter: str | None, running: int) -> list[_Request] | None:
        """Requests to admit now (possibly none); None once closing. Blocks while idle."""
        window = self._config.window_seconds
        with self._cond:
            while True:
                if self._closing:
                    return None
                if running:
                    break
                if self._waiting:
                    remaining = self._waiting[0].arrived + window - time.monotonic()
                    if remaining <= 0 or len(self._waiting) >= self._config.max_batch_size:
                        break
                    self._cond.wait(remaining)
                    continue
                self._cond.wait()
            room = self._config.max_batch_size - running
            if not self._waiting or room <= 0:
                return []
            wanted = adapter if running else self._waiting[0].params.adapter
            taken: list[_Request] = []
            while self._waiting and len(taken) < room:
                if self._waiting[0].params.adapter != wanted:
                    break  # it goes first once this batch drains
                taken.append(self._waiting.popleft())
            self._active.update(taken)
            return taken

    def _work(self) -> None:
        import torch

        state = _Running(self._batch)
        with torch.inference_mode():
            while True:
                self._evict(state)  # rows finished or abandoned since the last step
                admitted = self._take(state.batch.adapter, len(state.rows))
                if admitted is None:
                    break
                admitted = [r for r in admitted if not r.cancelled]
                try:
                    if admitted:
                        self._admit(state, admitted)
                    elif state.rows:
                        self._step(state)
                except Exception as exc:
                    # A failed prefill fails its own requests; a failed step the whole batch.
                    error = _failure(exc)
                    if admitted:
                        for request in admitted:
                            request.emit(error)
                        self._release(admitted)
                    else:
                        for row in state.rows:
                            row.request.emit(error)
                        self._release([row.request for row in state.rows])
                        state.rows = []
                        state.batch.keep([])
                    state.sampler = None
        for row in state.rows:
            row.request.emit(_shut_down())
        self._release([row.request for row in state.rows])

    def _admit(self, state: _Running, requests: list[_Request]) -> None:
        if not state.rows:
            state.batch.adapter = requests[0].params.adapter
            state.model = self._select_model(state.batch.adapter)
        rows = self._prefill(state, requests)
        state.rows = state.rows + rows
        state.sampler = None
        self.stats.prefills += 1
        self.stats.peak_rows = max(self.stats.peak_rows, len(state.rows))

    def _step(self, state: _Running) -> None:
        batch = state.batch
        started = time.perf_counter()
        if state.sampler is None:
            samplers = [row.sampler for row in state.rows]
            state.sampler = BatchSampler(samplers, self._facts.vocab_size, batch.device)
        logits = batch.step(state.model)
        stepped = time.perf_counter()
        # The sampler's copy to the host waits for the step: its GPU time counts as sampling.
        tokens = state.sampler.next_tokens(logits, batch.seen)
        batch.note_tokens(tokens)
        for row, token in zip(state.rows, tokens, strict=True):
            row.accept(token, self._facts.eos_ids)
        self.stats.step_s += stepped - started
        self.stats.sample_s += time.perf_counter() - stepped
        self.stats.steps += 1
        self.stats.row_steps += len(state.rows)
        self.stats.tokens += len(tokens)

    def _evict(self, state: _Running) -> None:
        """Drop finished and abandoned rows, so they cost no more compute."""
        keep = [
            i for i, row in enumerate(state.rows) if not (row.finished or row.request.cancelled)
        ]
        if len(keep) == len(state.rows):
            return
        self._release([row.request for row in state.rows if row.finished])
        state.rows = [state.rows[i] for i in keep]
        state.sampler = None
        state.batch.keep(keep)

    def _prefill(self, state: _Running, requests: list[_Request]) -> list[_Row]:
        """Encode the admitted prompts as new rows and sample each one's first token."""
        batch = state.batch
        started = time.perf_counter()
        rows = [_Row(r, self._facts.decode, batch.capacity) for r in requests]
        start = batch.rows
        logits = batch.add(state.model, [r.ids for r in requests])
        try:
            sampler = BatchSampler(
                [row.sampler for row in rows], self._facts.vocab_size, logits.device
            )
            tokens = sampler.next_tokens(logits, batch.seen[start:])
            batch.note_tokens(tokens, start)
        except Exception:
            batch.keep(range(start))  # the batch must hold exactly the running rows
            raise
        for row, token in zip(rows, tokens, strict=True):
            row.accept(token, self._facts.eos_ids)
        self.stats.tokens += len(tokens)
        self.stats.prompt_tokens += sum(len(r.ids) for r in requests)
        self.stats.reused_tokens = batch.reused_tokens
        self.stats.prefill_s += time.perf_counter() - started
        return rows


def _shut_down() -> GenerationError:
    return GenerationError("The generator has been shut down; restart personabot.")


def _failure(exc: Exception) -> GenerationError:
    """The model's failures reach callers as one clear error, the cause attached for logs."""
    if isinstance(exc, GenerationError):
        return exc
    out_of_memory = "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError"
    if out_of_memory:
        with contextlib.suppress(Exception):
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # give the next batch the memory this one held
    kind = "out of memory" if out_of_memory else "failed"
    error = GenerationError(f"Generation {kind}: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error
