"""``personabot mood`` and ``personabot eval-mood``, run as a user runs them (subprocesses)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_mood_eval import write_split, write_split_zip


def personabot(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PERSONABOT_") and k not in ("DISCORD_TOKEN", "TELEGRAM_TOKEN")
    }
    environment.update(PERSONABOT_DATA_DIR=str(tmp_path / "data"), **env)
    return subprocess.run(
        [sys.executable, "-m", "bots", *args],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_mood_prints_label_and_confidence(tmp_path: Path) -> None:
    done = personabot(
        ["mood", "I am so happy today, this is wonderful!", "--detector", "lexicon"], tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"happiness (0|1)\.\d\d\n", done.stdout)


def test_mood_uses_the_configured_detector_and_accepts_context(tmp_path: Path) -> None:
    done = personabot(
        ["mood", "Really?", "--previous", "I won the lottery!"],
        tmp_path,
        PERSONABOT_MOOD_DETECTOR="lexicon",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("surprise ")


def test_mood_rejects_an_unknown_detector(tmp_path: Path) -> None:
    done = personabot(["mood", "hi", "--detector", "roberta"], tmp_path)
    assert done.returncode == 2
    assert "unknown mood detector 'roberta'" in done.stderr
    assert "lexicon" in done.stderr and done.stdout == ""


def test_mood_refuses_an_empty_message(tmp_path: Path) -> None:
    done = personabot(["mood", "   ", "--detector", "lexicon"], tmp_path)
    assert done.returncode == 1
    assert "empty" in done.stderr


@pytest.mark.parametrize("form", ["directory", "zip", "directory-with-zip"])
def test_eval_mood_reads_an_unseen_split(tmp_path: Path, form: str) -> None:
    if form == "directory":
        data = write_split(tmp_path / "test")
    elif form == "zip":
        data = write_split_zip(tmp_path / "official")
    else:
        data = write_split_zip(tmp_path / "official").parent
    done = personabot(
        ["eval-mood", "--data", str(data), "--split", "test"],
        tmp_path,
        PERSONABOT_MOOD_DETECTOR="lexicon",
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1  # exactly one JSON object on stdout
    report = json.loads(lines[0])
    assert report["detector"] == "lexicon"  # the configured one
    assert report["n"] == 7
    assert report["split"] == "test"
    for key in ("accuracy", "micro_f1_emotions", "macro_f1", "ms_per_message", "p95_ms"):
        assert isinstance(report[key], float), key
    assert "7/7" in done.stderr  # the progress bar


def test_eval_mood_limit_and_detector_option(tmp_path: Path) -> None:
    data = write_split(tmp_path / "test")
    args = ["eval-mood", "--data", str(data), "--split", "test", "--limit", "3"]
    done = personabot(
        [*args, "--detector", "lexicon"],
        tmp_path,
        PERSONABOT_MOOD_DETECTOR="tfidf",  # --detector wins, so this one is never built
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["detector"] == "lexicon"
    assert report["n"] == 3


@pytest.mark.parametrize(
    ("data", "split", "message"),
    [
        ("missing.zip", "test", "does not exist"),
        ("test", "validation", "holds neither validation.zip nor the files"),
        ("notazip.zip", "test", "is not a zip archive"),
    ],
)
def test_eval_mood_bad_data_is_a_clear_error(
    tmp_path: Path, data: str, split: str, message: str
) -> None:
    write_split(tmp_path / "test")
    (tmp_path / "notazip.zip").write_text("hello")
    done = personabot(
        ["eval-mood", "--data", str(tmp_path / data), "--split", split, "--detector", "lexicon"],
        tmp_path,
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert done.stdout == ""
