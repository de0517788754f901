"""Building the chat the model sees: persona, mood guidance, length, and recent history.

History is fitted by counting tokens with the model's own tokenizer and chat template (via
the generator), so the prompt uses as much of the conversation as the budget allows and
never overflows the context window.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from core.mood.trend import HEAVY, MoodTrend
from core.personas import LENGTH_INSTRUCTIONS, Persona
from core.text import defuse_special_tokens
from core.types import ChatMessage, LengthPreset, Mood, MoodResult, StoredMessage

TokenCounter = Callable[[Sequence[ChatMessage]], int]

MOOD_CONFIDENCE_FLOOR = 0.35
"""Below this the detector is guessing; telling the persona a wrong mood does more harm."""


def fold_system_prompt(messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """Merge system turns into the first user turn, for templates without a system role.

    Mistral-7B-Instruct's template raises on a system message; its documented practice is to
    put instructions at the start of the first user message.
    """
    system = "\n\n".join(m.content for m in messages if m.role == "system")
    rest = [m for m in messages if m.role != "system"]
    if not system:
        return rest
    if rest and rest[0].role == "user":
        return [ChatMessage("user", f"{system}\n\n{rest[0].content}"), *rest[1:]]
    return [ChatMessage("user", system), *rest]


def normalise_turns(messages: Sequence[ChatMessage]) -> list[ChatMessage]:
    """Make turns strictly alternate user/assistant after an optional system message.

    Stored history breaks alternation whenever two people speak in a row in a group, or a
    generation failed and left a user message unanswered; strict templates reject that.
    """
    out: list[ChatMessage] = []
    for message in messages:
        if message.role == "system" and out:
            raise ValueError("a system message may only come first")
        if message.role == "assistant" and (not out or out[-1].role == "system"):
            continue  # the conversation must open with the user
        if out and out[-1].role == message.role and message.role != "system":
            out[-1] = ChatMessage(message.role, f"{out[-1].content}\n{message.content}")
        else:
            out.append(message)
    return out


#: Said to every persona, the pirate included, once a user has been sad or afraid for a
#: while (PERSONABOT_CARE_AFTER_MESSAGES): care comes before character.
CARE_FIRST = (
    "This person has seemed sad or afraid for several messages now. Whatever your character, "
    "answer supportively first: acknowledge how they feel, be warm and calm, do not joke "
    "about it or brush it aside, and only then stay in character."
)

#: A heavy mood the recent messages lean to this much (the newest message weighs 1) colours
#: the reply even when the newest message alone reads neutral.
LEANING_FLOOR = 0.5


def system_prompt(
    persona: Persona,
    mood: MoodResult,
    length: LengthPreset,
    speaker_names: Sequence[str],
    trend: MoodTrend | None = None,
    care_after: int = 0,
) -> str:
    """The persona's instructions plus what it should do about the user's mood: right now,
    over their last messages (``trend``), and, past ``care_after`` sad or afraid messages
    in a row, caring before anything else."""
    parts = [persona.system_prompt.strip()]
    if len(speaker_names) > 1:
        parts.append(
            "Several people are talking in this chat; each of their messages starts with the "
            "speaker's name. Reply as yourself, without a name prefix."
        )
    if care_after and trend is not None and trend.distress_run >= care_after:
        parts.append(CARE_FIRST)
    if mood.mood is not Mood.NO_EMOTION and mood.confidence >= MOOD_CONFIDENCE_FLOOR:
        guidance = persona.mood_guidance(mood.mood) or ""
        feeling = f"The user seems to feel {mood.mood.value} right now."
        if trend is not None and trend.run_mood is mood.mood and trend.run_length > 1:
            feeling = (
                f"The user has seemed to feel {mood.mood.value} for their last "
                f"{trend.run_length} messages, not only this one."
            )
        parts.append(f"{feeling} {guidance}".strip())
    elif (leaning := _leaning(trend)) is not None:
        guidance = persona.mood_guidance(leaning) or ""
        parts.append(f"The user has seemed to feel {leaning.value} lately. {guidance}".strip())
    else:
        neutral = persona.mood_guidance(Mood.NO_EMOTION)
        if neutral:
            parts.append(neutral)
    parts.append(LENGTH_INSTRUCTIONS[length])
    # A persona made with /persona create is user text too.
    return defuse_special_tokens("\n\n".join(parts))


def _leaning(trend: MoodTrend | None) -> Mood | None:
    """The heavy mood recent messages lean to, when the newest alone reads neutral."""
    if trend is None or (leading := trend.leading) not in HEAVY:
        return None
    return leading if trend.weights[leading] >= LEANING_FLOOR else None


def _as_chat(message: StoredMessage, multi_party: bool) -> ChatMessage:
    """One stored message as a chat turn whose text cannot break out of its turn."""
    if message.role == "assistant":
        return ChatMessage("assistant", defuse_special_tokens(message.text))
    content = f"{message.author_name}: {message.text}" if multi_party else message.text
    return ChatMessage("user", defuse_special_tokens(content))


@dataclass(frozen=True, slots=True)
class Prompt:
    """The messages to send and how much of the stored history made it in."""

    messages: list[ChatMessage]
    tokens: int
    history_used: int


class PromptBuilder:
    """Fits persona, mood guidance and as much recent history as the token budget allows."""

    def __init__(self, count_tokens: TokenCounter, budget_tokens: int) -> None:
        self._count = count_tokens
        self._budget = budget_tokens

    def build(
        self,
        *,
        persona: Persona,
        mood: MoodResult,
        length: LengthPreset,
        history: Sequence[StoredMessage],
        current: StoredMessage,
        max_new_tokens: int,
        care_after: int = 0,
    ) -> Prompt:
        """``history`` is oldest first and excludes ``current``."""
        speakers = sorted({m.author_name for m in (*history, current) if m.role == "user"})
        multi_party = len(speakers) > 1
        trend = MoodTrend.of_author(history, current.author_id, mood)
        instructions = system_prompt(persona, mood, length, speakers, trend, care_after)
        system = ChatMessage("system", instructions)
        now = _as_chat(current, multi_party)
        budget = self._budget - max_new_tokens

        def render(k: int, last: ChatMessage = now) -> list[ChatMessage]:
            past = [_as_chat(m, multi_party) for m in history[len(history) - k :]] if k else []
            return normalise_turns([system, *past, last])

        # Each count renders the chat template and tokenises the whole prompt, on the event
        # loop, so the common case (all of the history fits) costs one count.
        whole = render(len(history))
        tokens = self._count(whole)
        if tokens <= budget:
            return Prompt(messages=whole, tokens=tokens, history_used=len(history))
        now = self._fit_current(render, now, budget)
        # The token count grows with k, so the largest k that fits is found by bisection:
        # a handful of template renders instead of one per stored message.
        counted: dict[int, int] = {}
        low, high = 0, len(history)
        while low < high:
            mid = (low + high + 1) // 2
            counted[mid] = self._count(render(mid, now))
            if counted[mid] <= budget:
                low = mid
            else:
                high = mid - 1
        messages = render(low, now)
        tokens = counted[low] if low in counted else self._count(messages)
        return Prompt(messages=messages, tokens=tokens, history_used=low)

    def _fit_current(
        self,
        render: Callable[[int, ChatMessage], list[ChatMessage]],
        now: ChatMessage,
        budget: int,
    ) -> ChatMessage:
        """Shorten an oversized message (keeping its start and end) rather than fail."""
        content = now.content
        while self._count(render(0, ChatMessage("user", content))) > budget and len(content) > 64:
            keep = len(content) * 3 // 8
            content = f"{content[:keep]}\n[…]\n{content[-keep:]}"
        return ChatMessage("user", content)
