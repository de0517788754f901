"""Cleaning user input and model output."""

from __future__ import annotations

import pytest

from core.errors import InputError
from core.text import (
    clean_model_output,
    clean_user_text,
    speaker_stop_strings,
    trim_to_last_sentence,
)


def test_user_text_is_normalised() -> None:
    assert clean_user_text("  hi\r\nthere\x07  ", max_chars=100) == "hi\nthere"
    assert clean_user_text("a\n\n\n\n\nb", max_chars=100) == "a\n\nb"
    assert clean_user_text("bad \udc80 half", max_chars=100) == "bad \ufffd half"
    assert clean_user_text("cafe\u0301", max_chars=100) == "café"


def test_user_text_limits() -> None:
    with pytest.raises(InputError, match="empty"):
        clean_user_text("\u200b \x00", max_chars=10)
    with pytest.raises(InputError, match="11 characters long; the limit is 10"):
        clean_user_text("a" * 11, max_chars=10)


def test_model_output_stops_where_it_speaks_for_the_user() -> None:
    text = "Arr, a fine day!\nAlice: What about tomorrow?\nPirate: Rain."
    assert clean_model_output(text, user_names=["Alice"]) == "Arr, a fine day!"
    assert clean_model_output("Sure.\nUser: thanks") == "Sure."
    assert clean_model_output("Pirate: Ahoy!", assistant_names=["Pirate"]) == "Ahoy!"
    assert clean_model_output("Fine<|im_end|>\n<|im_start|>user") == "Fine"
    assert clean_model_output("As I said: go.") == "As I said: go."
    assert clean_model_output("User: I speak first") == ""


def test_stop_strings_cover_user_names() -> None:
    stops = speaker_stop_strings(["Alice"])
    assert "\nAlice:" in stops and "\nUser:" in stops and "<|im_start|>" in stops


def test_trailing_fragment_is_trimmed_after_a_full_sentence() -> None:
    assert trim_to_last_sentence("It is fine. You should go to the") == "It is fine."
    assert trim_to_last_sentence('He said "go!" and then we') == 'He said "go!"'
    assert trim_to_last_sentence("No sentence end here at all") == "No sentence end here at all"
    assert trim_to_last_sentence("Complete one. Complete two!") == "Complete one. Complete two!"
