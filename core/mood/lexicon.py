"""The lexicon mood detector: hand-written word lists plus a few rules, no model.

:class:`LexiconMoodDetector` scores a message from word and phrase cues, emoji and emoticons,
adjusted for negation, intensifiers, exclamation and question cues. It needs no model, no
downloads and no GPU, and is cheap enough to run inline on the event loop; it makes personas
react sensibly to clear emotions, and it is the detector to choose where a model-backed one
cannot be installed. Its quality and speed next to the other detectors are in
docs/benchmarks.md#mood-detection. This module holds the rules; the word lists and their
weights are data, in ``lexicon_words.toml`` (read by :mod:`core.mood.lexicon_words`).

Design notes, because a lexicon lives or dies by its details:

* **Precision over recall.** In everyday chat (and in DailyDialog) most messages carry no
  emotion. A persona that consoles someone who asked for the time is worse than one that
  misses a mild feeling, so a mood is only reported when its score clears
  :data:`EMOTION_THRESHOLD`; weak cues need company (a second cue, an intensifier, an
  exclamation mark) to count.
* **Phrases before words.** Many cues are multi-word and override their parts: "no way" is
  surprise, not a negation; "I'm afraid I can't" is polite hedging, not fear; "not bad" is
  mild approval; "can't wait" is happiness despite the "n't".
* **Negation flips positives only.** "not happy" suggests sadness (weakly); "not scared" or
  "not angry" carry no clear emotion, so negated negative cues are dropped.
* **Questions ask about feelings more than they show them.** "Are you happy with it?" counts
  half; surprise is exempt because incredulity is phrased as a question ("really?").
* **Long messages need more evidence.** One "good" in a forty-word message about train times
  is a passing word, so the threshold grows with length beyond ten words.

Much of what a lexicon gets wrong on DailyDialog is label noise it cannot see: the corpus
marks a plain "Thanks." as happiness more often than not.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final

from core.mood.detector import EMOTIONS
from core.mood.lexicon_words import LexiconWords, WordCue, load_lexicon_words
from core.types import Mood, MoodResult

__all__ = [
    "EMOTION_THRESHOLD",
    "LexiconMoodDetector",
    "tokenize",
]


#: Every emoji in the lexicon is a cue of this weight for its mood.
_EMOJI_WEIGHT: Final = 2.0

#: How many content words after a negator it applies to (clause punctuation ends it sooner).
_NEGATION_SCOPE: Final = 3
#: A negated happiness cue turns into this fraction of its weight as sadness.
_NEGATED_POSITIVE_TO_SADNESS: Final = 0.5

#: How many content words after an intensifier it applies to (clause punctuation ends it sooner).
_INTENSIFIER_REACH: Final = 2

_QUESTION_OR_BANG: Final[frozenset[str]] = frozenset({"!", "?"})
#: Clause boundaries end negation and intensifier scope.
_BOUNDARIES: Final[frozenset[str]] = frozenset({".", ",", ";", ":", "!", "?", "but"})

#: Each "!" (up to three) scales the emotion scores by this much: exclamations amplify
#: whatever is being expressed rather than pointing at one emotion.
_EXCLAMATION_BOOST: Final = 0.25
_MAX_EXCLAMATIONS: Final = 3
#: "?!" / "!?" outside a known phrase: incredulity.
_INTERROBANG_WEIGHT: Final = 1.5
#: Non-surprise evidence in a clause ending with "?" counts this much.
_QUESTION_DAMPING: Final = 0.5
#: SHOUTED or stretched words ("HATE", "sooo") count this much more.
_EMPHASIS_BOOST: Final = 1.3

#: Scores below this stay NO_EMOTION.
EMOTION_THRESHOLD: Final = 1.0
#: Messages up to this many words need only the base threshold ...
_LENGTH_FREE_WORDS: Final = 10
#: ... and every this many words beyond it raise the threshold by another base threshold.
_LENGTH_SCALE: Final = 25

_APOSTROPHES: Final = str.maketrans({"’": "'", "‘": "'", "`": "'", "´": "'"})
# "I ' m", "don ’ t" (tokenised corpora, some keyboards) -> "I'm", "don't".
_SPACED_CONTRACTION: Final = re.compile(r"(\w) ?' ?(s|t|m|re|ve|ll|d)\b", re.IGNORECASE)
_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)*|[!?.,;:]")
_ELONGATED: Final = re.compile(r"(\w)\1{2,}")
_LAUGH: Final = re.compile(r"(?:ha){2,}h?|(?:he){2,}h?|(?:ah){2,}|l+o+l+|lmf?ao+|rofl")


def tokenize(text: str) -> list[str]:
    """Lower-case word and punctuation tokens, keeping contractions ("don't") whole.

    Curly apostrophes and the spaced contractions of tokenised text ("don ' t") are
    normalised first, so every spelling of a contraction hits the same lexicon entry.
    """
    return [token.lower() for token in _raw_tokens(text)]


def _raw_tokens(text: str) -> list[str]:
    text = _SPACED_CONTRACTION.sub(r"\1'\2", text.translate(_APOSTROPHES))
    return _TOKEN_RE.findall(text)


@dataclass(slots=True)
class _Scores:
    """Accumulated evidence per emotion for one message."""

    values: dict[Mood, float]

    @classmethod
    def empty(cls) -> _Scores:
        return cls({mood: 0.0 for mood in EMOTIONS})

    def add(self, mood: Mood, weight: float) -> None:
        self.values[mood] += weight


class LexiconMoodDetector:
    """Dependency-free lexicon and rules detector over DailyDialog's seven labels.

    Scores each emotion from word and phrase cues, emoji and emoticons, adjusted for negation,
    intensifiers, emphasis and exclamation marks; reports the best-scoring emotion when its
    score reaches ``threshold`` and NO_EMOTION otherwise. Stateless and thread-safe.

    ``words`` defaults to the shipped lists (``lexicon_words.toml``), read once per process.
    """

    name = "lexicon"

    def __init__(
        self, threshold: float = EMOTION_THRESHOLD, *, words: LexiconWords | None = None
    ) -> None:
        self.threshold = threshold
        self.words = load_lexicon_words() if words is None else words

    async def detect(self, text: str, previous: str | None = None) -> MoodResult:
        """See :meth:`detect_sync`; pure CPU and fast, so it runs inline on the event loop."""
        return self.detect_sync(text, previous)

    def detect_sync(self, text: str, previous: str | None = None) -> MoodResult:
        """The mood of ``text``.

        ``previous`` is accepted for the protocol but unused: carrying a share of the
        previous message's evidence over gained nothing measurable on DailyDialog's training
        split, and it makes results harder to explain.

        An emotion is reported when its score reaches the threshold, which grows for messages
        longer than :data:`_LENGTH_FREE_WORDS` words: one "good" in a long informational
        message is a passing word, not the message's mood.

        Confidence for an emotion is its share of all evidence plus the threshold (the
        evidence "no emotion" stands for), so a lone cue that barely fires gives about 0.5
        and several agreeing strong cues approach 1. For NO_EMOTION it falls from 1 (no cue
        at all) towards 0.5 as the best emotion gets close to the threshold.
        """
        del previous
        scores, words = self._analyse(text)
        threshold = self.threshold_for(words)
        top_mood = max(EMOTIONS, key=lambda mood: scores[mood])
        top = scores[top_mood]
        if top < threshold:
            return MoodResult(Mood.NO_EMOTION, _clamp(1.0 - 0.5 * top / threshold))
        return MoodResult(top_mood, _clamp(top / (sum(scores.values()) + threshold)))

    def threshold_for(self, words: int) -> float:
        """Evidence needed to report an emotion in a message of ``words`` words."""
        extra = max(0, words - _LENGTH_FREE_WORDS) / _LENGTH_SCALE
        return self.threshold * (1.0 + extra)

    def scores(self, text: str) -> dict[Mood, float]:
        """Raw evidence per emotion (not normalised); useful for debugging the lexicon."""
        return self._analyse(text)[0]

    def _analyse(self, text: str) -> tuple[dict[Mood, float], int]:
        scores = _Scores.empty()
        text = _score_symbols(self.words, text, scores)
        tokens = _raw_tokens(text)
        _Scorer(self.words, tokens, scores).run()
        words = sum(1 for token in tokens if token[0].isalnum())
        return dict(scores.values), words


def _clamp(value: float) -> float:
    if math.isnan(value):
        return 0.0
    return min(1.0, max(0.0, value))


def _score_symbols(lexicon: LexiconWords, text: str, scores: _Scores) -> str:
    """Score emoji and emoticons; return the text with emoticons blanked out.

    Emoticons are removed so their letters (":D", "xD") do not become word tokens.
    """
    for char in text:
        mood = lexicon.emoji.get(char)
        if mood is not None:
            scores.add(mood, _EMOJI_WEIGHT)

    def replace(match: re.Match[str]) -> str:
        mood, weight = lexicon.emoticons[match.group(0)]
        scores.add(mood, weight)
        return " "

    return lexicon.emoticon_pattern.sub(replace, text)


def _lookup(lexicon: LexiconWords, token: str) -> tuple[tuple[WordCue, ...], bool]:
    """Lexicon cues for a lower-case token and whether it was emphasised by stretching."""
    cues = lexicon.word_cues(token)
    if cues is not None:
        return cues, False
    if _LAUGH.fullmatch(token):
        return ((Mood.HAPPINESS, 1.5),), False
    if _ELONGATED.search(token):
        # "sooo", "goooood", "whaaat": try the doubled spelling first (good, cool), then single.
        for squeezed in (_ELONGATED.sub(r"\1\1", token), _ELONGATED.sub(r"\1", token)):
            cues = lexicon.word_cues(squeezed)
            if cues is not None:
                return cues, True
    return (), False


def _squeeze(token: str) -> str:
    return _ELONGATED.sub(r"\1", token) if _ELONGATED.search(token) else token


class _Scorer:
    """Walks the tokens of one message once, accumulating evidence clause by clause.

    State is per clause (punctuation ends a clause): a pending negation, a pending intensifier
    and the clause's own scores, which are damped if the clause turns out to be a question.
    """

    def __init__(self, lexicon: LexiconWords, raw: list[str], scores: _Scores) -> None:
        self.lexicon = lexicon
        self.raw = raw
        # Squeezed spellings match phrases and function words ("sooo" -> "so", "nooo way");
        # lookups use the unsqueezed form so that "goooood" can become "good", not "god".
        self.tokens = [_squeeze(t.lower()) for t in raw]
        self.lowered = [t.lower() for t in raw]
        self.scores = scores
        self.clause = _Scores.empty()
        self.negation_left = 0
        self.boost = 1.0
        self.boost_left = 0
        self.exclamations = 0

    def run(self) -> None:
        lexicon, tokens = self.lexicon, self.tokens
        i = 0
        while i < len(tokens):
            phrase = lexicon.match_phrase(tokens, i)
            if phrase is not None:
                length, mood, weight = phrase
                if mood is not None:
                    self.apply(mood, weight)
                self.advance()
                for token in tokens[i : i + length]:
                    if token in _BOUNDARIES:
                        self.end_clause(token)
                i += length
                continue
            token = tokens[i]
            i += 1
            if token in _BOUNDARIES:
                if (
                    token in _QUESTION_OR_BANG
                    and i < len(tokens)
                    and tokens[i] in _QUESTION_OR_BANG
                    and tokens[i] != token
                ):
                    self.clause.add(Mood.SURPRISE, _INTERROBANG_WEIGHT)
                self.end_clause(token)
            elif token in lexicon.negators:
                self.negation_left = _NEGATION_SCOPE
            elif token in lexicon.intensifiers and _next_is_cue(lexicon, tokens, self.lowered, i):
                factor = lexicon.intensifiers[token]
                self.boost = factor if self.boost_left == 0 else self.boost * factor
                self.boost_left = _INTENSIFIER_REACH
            else:
                cues, stretched = _lookup(lexicon, self.lowered[i - 1])
                emphasis = _EMPHASIS_BOOST if stretched or _shouted(self.raw[i - 1]) else 1.0
                for mood, weight in cues:
                    self.apply(mood, weight * emphasis)
                self.advance()
        self.end_clause(".")
        if self.exclamations:
            factor = 1.0 + _EXCLAMATION_BOOST * min(self.exclamations, _MAX_EXCLAMATIONS)
            for mood in EMOTIONS:
                self.scores.values[mood] *= factor

    def apply(self, mood: Mood, weight: float) -> None:
        if self.boost_left > 0:
            weight *= self.boost
        if self.negation_left > 0:
            if mood is Mood.HAPPINESS:
                self.clause.add(Mood.SADNESS, weight * _NEGATED_POSITIVE_TO_SADNESS)
            return
        self.clause.add(mood, weight)

    def advance(self) -> None:
        """One content word (or phrase) consumed: pending modifiers reach one word less."""
        self.negation_left = max(0, self.negation_left - 1)
        self.boost_left = max(0, self.boost_left - 1)

    def end_clause(self, boundary: str) -> None:
        if boundary == "!":
            self.exclamations += 1
        # Feelings named in a question are usually asked about, not felt ("are you happy
        # with it?"); surprise is the exception, since incredulity is phrased as a question.
        damping = _QUESTION_DAMPING if boundary == "?" else 1.0
        for mood, value in self.clause.values.items():
            if value:
                factor = 1.0 if mood is Mood.SURPRISE else damping
                self.scores.add(mood, value * factor)
                self.clause.values[mood] = 0.0
        self.negation_left = 0
        self.boost_left = 0


def _next_is_cue(lexicon: LexiconWords, tokens: list[str], lowered: list[str], start: int) -> bool:
    """Whether an intensifier at ``start - 1`` is followed by something it can intensify."""
    for j in range(start, min(start + _INTENSIFIER_REACH, len(tokens))):
        if tokens[j] in _BOUNDARIES:
            return False
        if (
            _lookup(lexicon, lowered[j])[0]
            or lexicon.match_phrase(tokens, j)
            or tokens[j] in lexicon.intensifiers
        ):
            return True
    return False


def _shouted(token: str) -> bool:
    return len(token) >= 3 and token.isalpha() and token.isupper()
