"""Reading DailyDialog in its official distribution format.

A split is given as the official archive (``train.zip``, ``validation.zip``, ``test.zip``) or
as a directory holding either that archive or the extracted files. Each dialogue line of
``dialogues_<split>.txt`` has utterances separated by ``__eou__``; the emotion and act files
have one label per utterance on the matching line. The text is tokenised with spaces before
punctuation (``Say , Jim , how about ...``), which is normalised here so the model sees
ordinary chat text.
"""

from __future__ import annotations

import io
import logging
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from core.types import Mood

log = logging.getLogger(__name__)

ACTS = {1: "inform", 2: "question", 3: "directive", 4: "commissive"}


class DatasetError(ValueError):
    """The given path does not hold the requested DailyDialog split."""


@dataclass(frozen=True, slots=True)
class Utterance:
    text: str
    emotion: Mood
    act: str


@dataclass(frozen=True, slots=True)
class Dialogue:
    index: int
    """Line number (0-based) of the dialogue in the split's files."""
    turns: tuple[Utterance, ...]


_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\s+([,.!?;:%)\]}])"), r"\1"),  # no space before closing punctuation
    (re.compile(r"([(\[{$])\s+"), r"\1"),  # none after opening brackets
    (re.compile(r"\s+(n't|'s|'re|'ve|'ll|'d|'m)\b", re.IGNORECASE), r"\1"),  # contractions
    (re.compile(r"\s*([’'])\s*(s|t|re|ve|ll|d|m)\b", re.IGNORECASE), r"\1\2"),
    (re.compile(r"([a-z])([.!?])([A-Z])"), r"\1\2 \3"),  # "right.But" -> "right. But"
    (re.compile(r"\s+-\s+"), " - "),
    (re.compile(r"\s{2,}"), " "),
]
_QUOTED = re.compile(r'"\s*([^"]*?)\s*"')


def detokenize(text: str) -> str:
    """``Say , Jim , how about going ?`` -> ``Say, Jim, how about going?``."""
    text = text.strip()
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    text = _QUOTED.sub(r'"\1"', text)
    return text.strip()


def _read_split_files(path: Path, split: str) -> tuple[str, str, str]:
    names = (
        f"dialogues_{split}.txt",
        f"dialogues_emotion_{split}.txt",
        f"dialogues_act_{split}.txt",
    )
    if path.is_dir():
        archive = path / f"{split}.zip"
        if archive.is_file():
            return _read_split_files(archive, split)
        for folder in (path / split, path):
            if all((folder / name).is_file() for name in names):
                return tuple(  # type: ignore[return-value]
                    (folder / name).read_text(encoding="utf-8") for name in names
                )
        raise DatasetError(
            f"{path} holds neither {split}.zip nor the files {', '.join(names)} "
            f"(directly or in {split}/)."
        )
    if not path.is_file():
        raise DatasetError(f"{path} does not exist.")
    try:
        with zipfile.ZipFile(path) as bundle:
            members = {Path(member).name: member for member in bundle.namelist()}
            missing = [name for name in names if name not in members]
            if missing:
                raise DatasetError(
                    f"{path} has no {', '.join(missing)}: is it the DailyDialog {split} split?"
                )
            return tuple(  # type: ignore[return-value]
                io.TextIOWrapper(bundle.open(members[name]), encoding="utf-8").read()
                for name in names
            )
    except zipfile.BadZipFile:
        raise DatasetError(f"{path} is not a zip archive.") from None


def load_split(path: Path | str, split: str) -> list[Dialogue]:
    """All dialogues of ``split`` whose labels line up with their utterances.

    A dialogue with a different number of utterances and labels (one exists in the official
    training split) cannot be aligned reliably, so it is skipped with a warning naming it.
    """
    texts, emotions, acts = _read_split_files(Path(path), split)
    dialogues: list[Dialogue] = []
    skipped = 0
    for index, (line, emotion_line, act_line) in enumerate(
        zip(texts.splitlines(), emotions.splitlines(), acts.splitlines(), strict=False)
    ):
        utterances = [u for u in (part.strip() for part in line.split("__eou__")) if u]
        emotion_labels = emotion_line.split()
        act_labels = act_line.split()
        if not (len(utterances) == len(emotion_labels) == len(act_labels)):
            log.warning(
                "DailyDialog %s dialogue %d: %d utterances but %d emotion and %d act labels; "
                "skipped.",
                split,
                index,
                len(utterances),
                len(emotion_labels),
                len(act_labels),
            )
            skipped += 1
            continue
        turns = tuple(
            Utterance(detokenize(text), Mood.from_dailydialog(int(e)), ACTS[int(a)])
            for text, e, a in zip(utterances, emotion_labels, act_labels, strict=True)
        )
        dialogues.append(Dialogue(index, turns))
    if not dialogues:
        raise DatasetError(f"No dialogues found for split {split!r} in {path}.")
    return dialogues


def iter_utterances(dialogues: list[Dialogue]) -> Iterator[tuple[str | None, Utterance]]:
    """Each utterance with the one before it (None at a dialogue's start), as context."""
    for dialogue in dialogues:
        previous: str | None = None
        for turn in dialogue.turns:
            yield previous, turn
            previous = turn.text
