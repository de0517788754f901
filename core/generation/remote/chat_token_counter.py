"""Counting prompt tokens for a model that runs somewhere else.

The engine fits history into a token budget before every reply, so it has to count tokens
locally, many times per message: asking a remote server each time would cost a round trip
per candidate prompt. A local copy of the served model's tokenizer (with its chat template)
counts exactly; without one, a deliberately high estimate keeps prompts inside the server's
context window at the price of some history.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.generation.chat_template import detect_system_role, prompt_ids
from core.generation.local.profiles import (
    HUB_IDS,
    MISTRAL_7B,
    SMOLLM2_135M,
    SMOLLM2_GGUF,
    smollm2_package_dir,
)
from core.prompting import fold_system_prompt
from core.settings import Settings
from core.types import ChatMessage

log = logging.getLogger(__name__)

ESTIMATE_BYTES_PER_TOKEN = 3
"""English text averages about 4 UTF-8 bytes per token in Llama/Mistral-style tokenizers;
counting one token per 3 bytes overestimates, which is the safe side for a budget."""
ESTIMATE_TOKENS_PER_MESSAGE = 6
"""Role markers and separators a chat template adds around each message."""


class ChatTokenCounter:
    """Counts the tokens a chat renders to, exactly with a tokenizer or by a safe estimate."""

    def __init__(self, tokenizer: Any | None, *, system_role: bool, source: str) -> None:
        self._tokenizer = tokenizer
        self.system_role = system_role
        """False when the model's chat template has no system turn (it is folded instead)."""
        self.source = source
        """Where the counts come from, for logs and the generator's name."""

    @property
    def exact(self) -> bool:
        return self._tokenizer is not None

    def prepare(self, messages: Sequence[ChatMessage]) -> list[ChatMessage]:
        """The messages as the model should receive them (system prompt folded if needed)."""
        return list(messages) if self.system_role else fold_system_prompt(messages)

    def count(self, messages: Sequence[ChatMessage]) -> int:
        if self._tokenizer is None:
            return estimate_tokens(self.prepare(messages))
        return len(prompt_ids(self._tokenizer, messages, system_role=self.system_role))


def estimate_tokens(messages: Sequence[ChatMessage]) -> int:
    """A conservative token count for a chat without its tokenizer."""
    total = ESTIMATE_TOKENS_PER_MESSAGE  # the generation prompt
    for message in messages:
        size = len(message.content.encode("utf-8"))
        total += -(-size // ESTIMATE_BYTES_PER_TOKEN) + ESTIMATE_TOKENS_PER_MESSAGE
    return total


def _load_tokenizer(source: str | Path, **kwargs: Any) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(source), **kwargs)


def _smollm2_tokenizer(settings: Settings) -> Any:
    """The offline model's tokenizer: from the converted cache if present, else the GGUF."""
    converted = settings.resolved_cache_dir / "models" / "smollm2-135m-instruct"
    if (converted / "tokenizer_config.json").is_file():
        return _load_tokenizer(converted)
    return _load_tokenizer(smollm2_package_dir(), gguf_file=SMOLLM2_GGUF)


def load_token_counter(settings: Settings) -> ChatTokenCounter:
    """The best counter available for the served model; blocking (call it off the loop).

    PERSONABOT_OPENAI_TOKENIZER names the tokenizer exactly (a failure to load it is an
    error); otherwise an explicitly chosen PERSONABOT_MODEL_PROFILE lends its tokenizer when
    it can be loaded here; otherwise tokens are estimated.
    """
    if settings.openai_tokenizer:
        try:
            tokenizer = _load_tokenizer(settings.openai_tokenizer)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"PERSONABOT_OPENAI_TOKENIZER={settings.openai_tokenizer!r} cannot be loaded: "
                f"{exc}. Give a local tokenizer directory or a Hugging Face Hub id this machine "
                "can download, or unset it to estimate token counts."
            ) from None
        return ChatTokenCounter(
            tokenizer, system_role=detect_system_role(tokenizer), source=settings.openai_tokenizer
        )
    profile = settings.model_profile
    if profile == SMOLLM2_135M and settings.model_path is None:
        tokenizer = _smollm2_tokenizer(settings)
        return ChatTokenCounter(tokenizer, system_role=True, source=f"{profile} tokenizer")
    if profile in (MISTRAL_7B, SMOLLM2_135M):
        source = settings.model_path or HUB_IDS[profile]
        try:
            tokenizer = _load_tokenizer(source)
        except (OSError, ValueError) as exc:
            log.warning(
                "Cannot load the %s tokenizer (%s): estimating token counts instead. Set "
                "PERSONABOT_OPENAI_TOKENIZER to a local copy to count exactly.",
                source,
                exc,
            )
            return ChatTokenCounter(None, system_role=profile != MISTRAL_7B, source="estimate")
        # Mistral's template rejects a system turn, as in the local backend.
        system_role = profile != MISTRAL_7B and detect_system_role(tokenizer)
        return ChatTokenCounter(tokenizer, system_role=system_role, source=f"{source} tokenizer")
    log.info(
        "No tokenizer configured for the generation server: estimating token counts. Set "
        "PERSONABOT_OPENAI_TOKENIZER (or PERSONABOT_MODEL_PROFILE) to count exactly."
    )
    return ChatTokenCounter(None, system_role=True, source="estimate")
