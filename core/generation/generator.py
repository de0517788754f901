"""The port every generation backend implements.

The engine only needs four things from a model: how big its context is, how many tokens a
chat would take once rendered with the model's own template, a finished reply, and the same
reply as a stream. Local transformers models implement it today; an HTTP backend (vLLM,
llama.cpp's server) can implement the same protocol without the engine noticing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from core.types import ChatMessage, SamplingParams


@dataclass(frozen=True, slots=True)
class Generation:
    """A finished completion and its token counts (for logs and benchmarks)."""

    text: str
    prompt_tokens: int
    completion_tokens: int


@runtime_checkable
class Generator(Protocol):
    """An async text generator for chat messages."""

    @property
    def name(self) -> str:
        """Human-readable description, e.g. ``smollm2-135m (cpu, float32)``."""
        ...

    @property
    def context_window(self) -> int:
        """Maximum tokens (prompt + completion) the model accepts."""
        ...

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens of the prompt these messages render to, generation prompt included."""
        ...

    async def generate(self, messages: Sequence[ChatMessage], params: SamplingParams) -> Generation:
        """Complete the chat with one assistant turn."""
        ...

    def stream(self, messages: Sequence[ChatMessage], params: SamplingParams) -> AsyncIterator[str]:
        """Yield the assistant turn in pieces as they are decoded; cancelling stops decoding."""
        ...

    async def aclose(self) -> None:
        """Release the model and its worker thread."""
        ...
