"""Is a reply in a persona's voice? Word markers for the strongly stylised built-in personas.

Why markers: "does the adapter still obey persona prompts" needs a number, and the two
personas whose voice is unmistakable in a single sentence (the pirate's "arr, matey", the
bard's "thee, prithee") can be judged by their vocabulary alone, which is cheap, offline and
exact to reproduce. The other personas (friend, coach, teacher, mentor) differ in tone, not
words, so they have no markers and are never judged here. Markers are words the persona's
system prompt asks for or that only that character would use; words a DailyDialog context
could hand the model to echo ("storm", "sea") are left out.
"""

from __future__ import annotations

import re

VOICE_MARKERS: dict[str, tuple[str, ...]] = {
    "pirate": (
        "arr+",
        "ahoy",
        "avast",
        "aye",
        "matey",
        "mateys",
        "me hearties",
        "ye",
        "yer",
        "landlubbers?",
        "captain",
        "crew",
        "ship",
        "rum",
        "treasure",
        "sailors?",
        "deck",
        "lad",
        "lass",
        "shiver me timbers",
        "blow me down",
        "booty",
        "bilge",
        "scallywags?",
        "plank",
    ),
    "bard": (
        "thee",
        "thou",
        "thy",
        "thine",
        "doth",
        "dost",
        "hath",
        "'tis",
        "'twas",
        "prithee",
        "forsooth",
        "verily",
        "hark",
        "mayhap",
        "methinks",
        "anon",
        "fair (?:sir|maid|lady|friend)",
        "good (?:sir|morrow)",
    ),
}
"""Regular expressions (whole words, any case) that mark a reply as in voice."""

_PATTERNS = {
    name: re.compile(r"(?<![\w'])(?:" + "|".join(words) + r")(?![\w'])", re.IGNORECASE)
    for name, words in VOICE_MARKERS.items()
}


def has_voice_markers(persona: str) -> bool:
    """Whether replies for ``persona`` can be judged here."""
    return persona in _PATTERNS


def in_voice(persona: str, text: str) -> bool:
    """True when ``text`` uses at least one of ``persona``'s marker words.

    Raises KeyError for a persona without markers, so a caller cannot mistake "cannot
    judge" for "out of voice".
    """
    text = text.replace("\u2019", "'")
    return bool(_PATTERNS[persona].search(text))
