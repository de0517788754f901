"""Plain value types shared by the engine, its ports and the frontends."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal


class Mood(enum.StrEnum):
    """DailyDialog's seven emotion labels, in the corpus's own numbering order."""

    NO_EMOTION = "no emotion"
    ANGER = "anger"
    DISGUST = "disgust"
    FEAR = "fear"
    HAPPINESS = "happiness"
    SADNESS = "sadness"
    SURPRISE = "surprise"

    @classmethod
    def from_dailydialog(cls, label: int) -> Mood:
        """Map DailyDialog's integer emotion label (0-6) to a mood."""
        return list(cls)[label]

    @classmethod
    def parse(cls, value: str) -> Mood:
        """Accept ``"no emotion"``, ``"no_emotion"`` or ``"neutral"`` style spellings."""
        key = value.strip().lower().replace("_", " ")
        if key in ("neutral", "none"):
            return cls.NO_EMOTION
        try:
            return cls(key)
        except ValueError:
            valid = ", ".join(m.value for m in cls)
            raise ValueError(f"unknown mood {value!r}; expected one of: {valid}") from None


@dataclass(frozen=True, slots=True)
class MoodResult:
    """A detected mood and how sure the detector is (0-1)."""

    mood: Mood
    confidence: float


Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One message in the chat-template sense: what the model sees."""

    role: Role
    content: str


class LengthPreset(enum.StrEnum):
    """How long replies should be in a conversation."""

    SHORT = "short"
    MEDIUM = "medium"
    LONG = "long"

    @classmethod
    def parse(cls, value: str) -> LengthPreset:
        try:
            return cls(value.strip().lower())
        except ValueError:
            valid = ", ".join(p.value for p in cls)
            raise ValueError(f"unknown length {value!r}; expected one of: {valid}") from None


@dataclass(frozen=True, slots=True)
class ConversationRef:
    """Identifies a conversation by platform and the platform's own channel/thread id."""

    platform: str
    channel_id: str
    scope: str = field(default="", compare=False)
    """The community the conversation belongs to (``discord:server:<id>``,
    ``telegram:chat:<id>``...), whose own personas it sees; empty for the operator's own
    (the terminal). Not part of the conversation's identity: a channel is always in one."""

    def key(self) -> str:
        return f"{self.platform}:{self.channel_id}"


@dataclass(frozen=True, slots=True)
class Author:
    """Who wrote a message: a platform user id plus the name others see."""

    id: str
    display_name: str


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Per-request decoding settings, taken from the persona and the length preset."""

    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.1
    max_new_tokens: int = 200
    stop: tuple[str, ...] = ()
    seed: int | None = None
    adapter: str | None = None
    """The LoRA adapter directory this request runs with (a persona's own adapter), or None
    for the profile's default adapter (DailyDialog, if any). Requests with different values
    are never batched together; the backend loads each adapter once, lazily."""


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message as kept in conversation history."""

    id: int
    role: Literal["user", "assistant"]
    author_id: str
    author_name: str
    text: str
    mood: Mood | None
    persona: str | None
    created_at: datetime
    reply_to_id: int | None = None
    mood_confidence: float | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """What the engine returns for one user message."""

    text: str
    mood: MoodResult
    persona: str
    user_message_id: int
    reply_message_id: int | None
    """None when the reply was not stored: its message was deleted (/forget) meanwhile."""
    prompt_tokens: int = 0
    history_messages_used: int = 0
    extra: dict[str, object] = field(default_factory=dict)
