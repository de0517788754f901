"""text2emotion (PyPI ``text2emotion==0.0.5``) as a mood detector, behind an adapter.

text2emotion is a popular keyword-list emotion scorer, so it is worth offering (and
measuring) next to our own detectors, but the package is unmaintained and hostile to a
self-hosted bot in three ways this module works around without touching the installed files:

* **It downloads at import time.** Its ``__init__`` calls ``nltk.download`` for stopwords,
  punkt and wordnet, which hangs or fails on a machine without internet and writes into the
  user's home on one with it. We check for the NLTK data ourselves first (``nltk.data.find``)
  and fail at start-up with the exact packages and the command that installs them; during
  the import ``nltk.download`` is swapped for a function that refuses, so nothing is ever
  fetched even when our check and the package disagree.
* **It needs other data than it downloads.** It asks for ``punkt``, but ``word_tokenize`` in
  NLTK 3.9 and later reads ``punkt_tab``; ``WordNetLemmatizer`` needs ``wordnet`` and
  ``stopwords.words()`` needs ``stopwords``. :func:`required_nltk_packages` lists what the
  installed NLTK actually reads.
* **It breaks on emoji 2.x.** It tests characters with ``c in emoji.UNICODE_EMOJI``, a dict
  that emoji 2.0 removed. :func:`install_emoji_shim` puts an equivalent mapping back on the
  ``emoji`` module at run time (only when it is missing).

Its five labels map onto five of DailyDialog's seven (it has no disgust). It returns each
label's share of the emotion words it found, so a message without any gets all zeros (no
emotion), and a lone cue word gets a share of 1.0: the share says which emotion, not how
strongly it is felt. It is slow (it re-reads NLTK's stopword lists for every word; see
docs/benchmarks.md#mood-detection), so detection runs on a worker thread, off the event
loop.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
import sys
import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Final

from core.errors import ConfigError
from core.types import Mood, MoodResult

__all__ = [
    "DEFAULT_THRESHOLD",
    "LABELS",
    "NltkPackage",
    "Text2EmotionMoodDetector",
    "import_text2emotion",
    "install_emoji_shim",
    "missing_nltk_packages",
    "nltk_install_command",
    "required_nltk_packages",
    "result_from_scores",
]

log = logging.getLogger(__name__)

#: text2emotion's labels, in the order it reports them (which also breaks ties).
LABELS: Final[Mapping[str, Mood]] = {
    "Happy": Mood.HAPPINESS,
    "Angry": Mood.ANGER,
    "Surprise": Mood.SURPRISE,
    "Sad": Mood.SADNESS,
    "Fear": Mood.FEAR,
}

#: A label is reported when its share of the message's emotion words reaches this: at 0.5 no
#: other label had more cues. On DailyDialog's training split it scored as well as "any cue"
#: (0.0) with better accuracy, while stricter cuts lost recall. Precision is what limits it:
#: its word list fires on everyday words (docs/benchmarks.md#mood-detection).
DEFAULT_THRESHOLD: Final = 0.5

EXTRA_INSTALL: Final = "pip install 'personabot[text2emotion]'"

GetEmotion = Callable[[str], Mapping[str, float] | None]


@dataclass(frozen=True, slots=True)
class NltkPackage:
    """An NLTK data package (the downloader's name) and a resource path inside it."""

    name: str
    resource: str


def required_nltk_packages() -> tuple[NltkPackage, ...]:
    """The NLTK data text2emotion reads with the installed NLTK, not the data it downloads.

    NLTK 3.9 replaced the pickled ``punkt`` models with ``punkt_tab``; older NLTK releases
    still read ``punkt``.
    """
    punkt = NltkPackage("punkt_tab", "tokenizers/punkt_tab/english/")
    try:
        from nltk.tokenize import punkt as punkt_module

        if not hasattr(punkt_module, "PunktTokenizer"):
            punkt = NltkPackage("punkt", "tokenizers/punkt/english.pickle")
    except ImportError:  # nltk itself is missing; reported by import_text2emotion
        pass
    return (
        NltkPackage("stopwords", "corpora/stopwords"),
        punkt,
        NltkPackage("wordnet", "corpora/wordnet"),
    )


def missing_nltk_packages() -> list[NltkPackage]:
    """Required NLTK packages that ``nltk.data.find`` cannot see on ``nltk.data.path``."""
    import nltk

    missing: list[NltkPackage] = []
    for package in required_nltk_packages():
        try:
            nltk.data.find(package.resource)
        except LookupError:
            missing.append(package)
    return missing


def nltk_install_command(packages: Sequence[NltkPackage]) -> str:
    """The command that installs ``packages`` for this interpreter."""
    names = " ".join(package.name for package in packages)
    return f"{sys.executable} -m nltk.downloader {names}"


def _missing_data_message(missing: Sequence[NltkPackage]) -> str:
    import nltk

    needed = ", ".join(package.name for package in required_nltk_packages())
    absent = ", ".join(package.name for package in missing)
    searched = ", ".join(str(path) for path in nltk.data.path)
    return (
        f"The text2emotion mood detector needs the NLTK data packages {needed}; missing: "
        f"{absent}. Install them with `{nltk_install_command(missing)}` (add `-d DIR` and set "
        f"NLTK_DATA=DIR to keep them elsewhere), or set PERSONABOT_MOOD_DETECTOR=lexicon. "
        f"NLTK looked in: {searched}."
    )


def install_emoji_shim(emoji_module: Any = None) -> bool:
    """Give emoji 2.x back the ``UNICODE_EMOJI`` mapping text2emotion looks characters up in.

    emoji 0.6 (what text2emotion was written against) had ``UNICODE_EMOJI`` as
    ``{emoji: ":name:"}``; emoji 2.0 removed it in favour of ``EMOJI_DATA``
    (``{emoji: {"en": ":name:", ...}}``). The shim rebuilds the old shape on the module
    object, so the installed package stays untouched. Returns whether it added the mapping.
    """
    if emoji_module is None:
        import emoji as emoji_module
    if hasattr(emoji_module, "UNICODE_EMOJI"):
        return False
    data: Mapping[str, Mapping[str, Any]] = emoji_module.EMOJI_DATA
    emoji_module.UNICODE_EMOJI = {char: str(info.get("en", "")) for char, info in data.items()}
    return True


_IMPORT_LOCK = threading.Lock()


def import_text2emotion() -> GetEmotion:
    """``text2emotion.get_emotion``, imported without any download; ConfigError with advice.

    The checks run in the order a user can fix them: the packages, then the NLTK data.
    """
    try:
        import emoji
        import nltk
    except ImportError as exc:
        raise ConfigError(
            f"The text2emotion mood detector needs {exc.name!r}: install the optional extra "
            f"with `{EXTRA_INSTALL}`, or set PERSONABOT_MOOD_DETECTOR=lexicon."
        ) from None
    if importlib.util.find_spec("text2emotion") is None:
        raise ConfigError(
            "The text2emotion mood detector needs the text2emotion package: install the "
            f"optional extra with `{EXTRA_INSTALL}`, or set PERSONABOT_MOOD_DETECTOR=lexicon."
        )
    missing = missing_nltk_packages()
    if missing:
        raise ConfigError(_missing_data_message(missing))
    install_emoji_shim(emoji)
    with _IMPORT_LOCK:
        module = sys.modules.get("text2emotion")
        if module is None:
            module = _import_without_downloads(nltk)
    get_emotion = getattr(module, "get_emotion", None)
    if not callable(get_emotion):
        raise ConfigError(
            "The installed text2emotion has no get_emotion(); personabot supports "
            "text2emotion==0.0.5."
        )
    return get_emotion  # type: ignore[no-any-return]


def _import_without_downloads(nltk: Any) -> ModuleType:
    """Import text2emotion with ``nltk.download`` refusing, and its old-syntax warnings off.

    The swap is process-wide for the duration of the import, hence the caller's lock.
    """
    requested: list[str] = []

    def refuse(info_or_id: object = None, *args: object, **kwargs: object) -> bool:
        requested.append(str(info_or_id))
        return False

    original = nltk.download
    nltk.download = refuse
    try:
        with warnings.catch_warnings():
            # Compiling its source (first import without a .pyc) warns about `is 0` and
            # invalid escapes; they are the package's business, not the user's.
            warnings.simplefilter("ignore", SyntaxWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            module = importlib.import_module("text2emotion")
    finally:
        nltk.download = original
    log.debug("text2emotion asked to download %s at import; refused.", ", ".join(requested))
    return module


def result_from_scores(
    scores: Mapping[str, float] | None, threshold: float = DEFAULT_THRESHOLD
) -> MoodResult:
    """Our mood for text2emotion's per-label shares.

    The best label (ties go to the earlier one in :data:`LABELS`) is reported when its share
    is positive and reaches ``threshold``; its share is the confidence. Otherwise the message
    has no emotion, with confidence ``1 - best share`` (1.0 when no cue word was found).
    Unknown labels are ignored, and ``None`` (what text2emotion returns when it fails
    internally) counts as no cue at all.
    """
    shares = {label: float((scores or {}).get(label, 0.0) or 0.0) for label in LABELS}
    best = max(LABELS, key=lambda label: shares[label])
    share = min(1.0, max(0.0, shares[best]))
    if share > 0.0 and share >= threshold:
        return MoodResult(LABELS[best], share)
    return MoodResult(Mood.NO_EMOTION, 1.0 - share)


class Text2EmotionMoodDetector:
    """text2emotion's scores as DailyDialog moods, computed on a worker thread."""

    name = "text2emotion"

    def __init__(self, get_emotion: GetEmotion, threshold: float = DEFAULT_THRESHOLD) -> None:
        self._get_emotion = get_emotion
        self.threshold = threshold
        # One worker: text2emotion and NLTK's lazy corpus loading are not known to be
        # thread-safe, and one message at a time is what a chat needs.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="personabot-t2e")

    @classmethod
    def load(
        cls, threshold: float = DEFAULT_THRESHOLD, *, warm_up: bool = True
    ) -> Text2EmotionMoodDetector:
        """Import text2emotion safely; ``warm_up`` loads WordNet now rather than on message 1.

        Loading WordNet is slow, and a broken data install only shows when it is
        read, so warming up also turns that into a start-up error.
        """
        detector = cls(import_text2emotion(), threshold)
        if warm_up:
            try:
                detector.scores("I am happy to see you.")
            except LookupError as exc:
                raise ConfigError(
                    f"text2emotion could not read its NLTK data: {exc}".strip()
                ) from None
        return detector

    def scores(self, text: str) -> dict[str, float]:
        """text2emotion's raw shares per label (all zero when it found no cue word)."""
        raw = self._get_emotion(text)
        return {label: float((raw or {}).get(label, 0.0) or 0.0) for label in LABELS}

    def detect_sync(self, text: str, previous: str | None = None) -> MoodResult:
        """The mood of ``text``; ``previous`` is unused, text2emotion reads one text."""
        del previous
        return result_from_scores(self._get_emotion(text), self.threshold)

    async def detect(self, text: str, previous: str | None = None) -> MoodResult:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.detect_sync, text, previous)
