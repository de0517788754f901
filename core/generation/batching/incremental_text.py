"""Turning one request's growing list of token ids into text pieces, and spotting stop strings.

Why one mechanism for streamed and whole replies: the final text of a request is the
concatenation of the pieces it produced, whether a caller listened to them or not, so a
streamed reply ends with exactly the text a non-streamed one gets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

Decode = Callable[[Sequence[int]], str]
"""Token ids to text, special tokens left out (the tokenizer's ``decode``)."""

_INCOMPLETE = "\ufffd"
"""What a tokenizer shows for a character whose bytes are split over several tokens."""


class IncrementalText:
    """The text of a reply so far, released piece by piece as tokens arrive."""

    def __init__(self, decode: Decode, stop: Sequence[str]) -> None:
        self._decode = decode
        self._stop = tuple(s for s in stop if s)
        self._longest_stop = max((len(s) for s in self._stop), default=0)
        self._ids: list[int] = []
        self.text = ""
        """Everything released so far; the reply once :meth:`finish` ran."""
        self.stopped = False
        """Whether the text now contains one of the stop strings."""

    def push(self, token: int) -> str:
        """Add a token; return the new text it completes ('' while a character is split)."""
        self._ids.append(token)
        decoded = self._decode(self._ids)
        if decoded.endswith(_INCOMPLETE):
            return ""  # wait for the token that completes the character
        return self._release(decoded)

    def finish(self) -> str:
        """Release whatever is held back; the reply is complete."""
        return self._release(self._decode(self._ids))

    def _release(self, decoded: str) -> str:
        # Decoding more tokens only ever appends for the tokenizers we serve; should one ever
        # rewrite earlier text, the text already released stands and only the tail is new.
        piece = decoded[len(self.text) :]
        if not piece:
            return ""
        start = max(0, len(self.text) - self._longest_stop + 1)
        self.text += piece
        if self._stop and not self.stopped:
            window = self.text[start:]
            self.stopped = any(s in window for s in self._stop)
        return piece
