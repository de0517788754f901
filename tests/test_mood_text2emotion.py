"""The text2emotion adapter: label mapping, missing NLTK data, the emoji shim, no downloads.

The real package is used throughout (it is in the ``dev`` extra). Tests that need its NLTK
data skip with the adapter's own explanation when the data is not installed (see README,
"Mood detection", for installing it offline).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.errors import ConfigError
from core.mood import MoodDetector, create_mood_detector
from core.mood.text2emotion import (
    LABELS,
    Text2EmotionMoodDetector,
    install_emoji_shim,
    missing_nltk_packages,
    required_nltk_packages,
    result_from_scores,
)
from core.types import Mood, MoodResult
from tests.conftest import REPO


@pytest.fixture(scope="module")
def detector() -> Iterator[Text2EmotionMoodDetector]:
    try:
        loaded = create_mood_detector("text2emotion")
    except ConfigError as exc:
        pytest.skip(f"text2emotion is not usable here: {exc}")
    assert isinstance(loaded, Text2EmotionMoodDetector)
    yield loaded


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I am so happy today!", Mood.HAPPINESS),
        ("I am so angry and irritated with you", Mood.ANGER),
        ("Wow, what a surprise! I'm amazed", Mood.SURPRISE),
        ("I feel so lonely and miserable", Mood.SADNESS),
        ("That is a scary and frightening thought", Mood.FEAR),
        ("The meeting is at 3pm.", Mood.NO_EMOTION),
        ("😭", Mood.SADNESS),  # through the emoji shim
        ("😡", Mood.ANGER),
    ],
)
async def test_clear_examples(
    detector: Text2EmotionMoodDetector, text: str, expected: Mood
) -> None:
    result = await detector.detect(text, previous="Hello.")
    assert result.mood is expected
    assert 0.0 <= result.confidence <= 1.0


def test_detector_protocol_and_raw_scores(detector: Text2EmotionMoodDetector) -> None:
    assert isinstance(detector, MoodDetector)
    assert detector.name == "text2emotion"
    assert set(detector.scores("I am so happy today!")) == set(LABELS)
    assert detector.detect_sync("") == MoodResult(Mood.NO_EMOTION, 1.0)


def test_label_mapping_covers_five_moods() -> None:
    assert set(LABELS.values()) == {
        Mood.HAPPINESS,
        Mood.ANGER,
        Mood.SURPRISE,
        Mood.SADNESS,
        Mood.FEAR,
    }


def test_result_from_scores() -> None:
    zeros = {label: 0.0 for label in LABELS}
    assert result_from_scores(zeros) == MoodResult(Mood.NO_EMOTION, 1.0)
    assert result_from_scores(None) == MoodResult(Mood.NO_EMOTION, 1.0)
    assert result_from_scores({**zeros, "Happy": 1.0}) == MoodResult(Mood.HAPPINESS, 1.0)
    assert result_from_scores({**zeros, "Fear": 0.67, "Sad": 0.33}).mood is Mood.FEAR
    # Ties go to the label text2emotion lists first; a share under the threshold is no mood.
    assert result_from_scores({**zeros, "Sad": 0.5, "Fear": 0.5}, 0.5).mood is Mood.SADNESS
    weak = result_from_scores({**zeros, "Angry": 0.4, "Sad": 0.3, "Fear": 0.3}, 0.5)
    assert weak.mood is Mood.NO_EMOTION
    assert weak.confidence == pytest.approx(0.6)
    assert result_from_scores({"Bored": 1.0}).mood is Mood.NO_EMOTION


def test_missing_nltk_data_names_packages_and_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nltk = pytest.importorskip("nltk")
    pytest.importorskip("text2emotion")
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    with pytest.raises(ConfigError) as caught:
        create_mood_detector("text2emotion")
    message = str(caught.value)
    assert "stopwords, punkt_tab, wordnet; missing: stopwords, punkt_tab, wordnet" in message
    assert f"`{sys.executable} -m nltk.downloader stopwords punkt_tab wordnet`" in message
    assert "NLTK_DATA" in message and str(tmp_path) in message


def test_only_the_missing_packages_are_in_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nltk = pytest.importorskip("nltk")
    pytest.importorskip("text2emotion")
    (tmp_path / "corpora" / "stopwords").mkdir(parents=True)
    (tmp_path / "tokenizers" / "punkt_tab" / "english").mkdir(parents=True)
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    assert [p.name for p in missing_nltk_packages()] == ["wordnet"]
    with pytest.raises(ConfigError, match=r"missing: wordnet\. .* -m nltk\.downloader wordnet`"):
        create_mood_detector("text2emotion")


def test_required_packages_follow_the_installed_nltk() -> None:
    pytest.importorskip("nltk")
    from nltk.tokenize import punkt

    names = [p.name for p in required_nltk_packages()]
    expected = "punkt_tab" if hasattr(punkt, "PunktTokenizer") else "punkt"
    assert names == ["stopwords", expected, "wordnet"]


def test_emoji_2_lacks_unicode_emoji_and_the_shim_restores_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emoji = pytest.importorskip("emoji")
    assert int(emoji.__version__.split(".")[0]) >= 2
    fresh = subprocess.run(
        [sys.executable, "-c", "import emoji; print(hasattr(emoji, 'UNICODE_EMOJI'))"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert fresh.stdout.strip() == "False"  # the break text2emotion trips over

    monkeypatch.delattr(emoji, "UNICODE_EMOJI", raising=False)
    assert install_emoji_shim(emoji) is True
    assert emoji.UNICODE_EMOJI["😂"] == ":face_with_tears_of_joy:"
    # text2emotion's own test: is each character an emoji?
    found = [c for c in "great 😂 stuff 😡!" if c in emoji.UNICODE_EMOJI]
    assert found == ["😂", "😡"]
    assert install_emoji_shim(emoji) is False  # idempotent, never overwrites


# A child interpreter that cannot open any network connection and counts the attempts.
_NO_NETWORK = textwrap.dedent(
    """
    import json, socket, sys
    attempts = []
    def refuse(*args, **kwargs):
        attempts.append(repr(args[:2]))
        raise OSError("network disabled by the test")
    socket.socket.connect = refuse
    socket.socket.connect_ex = refuse
    socket.create_connection = refuse
    socket.getaddrinfo = refuse
    import nltk
    if sys.argv[1] != "default":
        nltk.data.path[:] = [sys.argv[1]]
    outcome = "loaded"
    if sys.argv[2] == "ours":
        import core.mood.text2emotion
        imported_early = "text2emotion" in sys.modules
        from core.errors import ConfigError
        from core.mood import create_mood_detector
        try:
            create_mood_detector("text2emotion")
        except ConfigError as exc:
            outcome = "config-error: " + str(exc)
    else:
        imported_early = False
        import text2emotion
    print(json.dumps({"attempts": attempts, "outcome": outcome,
                      "imported_early": imported_early}))
    """
)


def run_offline(data_path: str, mode: str) -> tuple[dict[str, object], str]:
    done = subprocess.run(
        [sys.executable, "-c", _NO_NETWORK, data_path, mode],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stdout + done.stderr


def test_the_offline_harness_catches_text2emotions_own_downloads(tmp_path: Path) -> None:
    """Control: imported plainly, text2emotion tries the network; the harness sees it."""
    pytest.importorskip("text2emotion")
    result, output = run_offline(str(tmp_path), "plain")
    assert result["attempts"]
    assert "[nltk_data]" in output


def test_our_import_never_downloads_when_data_is_missing(tmp_path: Path) -> None:
    pytest.importorskip("text2emotion")
    result, output = run_offline(str(tmp_path), "ours")
    assert result["attempts"] == []
    assert result["imported_early"] is False  # importing our module imports nothing of it
    assert str(result["outcome"]).startswith("config-error: ")
    assert "-m nltk.downloader stopwords punkt_tab wordnet" in str(result["outcome"])
    assert "[nltk_data]" not in output


def test_our_import_never_downloads_when_data_is_present(
    detector: Text2EmotionMoodDetector,
) -> None:
    result, output = run_offline("default", "ours")
    assert result == {"attempts": [], "outcome": "loaded", "imported_early": False}
    assert "[nltk_data]" not in output
