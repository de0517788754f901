"""Cleaning what users send and what the model says back.

Both directions are hostile in their own way: users paste control characters, lone
surrogates from broken clients and whole novels; small models run on past their turn and
start writing the user's next line. These functions make both safe to store and to show.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from core.errors import InputError

_SURROGATES = re.compile("[\ud800-\udfff]")
# C0 and C1 controls, DEL and zero-width/bidi formatting marks, except tab and newline.
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")
_MANY_BLANK_LINES = re.compile(r"\n{3,}")


def clean_user_text(text: str, *, max_chars: int) -> str:
    """Normalise a user message or raise InputError saying what is wrong with it."""
    text = _SURROGATES.sub("\ufffd", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROLS.sub("", text)
    text = unicodedata.normalize("NFC", text).strip()
    text = _MANY_BLANK_LINES.sub("\n\n", text)
    if not text:
        raise InputError("That message is empty. Type something to talk to the bot.")
    if len(text) > max_chars:
        raise InputError(
            f"That message is {len(text):,} characters long; the limit is {max_chars:,}. "
            "Please send a shorter one."
        )
    return text


# What chat templates and tokenizers treat as control tokens when they appear in the text
# they render: ChatML/Llama-3/Phi ``<|...|>`` tokens, ``<s>``-style and StarCoder-style
# ``<word>`` tokens (``<filename>``, ``<jupyter_code>``, and so Llama-2's ``<<SYS>>``), and
# Llama-2/Mistral ``[INST]`` markers.
_ANGLE_PIPE = re.compile(r"<\|")
_PIPE_ANGLE = re.compile(r"\|>")
_ANGLE_WORD = re.compile(r"<(/?[A-Za-z_][\w.-]{0,40}>)")
_BRACKET_MARKER = re.compile(r"\[(/?(?:INST|SYS)\])", re.IGNORECASE)


def defuse_special_tokens(text: str) -> str:
    """Text that cannot open a new system or assistant turn when a chat template renders it.

    The prompt is rendered to text and then tokenized, and tokenizers turn a literal
    ``<|im_start|>`` (or ``</s>``, ``<filename>``...) in that text into the real control
    token: a user could close their own turn and write the system's. A space after the
    opening ``<``/``[`` keeps the text readable to the model while no tokenizer matches it.
    Only the prompt is changed; the stored message keeps what the user wrote.
    """
    text = _ANGLE_PIPE.sub("< |", text)
    text = _PIPE_ANGLE.sub("| >", text)
    text = _ANGLE_WORD.sub(r"< \1", text)
    return _BRACKET_MARKER.sub(r"[ \1", text)


#: Longest display name stored (the column holds 255; platforms allow far less).
MAX_NAME_CHARS = 100
_WHITESPACE = re.compile(r"\s+")


def clean_display_name(name: str, *, fallback: str = "someone") -> str:
    """A person's display name made safe to store and to put in a prompt.

    Names are user text too, and arrive from platform JSON where a lone surrogate, a
    newline or a bidi override is perfectly legal: one line, no controls, bounded length.
    """
    name = _SURROGATES.sub("\ufffd", name)
    name = _CONTROLS.sub("", name)
    name = _WHITESPACE.sub(" ", unicodedata.normalize("NFC", name)).strip()
    return name[:MAX_NAME_CHARS].strip() or fallback


_USER_SPEAKERS = ("user", "human", "you", "me")
_ASSISTANT_SPEAKERS = ("assistant", "bot")
_SPECIAL_MARKERS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "[INST]", "[/INST]", "</s>")


def _alternation(names: Iterable[str]) -> str:
    return "|".join(re.escape(n.strip()) for n in names if n.strip())


def speaker_stop_strings(user_names: Iterable[str]) -> tuple[str, ...]:
    """Stop sequences that mean the model began writing someone else's line."""
    names = [*_USER_SPEAKERS, *(n.capitalize() for n in _USER_SPEAKERS), *user_names]
    stops = [f"\n{name}:" for name in names if name.strip()]
    return tuple(dict.fromkeys([*stops, *_SPECIAL_MARKERS]))


class ReplyCleaner:
    """Cuts a reply where the model starts to speak for someone else, and tidies whitespace.

    A leading ``Assistant:``-style label is dropped; a line that starts with a user's name
    (or ``User:``) ends the reply, since everything after it is the model imagining the
    user's answer. One cleaner serves a whole reply: a streamed reply is cleaned again after
    every decoded piece, and building the name patterns each time cost more than applying
    them.
    """

    def __init__(
        self, *, user_names: Iterable[str] = (), assistant_names: Iterable[str] = ()
    ) -> None:
        own = _alternation([*_ASSISTANT_SPEAKERS, *assistant_names])
        others = _alternation([*_USER_SPEAKERS, *user_names])
        self._own_label = re.compile(rf"^\s*(?:{own})\s*:\s*", flags=re.IGNORECASE)
        self._others_turn = re.compile(rf"(?:^|\n)[ \t]*(?:{others})[ \t]*:", flags=re.IGNORECASE)

    def __call__(self, text: str) -> str:
        for marker in _SPECIAL_MARKERS:
            cut = text.find(marker)
            if cut >= 0:
                text = text[:cut]
        text = self._own_label.sub("", text, count=1)
        turn = self._others_turn.search(text)
        if turn:
            text = text[: turn.start()]
        text = _SURROGATES.sub("", text)
        text = _CONTROLS.sub("", text)
        return _MANY_BLANK_LINES.sub("\n\n", text).strip()


def clean_model_output(
    text: str, *, user_names: Iterable[str] = (), assistant_names: Iterable[str] = ()
) -> str:
    """``text`` cleaned as :class:`ReplyCleaner` does, for a one-off."""
    return ReplyCleaner(user_names=user_names, assistant_names=assistant_names)(text)


_SENTENCE_END = re.compile(r"[.!?…][\"')\]]*(?=\s|$)")


def trim_to_last_sentence(text: str) -> str:
    """Drop a trailing fragment cut off by the token limit, if a full sentence precedes it."""
    ends = list(_SENTENCE_END.finditer(text))
    if not ends or ends[-1].end() == len(text.rstrip()):
        return text
    return text[: ends[-1].end()].rstrip()
