"""The lexicon detector's word lists, read from ``lexicon_words.toml`` and indexed for lookup.

The lists are data, not code: keeping them in a TOML file beside this module lets them be
read, reviewed and tuned without wading through Python, and the file's comments say how the
weights were chosen. They are parsed once per process (:func:`load_lexicon_words`) into
read-only tables that every :class:`~core.mood.lexicon.LexiconMoodDetector` shares.
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any, Final

from core.types import Mood

__all__ = ["LEXICON_FILE", "LexiconWords", "PhraseCue", "WordCue", "load_lexicon_words"]

#: The data file, in this package.
LEXICON_FILE: Final = "lexicon_words.toml"

#: One mood a word or emoticon points to, and how strongly.
WordCue = tuple[Mood, float]
#: A phrase's tokens, its mood (None: consumes its words without scoring them) and weight.
PhraseCue = tuple[tuple[str, ...], Mood | None, float]


@dataclass(frozen=True, slots=True)
class LexiconWords:
    """Every cue the lexicon knows, in the shapes the scorer looks them up in."""

    #: Lower-case word -> the moods it points to (one entry per mood, its highest weight).
    words: Mapping[str, tuple[WordCue, ...]]
    #: First token -> the phrases starting with it, longest first so the longest match wins.
    phrases: Mapping[str, tuple[PhraseCue, ...]]
    #: Emoticon, as written -> its mood and weight.
    emoticons: Mapping[str, WordCue]
    #: Finds the emoticons in a text (see :meth:`parse` for the rules at their edges).
    emoticon_pattern: re.Pattern[str]
    #: Emoji character -> its mood.
    emoji: Mapping[str, Mood]
    #: Words that negate what follows.
    negators: frozenset[str]
    #: Intensifier -> the factor it multiplies the next cue by.
    intensifiers: Mapping[str, float]

    def word_cues(self, token: str) -> tuple[WordCue, ...] | None:
        """The cues of a lower-case word, or None when it is not in the lexicon."""
        return self.words.get(token)

    def match_phrase(self, tokens: list[str], start: int) -> tuple[int, Mood | None, float] | None:
        """The longest phrase at ``tokens[start]``: its length in tokens, mood and weight."""
        for phrase, mood, weight in self.phrases.get(tokens[start], ()):
            end = start + len(phrase)
            if tuple(tokens[start:end]) == phrase:
                return len(phrase), mood, weight
        return None

    @classmethod
    def parse(cls, text: str) -> LexiconWords:
        """Index the TOML text of a lexicon file; raises ValueError if it is malformed."""
        try:
            data = tomllib.loads(text)
            return cls._from_data(data)
        except (tomllib.TOMLDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed lexicon data: {exc!r}") from exc

    @classmethod
    def _from_data(cls, data: dict[str, Any]) -> LexiconWords:
        emoticons = {
            emoticon: (Mood(mood), float(weight))
            for mood, entries in data["emoticons"].items()
            for emoticon, weight in entries.items()
        }
        return cls(
            words=MappingProxyType(_index_words(data["words"])),
            phrases=MappingProxyType(_index_phrases(data["phrases"], data["formulas"])),
            emoticons=MappingProxyType(emoticons),
            emoticon_pattern=_emoticon_pattern(emoticons),
            emoji=MappingProxyType(
                {char: Mood(mood) for mood, chars in data["emoji"].items() for char in chars}
            ),
            negators=frozenset(data["negators"].split()),
            intensifiers=MappingProxyType(
                {word: float(factor) for word, factor in data["intensifiers"].items()}
            ),
        )


@functools.cache
def load_lexicon_words() -> LexiconWords:
    """The shipped word lists, parsed on first use and shared from then on."""
    text = resources.files("core.mood").joinpath(LEXICON_FILE).read_text(encoding="utf-8")
    return LexiconWords.parse(text)


def _index_words(tiers_by_mood: dict[str, dict[str, str]]) -> dict[str, tuple[WordCue, ...]]:
    table: dict[str, list[WordCue]] = {}
    for mood_name, tiers in tiers_by_mood.items():
        mood = Mood(mood_name)
        for weight_text, words in tiers.items():
            weight = float(weight_text)
            for word in words.split():
                cues = table.setdefault(word, [])
                # A word listed twice for one mood keeps its highest weight.
                cues[:] = [c for c in cues if c[0] is not mood or c[1] > weight]
                if not any(c[0] is mood for c in cues):
                    cues.append((mood, weight))
    return {word: tuple(cues) for word, cues in table.items()}


def _index_phrases(
    phrases_by_mood: dict[str, dict[str, float]], formulas: list[str]
) -> dict[str, tuple[PhraseCue, ...]]:
    """Index phrases by first token, longest first, so the longest match wins."""
    cues: list[tuple[str, Mood | None, float]] = [
        (phrase, Mood(mood), float(weight))
        for mood, entries in phrases_by_mood.items()
        for phrase, weight in entries.items()
    ]
    cues.extend((formula, None, 0.0) for formula in formulas)
    table: dict[str, list[PhraseCue]] = {}
    for text, mood, weight in cues:
        tokens = tuple(text.split())
        table.setdefault(tokens[0], []).append((tokens, mood, weight))
    return {
        first: tuple(sorted(candidates, key=lambda cue: -len(cue[0])))
        for first, candidates in table.items()
    }


def _emoticon_pattern(emoticons: Mapping[str, WordCue]) -> re.Pattern[str]:
    """One pattern for every emoticon, longest first.

    Emoticons must not be glued to word characters on the side where they start or end with
    a letter or digit ("xD" is not part of "fixDate", "D:" not part of "RAID:"), while
    punctuation-only ones may follow a word directly ("great:)").
    """
    return re.compile(
        "|".join(
            ("(?<![A-Za-z0-9])" if e[0].isalnum() else "(?<![:;=<>^])")
            + re.escape(e)
            + ("(?![A-Za-z0-9])" if e[-1].isalnum() else "(?![)(\\]\\[])")
            for e in sorted(emoticons, key=len, reverse=True)
        )
    )
