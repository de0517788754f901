"""Supervised chat examples for fine-tuning the reply model: DailyDialog or Alpaca-style data.

Why this shape: the engine sends the model a system prompt (persona, "The user seems to feel
X right now.", a length instruction) followed by alternating user/assistant turns, rendered
with the model's own chat template. An adapter learns best from examples that look exactly
like that, so every DailyDialog turn becomes one example: the earlier turns are the history,
the turn itself is the assistant's reply, and the system prompt is built from the same pieces
the engine uses (:func:`core.prompting.system_prompt` wording, :data:`LENGTH_INSTRUCTIONS`),
plus one line that asks for the reply's labelled emotion and dialogue act. That line is what
makes the model *follow* mood guidance instead of merely imitating DailyDialog, and it is the
same line ``personabot eval`` uses to ask for an emotion when it measures how often replies
carry it.

Loss is computed on the reply tokens and the end-of-turn token only (labels are -100
elsewhere): the model should learn to answer, not to predict the user's lines or the
instructions. Templates without a system role (Mistral's) get the system prompt folded into
the first user turn with :func:`core.prompting.fold_system_prompt`, exactly as at run time.

Generic instruction data (Alpaca-style JSON or JSONL records with ``instruction``, optional
``input`` and ``output``) becomes one user turn and one assistant reply, so a user can train a
domain Q&A adapter with the same command.

Chat-format JSONL (``{"messages": [...]}`` per line, as ``personabot import-chat`` writes from a
chat export) is read as it is: the examples already carry the system prompt the persona is
served with and the other people's turns as history.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from core.generation.chat_template import (
    detect_system_role,
    render_chat,
    template_messages,
    text_ids,
)
from core.personas import LENGTH_INSTRUCTIONS, Persona
from core.types import ChatMessage, LengthPreset, Mood, Role
from training.dailydialog import DatasetError, Dialogue, load_split

log = logging.getLogger(__name__)

DataFormat = Literal["auto", "dailydialog", "alpaca", "chat"]
DATA_FORMATS: tuple[str, ...] = ("auto", "dailydialog", "alpaca", "chat")
IGNORE_INDEX = -100
"""Label value the loss ignores (PyTorch's and transformers' convention)."""

DEFAULT_SYSTEM_PROMPT = (
    "You are chatting with someone in everyday English. Reply the way a real person would in "
    "a friendly conversation: natural, direct and in your own voice."
)
"""Stands in for a persona's system prompt when training without one: neutral, so the adapter
learns conversational replies and mood-following without a character of its own."""

REPLY_EMOTIONS: dict[Mood, str] = {
    Mood.NO_EMOTION: "Keep your reply calm and matter-of-fact, without strong emotion.",
    Mood.ANGER: "Let your reply sound angry.",
    Mood.DISGUST: "Let your reply show disgust.",
    Mood.FEAR: "Let your reply sound worried or afraid.",
    Mood.HAPPINESS: "Let your reply sound happy.",
    Mood.SADNESS: "Let your reply sound sad.",
    Mood.SURPRISE: "Let your reply sound surprised.",
}
"""How the reply's emotion is asked for: short imperatives, like the personas' mood lines."""

REPLY_ACTS: dict[str, str] = {
    "inform": "In it, share information or your opinion.",
    "question": "In it, ask a question.",
    "directive": "In it, make a request, a suggestion or an offer.",
    "commissive": "In it, accept, refuse or promise something.",
}
"""DailyDialog's four dialogue acts, phrased as what the reply should do."""

_SENTENCE_END = re.compile(r"[.!?]+(?:\s|$)")


@dataclass(frozen=True, slots=True)
class ChatExample:
    """One supervised example: a chat whose last message is the assistant reply to learn."""

    messages: tuple[ChatMessage, ...]
    source: str
    """Where it came from, for error messages: ``dailydialog:train:12:3`` or ``file.jsonl:7``."""
    emotion: Mood | None = None
    """The reply's labelled emotion (DailyDialog only)."""
    act: str | None = None
    previous: str | None = None
    """The turn the reply answers, which the mood classifier reads as context."""

    @property
    def reply(self) -> str:
        return self.messages[-1].content


@dataclass(frozen=True, slots=True)
class TokenizedExample:
    """Token ids and labels; labels are -100 except on the reply and its end-of-turn token."""

    input_ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def target_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


# -- system instruction ----------------------------------------------------------------------


def length_preset_for(text: str) -> LengthPreset:
    """The length instruction a reply of this size would have been asked with."""
    sentences = max(1, len(_SENTENCE_END.findall(text.strip())))
    if sentences <= 2:
        return LengthPreset.SHORT
    if sentences <= 5:
        return LengthPreset.MEDIUM
    return LengthPreset.LONG


def reply_guidance(emotion: Mood, act: str | None = None) -> str:
    """The line that asks for a reply's emotion (and dialogue act)."""
    line = REPLY_EMOTIONS[emotion]
    if act is not None and act in REPLY_ACTS:
        line = f"{line} {REPLY_ACTS[act]}"
    return line


def system_instruction(
    *,
    emotion: Mood,
    act: str | None,
    user_mood: Mood | None,
    length: LengthPreset,
    persona: Persona | None = None,
) -> str:
    """The system prompt of one example, built like :func:`core.prompting.system_prompt`.

    Same parts in the same order and words as at run time: the persona's instructions, "The
    user seems to feel X right now." with the persona's guidance for X when the previous turn
    carries an emotion, then the requested reply emotion and act, then the length line.
    """
    parts = [persona.system_prompt.strip() if persona else DEFAULT_SYSTEM_PROMPT]
    if user_mood is not None and user_mood is not Mood.NO_EMOTION:
        guidance = (persona.mood_guidance(user_mood) if persona else None) or ""
        parts.append(f"The user seems to feel {user_mood.value} right now. {guidance}".strip())
    parts.append(reply_guidance(emotion, act))
    parts.append(LENGTH_INSTRUCTIONS[length])
    return "\n\n".join(parts)


# -- DailyDialog -----------------------------------------------------------------------------


def dialogue_example(
    dialogue: Dialogue,
    turn: int,
    *,
    split: str = "",
    persona: Persona | None = None,
    emotion: Mood | None = None,
) -> ChatExample:
    """Turn ``turn`` of ``dialogue`` as the assistant's reply to the turns before it.

    Roles alternate backwards from the reply (the turn before it is the user's), so the
    assistant's reply is always the last message. ``emotion`` overrides the labelled one, to
    ask for a given emotion at evaluation time.
    """
    if not 0 <= turn < len(dialogue.turns):
        raise IndexError(f"dialogue {dialogue.index} has no turn {turn}")
    target = dialogue.turns[turn]
    wanted = target.emotion if emotion is None else emotion
    previous = dialogue.turns[turn - 1] if turn > 0 else None
    system = system_instruction(
        emotion=wanted,
        act=target.act,
        user_mood=previous.emotion if previous else None,
        length=length_preset_for(target.text),
        persona=persona,
    )
    history = [
        ChatMessage("assistant" if (turn - i) % 2 == 0 else "user", dialogue.turns[i].text)
        for i in range(turn)
    ]
    return ChatExample(
        messages=(
            ChatMessage("system", system),
            *history,
            ChatMessage("assistant", target.text),
        ),
        source=f"dailydialog:{split}:{dialogue.index}:{turn}",
        emotion=wanted,
        act=target.act,
        previous=previous.text if previous else None,
    )


def dialogue_examples(
    dialogues: Iterable[Dialogue],
    *,
    split: str = "",
    include_first: bool = False,
    persona: Persona | None = None,
) -> list[ChatExample]:
    """Every turn t >= 1 of every dialogue (and t = 0 with ``include_first``) as an example.

    The first turn of a dialogue answers nothing, so by default it is context only.
    """
    start = 0 if include_first else 1
    return [
        dialogue_example(dialogue, turn, split=split, persona=persona)
        for dialogue in dialogues
        for turn in range(start, len(dialogue.turns))
    ]


# -- Alpaca-style instruction data ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InstructionRecord:
    """One Alpaca-style record; ``where`` names its line (JSONL) or item (JSON) for errors."""

    instruction: str
    input: str
    output: str
    where: str


def _record(item: object, where: str) -> InstructionRecord:
    if not isinstance(item, dict):
        raise DatasetError(
            f"{where}: expected an object with 'instruction', 'input' and 'output', "
            f"got {type(item).__name__}."
        )
    values: dict[str, str] = {}
    for key, required in (("instruction", True), ("input", False), ("output", True)):
        value = item.get(key, "")
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise DatasetError(f"{where}: '{key}' must be a string, got {type(value).__name__}.")
        if required and not value.strip():
            raise DatasetError(f"{where}: '{key}' is missing or empty.")
        values[key] = value.strip()
    return InstructionRecord(values["instruction"], values["input"], values["output"], where)


def read_instructions(path: Path | str) -> list[InstructionRecord]:
    """Alpaca-style records from a JSON array (``.json``) or one object per line (``.jsonl``).

    Every problem is reported with the file and the line (JSONL) or item index (JSON), since
    the person reading it is fixing a data file by hand.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path} does not exist or is not a file.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path} is not UTF-8 text: {exc}.") from None
    records: list[InstructionRecord] = []
    stripped = text.lstrip()
    if path.suffix.lower() == ".json" or stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetError(
                f"{path}, line {exc.lineno}: invalid JSON ({exc.msg}). Expected a JSON array of "
                "objects, or use .jsonl with one object per line."
            ) from None
        if not isinstance(data, list):
            raise DatasetError(f"{path}: expected a JSON array of records at the top level.")
        for index, item in enumerate(data):
            records.append(_record(item, f"{path}, item {index}"))
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{where}: invalid JSON ({exc.msg}).") from None
            records.append(_record(item, where))
    if not records:
        raise DatasetError(f"{path} holds no records.")
    return records


def instruction_examples(
    records: Sequence[InstructionRecord], *, persona: Persona | None = None
) -> list[ChatExample]:
    """Each record as a user turn (instruction, then input) and the output as the reply.

    With a persona its system prompt leads, as the engine sends it; without one there is no
    system message and the template's own default (if any) applies.
    """
    examples: list[ChatExample] = []
    for record in records:
        user = f"{record.instruction}\n\n{record.input}" if record.input else record.instruction
        messages: list[ChatMessage] = []
        if persona is not None:
            messages.append(ChatMessage("system", persona.system_prompt.strip()))
        messages += [ChatMessage("user", user), ChatMessage("assistant", record.output)]
        examples.append(ChatExample(messages=tuple(messages), source=record.where))
    return examples


# -- chat-format examples (personabot import-chat) ---------------------------------------------

_ROLES = ("system", "user", "assistant")


def _chat_example(item: object, where: str) -> ChatExample:
    if not isinstance(item, dict) or not isinstance(item.get("messages"), list):
        raise DatasetError(f"{where}: expected an object with a 'messages' list.")
    messages: list[ChatMessage] = []
    for index, message in enumerate(item["messages"]):
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if role not in _ROLES or not isinstance(content, str) or not content.strip():
            raise DatasetError(
                f"{where}: message {index} needs a 'role' ({', '.join(_ROLES)}) and a "
                "non-empty string 'content'."
            )
        if role == "system" and index > 0:
            raise DatasetError(f"{where}: message {index}: a system message may only come first.")
        messages.append(ChatMessage(cast(Role, role), content))
    if not messages or messages[-1].role != "assistant":
        raise DatasetError(f"{where}: the last message must be the assistant's reply.")
    if not any(m.role == "user" for m in messages):
        raise DatasetError(f"{where}: the reply answers no user message.")
    previous = next((m.content for m in reversed(messages[:-1]) if m.role == "user"), None)
    return ChatExample(messages=tuple(messages), source=where, previous=previous)


def read_chat_examples(path: Path | str) -> list[ChatExample]:
    """Chat examples from JSONL, one ``{"messages": [{"role", "content"}, ...]}`` per line.

    This is what ``personabot import-chat`` writes: the system prompt, the other people's
    turns as ``user`` and the chosen speaker's as ``assistant``, the last message being the
    reply to learn. Every problem names the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path} does not exist or is not a file.")
    examples: list[ChatExample] = []
    try:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                where = f"{path}, line {number}"
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{where}: invalid JSON ({exc.msg}).") from None
                examples.append(_chat_example(item, where))
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path} is not UTF-8 text: {exc}.") from None
    if not examples:
        raise DatasetError(f"{path} holds no examples.")
    return examples


def _holds_chat_records(path: Path) -> bool:
    """Whether a JSONL file's first record is a chat example (has ``messages``)."""
    try:
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    item = json.loads(line)
                    return isinstance(item, dict) and "messages" in item
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return False


# -- loading any kind ----------------------------------------------------------------------


def detect_format(path: Path | str, data_format: str = "auto") -> str:
    """``chat`` for JSONL with ``messages`` records (``personabot import-chat``), ``alpaca``
    for other ``.json``/``.jsonl`` files, ``dailydialog`` for archives and folders."""
    if data_format not in DATA_FORMATS:
        raise DatasetError(
            f"Unknown data format {data_format!r}; expected one of {', '.join(DATA_FORMATS)}."
        )
    if data_format != "auto":
        return data_format
    suffix = Path(path).suffix.lower()
    if suffix == ".jsonl" and _holds_chat_records(Path(path)):
        return "chat"
    return "alpaca" if suffix in (".json", ".jsonl") else "dailydialog"


def load_examples(
    path: Path | str,
    split: str,
    *,
    data_format: str = "auto",
    include_first: bool = False,
    persona: Persona | None = None,
) -> list[ChatExample]:
    """Chat examples from a DailyDialog split (zip or folder), an Alpaca JSON/JSONL file or
    a chat-format JSONL file.

    ``split`` names the DailyDialog split and is ignored for the other kinds.
    """
    kind = detect_format(path, data_format)
    if kind == "chat":
        if persona is not None:
            raise DatasetError(
                f"{path}: --persona does not apply to chat-format data; its system prompt was "
                "written by personabot import-chat."
            )
        return read_chat_examples(path)
    if kind == "alpaca":
        return instruction_examples(read_instructions(path), persona=persona)
    dialogues = load_split(path, split)
    return dialogue_examples(dialogues, split=split, include_first=include_first, persona=persona)


# -- tokenisation ----------------------------------------------------------------------------


class ChatFormatter:
    """Renders examples with the base model's own chat template and masks the labels.

    The prompt (everything before the reply, generation prompt included) is tokenised on its
    own, exactly as the serving backend tokenises a prompt, so the reply tokens the model
    learns are the ones it will generate after that prompt at run time.
    """

    def __init__(self, tokenizer: Any, *, system_role: bool | None = None) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise DatasetError(
                "The base model's tokenizer has no chat template; fine-tuning needs a chat "
                "(instruct) model."
            )
        self.tokenizer = tokenizer
        self.system_role = detect_system_role(tokenizer) if system_role is None else system_role
        self.end_id = self._end_of_turn_id()
        # SentencePiece tokenizers (Llama, Mistral) put a word-boundary mark before the first
        # word of any text they encode; a template's space before the reply is then already
        # there, and encoding it too would teach the model a stray extra token.
        first = tokenizer.convert_ids_to_tokens(self._ids("a")[:1])
        self.dummy_prefix = bool(first) and str(first[0]).startswith("\u2581")

    def _ids(self, text: str) -> list[int]:
        return text_ids(self.tokenizer, text)

    def _end_of_turn_id(self) -> int:
        """The special token the template closes an assistant turn with (``<|im_end|>``,
        ``</s>``); the model must learn to emit it, or it never stops talking."""
        probe = (ChatMessage("user", "ping"), ChatMessage("assistant", "PONG-PROBE"))
        full = self.render(probe)
        after = full[full.rindex("PONG-PROBE") + len("PONG-PROBE") :].lstrip(" ")
        # The literal token text first: some tokenizers (e.g. converted from GGUF) do not list
        # a template's turn marker among their special ids, and guessing then picked the
        # wrong token (an adapter that closes its turns with <|im_start|>).
        added: dict[str, int] = getattr(self.tokenizer, "get_added_vocab", dict)()
        for text, token_id in sorted(added.items(), key=lambda item: -len(item[0])):
            if text.strip() and after.startswith(text):
                return int(token_id)
        special = set(getattr(self.tokenizer, "all_special_ids", []) or [])
        ids = self._ids(after) if after else []
        if ids and ids[0] in special:
            return int(ids[0])
        eos = self.tokenizer.eos_token_id
        if eos is None:
            raise DatasetError("The tokenizer has no end-of-sequence token.")
        return int(eos)

    def chat(self, messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
        """Messages as the template receives them (system folded in where it has no role)."""
        return template_messages(messages, system_role=self.system_role)

    def render(self, messages: Sequence[ChatMessage], *, generation_prompt: bool = False) -> str:
        return render_chat(
            self.tokenizer,
            messages,
            system_role=self.system_role,
            generation_prompt=generation_prompt,
        )

    def prompt_ids(self, messages: Sequence[ChatMessage]) -> list[int]:
        """The prompt a generator would send for these messages (the reply not included)."""
        return self._ids(self.render(messages, generation_prompt=True))

    def _split(self, messages: Sequence[ChatMessage]) -> tuple[str, str]:
        """(prompt text, reply text) where the reply text is what the model must generate."""
        reply = messages[-1].content
        prompt = self.render(messages[:-1], generation_prompt=True)
        full = self.render(messages)
        if not full.startswith(prompt):
            raise DatasetError(
                "The chat template renders a conversation differently from its generation "
                "prompt, so the reply cannot be located; this template is not supported."
            )
        tail = full[len(prompt) :]
        position = tail.find(reply)
        if position < 0:
            raise DatasetError("The chat template altered the reply text; cannot mask labels.")
        text = tail[: position + len(reply)]
        if self.dummy_prefix and text.startswith(" "):
            text = text[1:]
        return prompt, text

    def encode(self, example: ChatExample, max_length: int) -> TokenizedExample:
        """Token ids and masked labels, at most ``max_length`` tokens.

        When too long, the oldest history turns are dropped first (the system instruction and
        the reply matter most); if the system prompt and reply alone are still too long, the
        sequence is cut from the left, keeping its end.
        """
        if example.messages[-1].role != "assistant":
            raise DatasetError(f"{example.source}: the last message must be the reply.")
        messages = list(example.messages)
        while True:
            prompt, reply = self._split(messages)
            prompt_ids = self._ids(prompt)
            reply_ids = [*self._ids(reply), self.end_id]
            if len(prompt_ids) + len(reply_ids) <= max_length:
                break
            first = 1 if messages[0].role == "system" else 0
            if len(messages) - first <= 1:  # only the reply left to keep
                break
            del messages[first]
        ids = prompt_ids + reply_ids
        labels = [IGNORE_INDEX] * len(prompt_ids) + reply_ids
        return TokenizedExample(ids[-max_length:], labels[-max_length:])

    def encode_all(
        self,
        examples: Sequence[ChatExample],
        max_length: int,
        *,
        progress: bool = False,
        workers: int | None = None,
    ) -> list[TokenizedExample]:
        """Encode many examples: templates rendered in parallel, tokenised in batches.

        Rendering a chat template is pure Python and, over DailyDialog's ~76k training
        turns, the slow part of encoding on one core; forked workers share that
        (``workers``; default: up to 8 for 10k examples or more). Batching the fast tokenizer
        over all texts at once is several times quicker than one call per example.
        """
        if not examples:  # e.g. no validation slice held out of a small file
            return []
        pairs = self._render_all(examples, progress=progress, workers=workers)
        prompts = self.tokenizer([p for p, _ in pairs], add_special_tokens=False)["input_ids"]
        replies = self.tokenizer([r for _, r in pairs], add_special_tokens=False)["input_ids"]
        encoded: list[TokenizedExample] = []
        for example, prompt_ids, reply_ids in zip(examples, prompts, replies, strict=True):
            full_reply = [*reply_ids, self.end_id]
            if len(prompt_ids) + len(full_reply) > max_length:
                encoded.append(self.encode(example, max_length))  # rare: drop old turns
            else:
                encoded.append(
                    TokenizedExample(
                        [*prompt_ids, *full_reply],
                        [IGNORE_INDEX] * len(prompt_ids) + full_reply,
                    )
                )
        return encoded

    def _render_all(
        self,
        examples: Sequence[ChatExample],
        *,
        progress: bool,
        workers: int | None,
    ) -> list[tuple[str, str]]:
        """(prompt, reply) texts of every example, in order."""
        import multiprocessing
        import os

        from tqdm import tqdm

        global _FORK_STATE
        if workers is None:
            workers = min(8, os.cpu_count() or 1) if len(examples) >= 10_000 else 1
        if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
            return [
                self._split(ex.messages)
                for ex in tqdm(examples, desc="rendering", unit="ex", disable=not progress)
            ]
        size = 500
        ranges = [(i, min(i + size, len(examples))) for i in range(0, len(examples), size)]
        _FORK_STATE = (self, examples)
        try:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                parts = tqdm(
                    pool.imap(_render_range, ranges),
                    total=len(ranges),
                    desc=f"rendering ({workers} workers)",
                    unit="chunk",
                    disable=not progress,
                )
                return [pair for part in parts for pair in part]
        finally:
            _FORK_STATE = None


_FORK_STATE: tuple[ChatFormatter, Sequence[ChatExample]] | None = None
"""What forked rendering workers read (inherited through fork, never pickled)."""


def _render_range(bounds: tuple[int, int]) -> list[tuple[str, str]]:
    assert _FORK_STATE is not None
    formatter, examples = _FORK_STATE
    return [formatter._split(examples[i].messages) for i in range(*bounds)]


def pad_batch(batch: Sequence[TokenizedExample], pad_id: int, *, left: bool = False) -> Any:
    """Tensors for a batch: ``input_ids``, ``attention_mask`` and ``labels`` (-100 on padding).

    Right padding for training and scoring; left padding for batched generation, so every
    prompt ends where generation starts.
    """
    import torch

    width = max(len(example) for example in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, example in enumerate(batch):
        n = len(example)
        span = slice(width - n, width) if left else slice(0, n)
        ids[row, span] = torch.tensor(example.input_ids)
        labels[row, span] = torch.tensor(example.labels)
        mask[row, span] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
