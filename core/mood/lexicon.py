"""The lexicon mood detector: hand-written word lists plus a few rules, no model.

:class:`LexiconMoodDetector` scores a message from word and phrase cues, emoji and emoticons,
adjusted for negation, intensifiers, exclamation and question cues. It needs no model, no
downloads and no GPU, and is cheap enough to run inline on the event loop; it makes personas
react sensibly to clear emotions, and it is the detector to choose where a model-backed one
cannot be installed. Its quality and speed next to the other detectors are in
docs/benchmarks.md#mood-detection.

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
from core.types import Mood, MoodResult

__all__ = [
    "EMOTION_THRESHOLD",
    "LexiconMoodDetector",
    "tokenize",
]


# --------------------------------------------------------------------------------------------
# Lexicon data
#
# Weights are relative to EMOTION_THRESHOLD (1.0): a cue of weight >= 1 decides on its own, a
# cue of 0.5 needs help. The tiers were set by hand from what the words mean, then adjusted by
# checking how often each cue co-occurs with each label in DailyDialog's *training* split (so
# "thanks" is a strong happiness cue, "miss" and "help" are no cue at all because they are
# mostly neutral in use, and words that only describe bad situations, like "lost" or "sick",
# need company to count). Words that plainly name a feeling ("lonely", "angry", "scared")
# keep their full weight even where the corpus labels them inconsistently, since a chat bot
# should react to them. Inflections are listed explicitly: no stemmer, no dependencies.
# --------------------------------------------------------------------------------------------

_WORDS: Final[dict[Mood, dict[float, str]]] = {
    Mood.HAPPINESS: {
        2.0: """
            happy happier happiest happily happiness glad delighted delightful delighting
            thrilled overjoyed ecstatic elated joy joyful joyous jubilant wonderful wonderfully
            fantastic fabulous terrific marvelous marvellous superb splendid awesome
            congratulations congratulation congrats congratulate congratulated yay yippee
            hooray hurray hurrah woohoo thanks perfect
        """,
        1.5: """
            love loved loving adore adored adores adorable lovely enjoy enjoyed enjoying
            enjoyable pleased pleasure pleasant pleasantly grateful thankful thank thx ty
            appreciate appreciated appreciative excited exciting excitement cheerful cheers
            excellent brilliant perfectly beautiful beautifully gorgeous stunning great blessed
            proud fortunate lucky relieved relief glorious nice nicer nicest haha hahaha hehe
            lol lmao rofl
        """,
        1.0: """
            cool fun laugh laughed laughing laughs smiled smiling grin grinning cute sweet
            welcome impressive amazing yummy tasty delicious celebrate celebrated celebrating
            celebration generous thoughtful charming comfortable comfy cozy cosy wow dance
            dancing beach good interesting greatest favorite favourite
        """,
        0.5: """
            smart yeah yep yup absolutely gladly gift gifts wedding picnic sunshine sunny music
            impressed funny fresh won winner loves party birthday hope
        """,
    },
    Mood.SADNESS: {
        2.0: """
            sad sadder saddest sadly sadness unhappy depressed depressing depression miserable
            misery heartbroken heartbreaking heartbreak grief grieve grieving grieved mourn
            mourning mourned lonely loneliness sorrow sorrowful tearful devastated hopeless
            despair gloomy
        """,
        1.5: """
            cry cried cries crying tears sob sobbed sobbing weep weeping wept disappointed
            disappointing disappointment disappoints regret regrets regretted funeral
            failed fail failure pity homesick helpless worthless alas lonesome dumped
        """,
        1.0: """
            died unfortunate awfully terribly sorry
        """,
        0.8: """
            upset
        """,
        0.5: """
            apologize apologise apologies bad worse worst poor sick ill tired exhausted lost
            loss hurt hurts hurting pain painful suffer suffering dead die dying
            unfortunately alone broke fired sigh terrible
        """,
    },
    Mood.ANGER: {
        2.0: """
            angry angrier angriest angrily anger furious fury rage raging enraged outraged
            livid infuriating infuriated infuriates pissed damn damned dammit goddamn
        """,
        1.5: """
            annoyed annoying annoys annoy annoyance irritated irritating irritates irritate
            frustrated frustrating frustration frustrates idiot idiots idiotic moron morons
            stupid stupidity jerk jerks bastard bastards liar liars lied cheated cheat cheater
            unfair unacceptable outrageous rude rudeness insult insulted insulting offended
            offensive argh grr grrr mad
        """,
        1.0: """
            hate hated hates hating hateful complaint blamed bloody hell ridiculous
            nonsense
        """,
        0.5: """
            complain complained complaining complaints blame fault yell yelled yelling shout
            shouted shouting scream screamed screaming useless fool fools foolish
        """,
    },
    Mood.DISGUST: {
        2.0: """
            disgusting disgusted disgust disgusts gross grossed yuck yucky eww ew ewww
            revolting repulsive repulsed repugnant nauseating sickening vile stink stinks
            stinky stank stunk
        """,
        1.5: """
            nasty rotten filthy filth hideous horrible horribly awful dreadful loathe loathes
            loathed loathsome despise despised detest detested abhor appalling appalled horrid
            puke puked vomit vomited barf smelly foul distasteful
        """,
        1.0: """
            dirty ugh creepy ugly nauseous
        """,
        0.5: """
            terrible boring bored waste wasted mess messy greasy cockroach cockroaches
            unbearable
        """,
    },
    Mood.FEAR: {
        2.0: """
            scared scary scare scares scaring frightened frightening frighten frightens
            fright terrified terrifying terrify terror horrified fearful panic panicked
            panicking petrified spooky
        """,
        1.5: """
            afraid fear feared fears anxious anxiety dread dreading alarmed haunted tremble
            trembling nightmare nightmares creepy
        """,
        1.0: """
            nervous nervously uneasy
        """,
        0.8: """
            worried worry worrying worries
        """,
    },
    Mood.SURPRISE: {
        2.0: """
            surprised surprising surprisingly astonished astonishing astounded astounding
            shocked shocking stunned unbelievable incredible unexpected unexpectedly whoa
            woah omg gosh goodness kidding joking jeez geez wtf
        """,
        1.5: """
            surprise amazed shock oops whoops
        """,
        0.8: """
            huh wow amazing
        """,
    },
}

# Multi-word cues, matched on tokens (punctuation "!" and "?" are tokens). A mood of None
# consumes the words without scoring them: it is how polite formulas ("I'm afraid I can't")
# stop their parts from counting. Longest match wins.
_PHRASES: Final[dict[str, tuple[Mood | None, float]]] = {
    # surprise
    "no way": (Mood.SURPRISE, 2.0),
    "really ?": (Mood.SURPRISE, 2.5),
    "really !": (Mood.SURPRISE, 1.0),
    "oh really": (Mood.SURPRISE, 1.5),
    "seriously ?": (Mood.SURPRISE, 2.0),
    "are you serious": (Mood.SURPRISE, 2.0),
    "you serious": (Mood.SURPRISE, 1.5),
    "are you sure ?": (Mood.SURPRISE, 1.0),
    "you're kidding": (Mood.SURPRISE, 2.5),
    "you must be kidding": (Mood.SURPRISE, 2.5),
    "no kidding": (Mood.SURPRISE, 1.5),
    "you're joking": (Mood.SURPRISE, 2.5),
    "can't believe": (Mood.SURPRISE, 2.0),
    "cannot believe": (Mood.SURPRISE, 2.0),
    "couldn't believe": (Mood.SURPRISE, 2.0),
    "don't believe it": (Mood.SURPRISE, 1.5),
    "believe it or not": (Mood.SURPRISE, 1.0),
    "oh my god": (Mood.SURPRISE, 2.0),
    "oh my gosh": (Mood.SURPRISE, 2.0),
    "oh my goodness": (Mood.SURPRISE, 2.0),
    "my god": (Mood.SURPRISE, 1.5),
    "my goodness": (Mood.SURPRISE, 2.0),
    "good heavens": (Mood.SURPRISE, 2.0),
    "good lord": (Mood.SURPRISE, 2.0),
    "good grief": (Mood.SURPRISE, 1.5),
    "what ? !": (Mood.SURPRISE, 2.5),
    "what ! ?": (Mood.SURPRISE, 2.5),
    "what !": (Mood.SURPRISE, 2.0),
    "what ?": (Mood.SURPRISE, 0.5),
    "how come": (Mood.SURPRISE, 0.7),
    "who knew": (Mood.SURPRISE, 1.5),
    "what a surprise": (Mood.SURPRISE, 2.5),
    "what a coincidence": (Mood.SURPRISE, 2.5),
    "out of the blue": (Mood.SURPRISE, 1.5),
    # happiness
    "thank you": (Mood.HAPPINESS, 1.5),
    "not bad": (Mood.HAPPINESS, 1.0),
    "not too bad": (Mood.HAPPINESS, 1.0),
    "can't wait": (Mood.HAPPINESS, 1.5),
    "cannot wait": (Mood.HAPPINESS, 1.5),
    "looking forward": (Mood.HAPPINESS, 1.5),
    "look forward": (Mood.HAPPINESS, 1.5),
    "don't mention it": (Mood.HAPPINESS, 1.5),
    "my pleasure": (Mood.HAPPINESS, 2.0),
    "good luck": (Mood.HAPPINESS, 1.5),
    "good idea": (Mood.HAPPINESS, 2.5),
    "good job": (Mood.HAPPINESS, 1.5),
    "well done": (Mood.HAPPINESS, 1.5),
    "have fun": (Mood.HAPPINESS, 1.5),
    "sounds good": (Mood.HAPPINESS, 1.5),
    "sounds great": (Mood.HAPPINESS, 2.0),
    "feel good": (Mood.HAPPINESS, 1.5),
    "feel great": (Mood.HAPPINESS, 2.0),
    "on cloud nine": (Mood.HAPPINESS, 2.5),
    "over the moon": (Mood.HAPPINESS, 2.5),
    "made my day": (Mood.HAPPINESS, 2.5),
    # sadness
    "sorry to hear": (Mood.SADNESS, 2.0),
    "sorry for your loss": (Mood.SADNESS, 2.5),
    "passed away": (Mood.SADNESS, 2.5),
    "broke up": (Mood.SADNESS, 2.0),
    "broken heart": (Mood.SADNESS, 2.5),
    "what a pity": (Mood.SADNESS, 2.0),
    "what a shame": (Mood.SADNESS, 2.0),
    "too bad": (Mood.SADNESS, 1.0),
    "feel down": (Mood.SADNESS, 2.0),
    "feeling down": (Mood.SADNESS, 2.0),
    "feel blue": (Mood.SADNESS, 2.0),
    "feeling blue": (Mood.SADNESS, 2.0),
    "let down": (Mood.SADNESS, 1.5),
    "not in the mood": (Mood.SADNESS, 1.5),
    "afraid not": (Mood.SADNESS, 1.0),
    "oh no": (Mood.SADNESS, 1.0),
    "oh dear": (Mood.SADNESS, 1.0),
    # anger
    "shut up": (Mood.ANGER, 2.5),
    "how dare": (Mood.ANGER, 2.5),
    "fed up": (Mood.ANGER, 2.0),
    "sick of": (Mood.ANGER, 1.5),
    "sick and tired": (Mood.ANGER, 2.5),
    "tired of": (Mood.ANGER, 1.0),
    "can't stand": (Mood.ANGER, 1.5),
    "cannot stand": (Mood.ANGER, 1.5),
    "get out": (Mood.ANGER, 1.0),
    "leave me alone": (Mood.ANGER, 2.0),
    "go to hell": (Mood.ANGER, 2.5),
    "damn it": (Mood.ANGER, 2.5),
    "what the hell": (Mood.ANGER, 2.0),
    "makes me mad": (Mood.ANGER, 2.5),
    "pisses me off": (Mood.ANGER, 2.5),
    "piss off": (Mood.ANGER, 2.5),
    "hate you": (Mood.ANGER, 2.5),
    "your fault": (Mood.ANGER, 1.5),
    "enough is enough": (Mood.ANGER, 2.5),
    # disgust
    "makes me sick": (Mood.DISGUST, 2.5),
    "grossed out": (Mood.DISGUST, 2.5),
    "turns my stomach": (Mood.DISGUST, 2.5),
    # fear
    "afraid of": (Mood.FEAR, 2.0),
    "scared of": (Mood.FEAR, 2.5),
    "frightened of": (Mood.FEAR, 2.5),
    "terrified of": (Mood.FEAR, 2.5),
    "worried about": (Mood.FEAR, 1.0),
    "help me !": (Mood.FEAR, 1.5),
    "help !": (Mood.FEAR, 1.5),
    # formulas that would otherwise fire the wrong way
    "i'm afraid": (None, 0.0),
    "i am afraid": (None, 0.0),
    "afraid so": (None, 0.0),
    "don't worry": (None, 0.0),
    "no worries": (None, 0.0),
    "never mind": (None, 0.0),
    "excuse me": (None, 0.0),
    "no problem": (None, 0.0),
    "good morning": (None, 0.0),
    "good afternoon": (None, 0.0),
    "good evening": (None, 0.0),
    "how are you": (None, 0.0),
    "how do you do": (None, 0.0),
    "would you like": (None, 0.0),
    "do you like": (None, 0.0),
    "what do you like": (None, 0.0),
    "i'd like": (None, 0.0),
    "i would like": (None, 0.0),
    "feel like": (None, 0.0),
    "looks like": (None, 0.0),
    "look like": (None, 0.0),
    "sounds like": (None, 0.0),
    "seems like": (None, 0.0),
    "as well": (None, 0.0),
    "very well": (None, 0.0),
    "pretty much": (None, 0.0),
    "i hope": (None, 0.0),
    "hope so": (None, 0.0),
    "kind of": (None, 0.0),
    "what kind": (None, 0.0),
    "make sure": (None, 0.0),
    "lost and found": (None, 0.0),
    "mad about": (Mood.HAPPINESS, 1.0),
    "crazy about": (Mood.HAPPINESS, 1.5),
    "dying to": (Mood.HAPPINESS, 1.0),
}

_EMOTICONS: Final[dict[str, tuple[Mood, float]]] = {
    ":)": (Mood.HAPPINESS, 1.5),
    ":-)": (Mood.HAPPINESS, 1.5),
    ":]": (Mood.HAPPINESS, 1.5),
    "=)": (Mood.HAPPINESS, 1.5),
    ":D": (Mood.HAPPINESS, 2.0),
    ":-D": (Mood.HAPPINESS, 2.0),
    "=D": (Mood.HAPPINESS, 2.0),
    "xD": (Mood.HAPPINESS, 2.0),
    "XD": (Mood.HAPPINESS, 2.0),
    ";)": (Mood.HAPPINESS, 1.0),
    ";-)": (Mood.HAPPINESS, 1.0),
    ":P": (Mood.HAPPINESS, 1.0),
    ":p": (Mood.HAPPINESS, 1.0),
    ":-P": (Mood.HAPPINESS, 1.0),
    "<3": (Mood.HAPPINESS, 2.0),
    "^_^": (Mood.HAPPINESS, 2.0),
    "^^": (Mood.HAPPINESS, 1.5),
    ":(": (Mood.SADNESS, 2.0),
    ":-(": (Mood.SADNESS, 2.0),
    ":[": (Mood.SADNESS, 2.0),
    "=(": (Mood.SADNESS, 2.0),
    ":'(": (Mood.SADNESS, 2.5),
    ":'-(": (Mood.SADNESS, 2.5),
    ";(": (Mood.SADNESS, 2.0),
    "</3": (Mood.SADNESS, 2.5),
    "T_T": (Mood.SADNESS, 2.5),
    ">:(": (Mood.ANGER, 2.5),
    ">:-(": (Mood.ANGER, 2.5),
    ":@": (Mood.ANGER, 2.0),
    ":O": (Mood.SURPRISE, 2.0),
    ":o": (Mood.SURPRISE, 2.0),
    ":-O": (Mood.SURPRISE, 2.0),
    ":-o": (Mood.SURPRISE, 2.0),
    "O_O": (Mood.SURPRISE, 2.0),
    "o_O": (Mood.SURPRISE, 2.0),
    "O_o": (Mood.SURPRISE, 2.0),
    "D:": (Mood.FEAR, 1.5),
}

_EMOJI: Final[dict[Mood, str]] = {
    Mood.HAPPINESS: (
        "😀😃😄😁😆😅😂🤣😊😇🙂☺😉😍🥰😘😗😙😚😋😛😜🤪😝🤗🤩🥳"
        "😎😺😸😹😻❤💕💖💗💓💞💘💝🧡💛💚💙💜🎉🎊👍👏🙌✨🌞"
    ),
    Mood.SADNESS: "😢😭😞😔😟☹🙁😕😩😫🥺😿💔😥😪🥀",
    Mood.ANGER: "😡😠🤬👿💢😤🖕",
    Mood.DISGUST: "🤢🤮😖🙄😒🤧",
    Mood.FEAR: "😨😱😰😧😦🥶😬🫣",
    Mood.SURPRISE: "😮😯😲🤯😳🙀⁉‼",
}
_EMOJI_WEIGHT: Final = 2.0

_NEGATOR_WORDS: Final = """
    not no never nothing nobody none neither nor hardly barely scarcely without cannot
    don't doesn't didn't isn't aren't wasn't weren't won't wouldn't can't couldn't
    shouldn't haven't hasn't hadn't mustn't needn't ain't dont doesnt didnt isnt arent
    wasnt werent wont wouldnt cant couldnt shouldnt havent hasnt hadnt
"""
_NEGATORS: Final[frozenset[str]] = frozenset(_NEGATOR_WORDS.split())
#: How many content words after a negator it applies to (clause punctuation ends it sooner).
_NEGATION_SCOPE: Final = 3
#: A negated happiness cue turns into this fraction of its weight as sadness.
_NEGATED_POSITIVE_TO_SADNESS: Final = 0.5

_INTENSIFIERS: Final[dict[str, float]] = {
    "very": 1.5,
    "so": 1.5,
    "really": 1.5,
    "extremely": 1.8,
    "incredibly": 1.8,
    "totally": 1.5,
    "absolutely": 1.5,
    "completely": 1.5,
    "utterly": 1.8,
    "truly": 1.5,
    "super": 1.5,
    "too": 1.3,
    "such": 1.3,
    "quite": 1.2,
    "pretty": 1.2,
    "most": 1.3,
    "deeply": 1.6,
    "terribly": 1.6,
    "awfully": 1.6,
    "particularly": 1.3,
    "especially": 1.3,
    "insanely": 1.8,
    "damn": 1.5,
    "bloody": 1.5,
    "freaking": 1.5,
    "fucking": 1.8,
}
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


def _build_words() -> dict[str, tuple[tuple[Mood, float], ...]]:
    table: dict[str, list[tuple[Mood, float]]] = {}
    for mood, tiers in _WORDS.items():
        for weight, words in tiers.items():
            for word in words.split():
                cues = table.setdefault(word, [])
                # A word listed twice for one mood keeps its highest weight.
                cues[:] = [c for c in cues if c[0] is not mood or c[1] > weight]
                if not any(c[0] is mood for c in cues):
                    cues.append((mood, weight))
    return {word: tuple(cues) for word, cues in table.items()}


_WORD_CUES: Final = _build_words()
_PhraseCue = tuple[tuple[str, ...], Mood | None, float]


def _build_phrases() -> dict[str, list[_PhraseCue]]:
    """Index phrases by first token, longest first, so the longest match wins."""
    table: dict[str, list[_PhraseCue]] = {}
    for text, (mood, weight) in _PHRASES.items():
        tokens = tuple(text.split())
        table.setdefault(tokens[0], []).append((tokens, mood, weight))
    for candidates in table.values():
        candidates.sort(key=lambda cue: -len(cue[0]))
    return table


_PHRASE_CUES: Final = _build_phrases()
_EMOJI_CUES: Final[dict[str, Mood]] = {
    char: mood for mood, chars in _EMOJI.items() for char in chars
}

# Emoticons must not be glued to word characters on the side where they start or end with a
# letter or digit ("xD" is not part of "fixDate", "D:" not part of "RAID:"), while
# punctuation-only ones may follow a word directly ("great:)").
_EMOTICON_RE: Final = re.compile(
    "|".join(
        ("(?<![A-Za-z0-9])" if e[0].isalnum() else "(?<![:;=<>^])")
        + re.escape(e)
        + ("(?![A-Za-z0-9])" if e[-1].isalnum() else "(?![)(\\]\\[])")
        for e in sorted(_EMOTICONS, key=len, reverse=True)
    )
)

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
    """

    name = "lexicon"

    def __init__(self, threshold: float = EMOTION_THRESHOLD) -> None:
        self.threshold = threshold

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
        text = _score_symbols(text, scores)
        tokens = _raw_tokens(text)
        _Scorer(tokens, scores).run()
        words = sum(1 for token in tokens if token[0].isalnum())
        return dict(scores.values), words


def _clamp(value: float) -> float:
    if math.isnan(value):
        return 0.0
    return min(1.0, max(0.0, value))


def _score_symbols(text: str, scores: _Scores) -> str:
    """Score emoji and emoticons; return the text with emoticons blanked out.

    Emoticons are removed so their letters (":D", "xD") do not become word tokens.
    """
    for char in text:
        mood = _EMOJI_CUES.get(char)
        if mood is not None:
            scores.add(mood, _EMOJI_WEIGHT)

    def replace(match: re.Match[str]) -> str:
        mood, weight = _EMOTICONS[match.group(0)]
        scores.add(mood, weight)
        return " "

    return _EMOTICON_RE.sub(replace, text)


def _lookup(token: str) -> tuple[tuple[tuple[Mood, float], ...], bool]:
    """Lexicon cues for a lower-case token and whether it was emphasised by stretching."""
    cues = _WORD_CUES.get(token)
    if cues is not None:
        return cues, False
    if _LAUGH.fullmatch(token):
        return ((Mood.HAPPINESS, 1.5),), False
    if _ELONGATED.search(token):
        # "sooo", "goooood", "whaaat": try the doubled spelling first (good, cool), then single.
        for squeezed in (_ELONGATED.sub(r"\1\1", token), _ELONGATED.sub(r"\1", token)):
            cues = _WORD_CUES.get(squeezed)
            if cues is not None:
                return cues, True
    return (), False


def _match_phrase(tokens: list[str], start: int) -> tuple[int, Mood | None, float] | None:
    for phrase, mood, weight in _PHRASE_CUES.get(tokens[start], ()):
        end = start + len(phrase)
        if tuple(tokens[start:end]) == phrase:
            return len(phrase), mood, weight
    return None


def _squeeze(token: str) -> str:
    return _ELONGATED.sub(r"\1", token) if _ELONGATED.search(token) else token


class _Scorer:
    """Walks the tokens of one message once, accumulating evidence clause by clause.

    State is per clause (punctuation ends a clause): a pending negation, a pending intensifier
    and the clause's own scores, which are damped if the clause turns out to be a question.
    """

    def __init__(self, raw: list[str], scores: _Scores) -> None:
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
        tokens = self.tokens
        i = 0
        while i < len(tokens):
            phrase = _match_phrase(tokens, i)
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
            elif token in _NEGATORS:
                self.negation_left = _NEGATION_SCOPE
            elif token in _INTENSIFIERS and _next_is_cue(tokens, self.lowered, i):
                factor = _INTENSIFIERS[token]
                self.boost = factor if self.boost_left == 0 else self.boost * factor
                self.boost_left = _INTENSIFIER_REACH
            else:
                cues, stretched = _lookup(self.lowered[i - 1])
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


def _next_is_cue(tokens: list[str], lowered: list[str], start: int) -> bool:
    """Whether an intensifier at ``start - 1`` is followed by something it can intensify."""
    for j in range(start, min(start + _INTENSIFIER_REACH, len(tokens))):
        if tokens[j] in _BOUNDARIES:
            return False
        if _lookup(lowered[j])[0] or _match_phrase(tokens, j) or tokens[j] in _INTENSIFIERS:
            return True
    return False


def _shouted(token: str) -> bool:
    return len(token) >= 3 and token.isalpha() and token.isupper()
