"""From an export's messages to chat examples in which one person is the assistant.

Why this shape: the adapter should learn how the chosen speaker answers, in the prompt the
bot will send when it speaks as them. So consecutive messages by one author become one turn
(people send three short messages where a model writes one reply), a long silence starts a
new conversation (yesterday's topic is not what today's message answers), and every turn by
the speaker that answers someone becomes one example: the turns before it (others as
``user``, the speaker's own as ``assistant``) and the turn itself as the reply. The system
prompt is built with :func:`core.prompting.system_prompt` from the persona that
``personabot persona add-adapter`` registers, so training and serving see the same words,
including the "several people are talking" line and ``Name:`` prefixes in group chats.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from core.personas import Persona
from core.prompting import normalise_turns, system_prompt
from core.types import ChatMessage, Mood, MoodResult
from training.chat_import.records import DROP_REASONS, ChatImportError, ChatLine, ParsedChat
from training.sft_data import length_preset_for

PERSONAL_SYSTEM_PROMPT = (
    "You are chatting with people you know. Reply the way you always do in this chat: your "
    "own words, tone, length and habits."
)
"""The system prompt of examples made from a chat export, and of the persona registered for
the adapter trained on them (``personabot persona add-adapter``)."""

DEFAULT_GAP_HOURS = 6.0
DEFAULT_CONTEXT_TURNS = 8
CHARS_PER_TOKEN = 4
"""For the summary's token estimate, without loading a tokenizer (English text, BPE)."""

_NO_MOOD = MoodResult(Mood.NO_EMOTION, 0.0)


def personal_persona(name: str = "personal", **fields: Any) -> Persona:
    """The persona an adapter trained on a chat export is served as."""
    return Persona(name=name, system_prompt=PERSONAL_SYSTEM_PROMPT, **fields)


@dataclass(frozen=True, slots=True)
class Turn:
    """Consecutive messages by one author, joined with newlines."""

    author: str
    text: str
    line: int


@dataclass
class ChatDataset:
    """The examples of one export for one speaker, and the figures the summary prints."""

    examples: list[dict[str, Any]]
    speaker: str
    format: str
    messages: int
    speakers: int
    conversations: int
    turns: int
    speaker_turns: int
    openers: int
    """Speaker turns that open a conversation: nothing to answer, so no example."""
    dropped: Counter[str] = field(default_factory=Counter)

    def tokens(self) -> tuple[int, int]:
        """(all tokens, reply tokens) of the examples, estimated from characters."""
        total = replies = 0
        for example in self.examples:
            messages = example["messages"]
            total += sum(len(m["content"]) for m in messages)
            replies += len(messages[-1]["content"])
        return total // CHARS_PER_TOKEN, replies // CHARS_PER_TOKEN

    def summary(self) -> dict[str, Any]:
        """Counts only: never a name other than the speaker's, never any message text."""
        total, replies = self.tokens()
        return {
            "format": self.format,
            "speaker": self.speaker,
            "speakers": self.speakers,
            "messages": self.messages,
            "conversations": self.conversations,
            "turns": self.turns,
            "speaker_turns": self.speaker_turns,
            "examples": len(self.examples),
            "approx_tokens": total,
            "approx_reply_tokens": replies,
            "speaker_turns_without_context": self.openers,
            "dropped": {reason: self.dropped.get(reason, 0) for reason in DROP_REASONS},
        }


def find_speaker(chat: ParsedChat, speaker: str) -> str:
    """The author ``speaker`` names (case and surrounding spaces ignored)."""
    names = chat.speakers()
    if speaker in names:
        return speaker
    matches = [name for name in names if name.casefold() == speaker.strip().casefold()]
    if len(matches) == 1:
        return matches[0]
    listing = ", ".join(repr(name) for name in names) or "(nobody)"
    raise ChatImportError(
        chat.path, None, f"nobody called {speaker!r} wrote in this chat. Speakers: {listing}."
    )


def conversations(
    messages: Sequence[ChatLine], gap: timedelta = timedelta(hours=DEFAULT_GAP_HOURS)
) -> list[list[Turn]]:
    """Messages grouped into conversations (split at silences longer than ``gap``) of turns."""
    result: list[list[Turn]] = []
    current: list[Turn] = []
    previous: ChatLine | None = None
    for message in messages:
        silent = (
            previous is not None
            and previous.time is not None
            and message.time is not None
            and _naive(message.time) - _naive(previous.time) > gap
        )
        if silent and current:
            result.append(current)
            current = []
        if current and current[-1].author == message.author:
            last = current[-1]
            current[-1] = Turn(last.author, f"{last.text}\n{message.text}", last.line)
        else:
            current.append(Turn(message.author, message.text, message.line))
        previous = message
    if current:
        result.append(current)
    return result


def _naive(moment: Any) -> Any:
    """Compare aware and naive times alike (exports mix them only across versions)."""
    return moment.replace(tzinfo=None) if moment.tzinfo is not None else moment


def examples_for(
    chats: Iterable[list[Turn]],
    speaker: str,
    *,
    persona: Persona,
    source: str,
    context_turns: int = DEFAULT_CONTEXT_TURNS,
) -> tuple[list[dict[str, Any]], int]:
    """(examples, speaker turns with nothing to answer) for ``speaker`` as the assistant."""
    examples: list[dict[str, Any]] = []
    openers = 0
    for turns in chats:
        for index, turn in enumerate(turns):
            if turn.author != speaker:
                continue
            context = list(turns[max(0, index - context_turns) : index])
            while context and context[0].author == speaker:
                context.pop(0)  # a conversation opens with someone else
            if not context:
                openers += 1
                continue
            others = sorted({t.author for t in context if t.author != speaker}, key=str.casefold)
            multi = len(others) > 1
            system = system_prompt(persona, _NO_MOOD, length_preset_for(turn.text), others)
            history = [
                ChatMessage("assistant", t.text)
                if t.author == speaker
                else ChatMessage("user", f"{t.author}: {t.text}" if multi else t.text)
                for t in context
            ]
            messages = normalise_turns(
                [ChatMessage("system", system), *history, ChatMessage("assistant", turn.text)]
            )
            examples.append(
                {
                    "messages": [{"role": m.role, "content": m.content} for m in messages],
                    "source": f"{source}:{turn.line}",
                }
            )
    return examples, openers


def build_dataset(
    chat: ParsedChat,
    speaker: str,
    *,
    gap_hours: float = DEFAULT_GAP_HOURS,
    context_turns: int = DEFAULT_CONTEXT_TURNS,
    persona: Persona | None = None,
) -> ChatDataset:
    """Every example of ``chat`` with ``speaker`` (matched case-insensitively) as assistant."""
    name = find_speaker(chat, speaker)
    grouped = conversations(chat.messages, timedelta(hours=gap_hours))
    examples, openers = examples_for(
        grouped,
        name,
        persona=persona or personal_persona(),
        source=chat.path.name,
        context_turns=context_turns,
    )
    if not examples:
        raise ChatImportError(
            chat.path,
            None,
            f"{name!r} never answers anyone in this chat, so there is nothing to learn from.",
        )
    return ChatDataset(
        examples=examples,
        speaker=name,
        format=chat.format,
        messages=len(chat.messages),
        speakers=len(chat.speakers()),
        conversations=len(grouped),
        turns=sum(len(turns) for turns in grouped),
        speaker_turns=sum(1 for turns in grouped for t in turns if t.author == name),
        openers=openers,
        dropped=Counter(chat.dropped),
    )


def write_jsonl(examples: Sequence[dict[str, Any]], path: Path) -> None:
    """Write the examples, readable by their owner only: they are someone's private chats."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as out:
        for example in examples:
            out.write(json.dumps(example, ensure_ascii=False) + "\n")
