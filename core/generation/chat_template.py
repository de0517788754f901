"""Rendering chats with a model's own chat template, shared by serving and training.

Why one module: a fine-tuned model only answers well when it is served exactly the tokens it
was trained on. The local generator, the remote backend's token counter and the training
data formatter all render messages here, so they agree on when a system prompt is folded
into the first user turn, on how a rendered prompt becomes token ids, and on which special
tokens end an assistant turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from core.prompting import fold_system_prompt
from core.types import ChatMessage

#: Special tokens that open or close a chat turn in common templates (ChatML, Llama 3, Phi,
#: Gemma). An assistant reply is over once the model writes any of them, whatever the
#: generation config's end-of-sequence token says: a fine-tuned model may close its turn by
#: opening the next one, and it must not go on to write the user's next message.
TURN_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|start_header_id|>",
    "<|end|>",
    "<start_of_turn>",
    "<end_of_turn>",
)


def turn_token_ids(tokenizer: Any) -> set[int]:
    """Ids of the :data:`TURN_TOKENS` this tokenizer has as tokens of their own."""
    vocab = tokenizer.get_vocab()
    return {int(vocab[token]) for token in TURN_TOKENS if token in vocab}


def detect_system_role(tokenizer: Any) -> bool:
    """Whether the chat template renders a system message (Mistral's raises on one)."""
    # A distinctive probe: a plain "s" would be found in "<s>" or "<|im_start|>" even when the
    # template silently drops the system message.
    probe = [{"role": "system", "content": "SYSTEM-PROBE"}, {"role": "user", "content": "u"}]
    try:
        rendered = tokenizer.apply_chat_template(probe, tokenize=False)
    except Exception:
        return False
    return "SYSTEM-PROBE" in str(rendered)


def template_messages(
    messages: Sequence[ChatMessage], *, system_role: bool
) -> list[dict[str, str]]:
    """Messages as a template receives them (system prompt folded in where it has no role)."""
    if not system_role:
        messages = fold_system_prompt(messages)
    return [{"role": m.role, "content": m.content} for m in messages]


def render_chat(
    tokenizer: Any,
    messages: Sequence[ChatMessage],
    *,
    system_role: bool,
    generation_prompt: bool,
) -> str:
    """The chat as text, rendered by the tokenizer's template."""
    text = tokenizer.apply_chat_template(
        template_messages(messages, system_role=system_role),
        tokenize=False,
        add_generation_prompt=generation_prompt,
    )
    return str(text)


def text_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of rendered chat text."""
    # The chat template writes the BOS token itself; adding it again would double it.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_ids(tokenizer: Any, messages: Sequence[ChatMessage], *, system_role: bool) -> list[int]:
    """The prompt a generator sends for these messages, generation prompt included."""
    return text_ids(
        tokenizer, render_chat(tokenizer, messages, system_role=system_role, generation_prompt=True)
    )
