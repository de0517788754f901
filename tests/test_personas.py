"""Personas: built-ins, TOML loading and its error messages, JSON storage, the catalog."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from core.errors import ConfigError, InputError, UnknownPersonaError
from core.personas import (
    DEFAULT_PERSONA,
    LENGTH_INSTRUCTIONS,
    Persona,
    PersonaCatalog,
    load_builtin_personas,
    load_persona_dir,
    load_persona_file,
)
from core.types import LengthPreset, Mood, SamplingParams

EXPECTED_BUILTINS = {"friend", "pirate", "mentor", "coach", "teacher", "bard"}


def make_persona(**overrides: object) -> Persona:
    fields: dict[str, object] = {"name": "tester", "system_prompt": "You are a tester."}
    fields.update(overrides)
    return Persona.model_validate(fields)


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


# --- built-ins ---------------------------------------------------------------------------


def test_builtins_load_and_are_distinct() -> None:
    personas = load_builtin_personas()
    names = [p.name for p in personas]
    assert len(personas) >= 6
    assert len(set(names)) == len(names)
    assert set(names) >= EXPECTED_BUILTINS
    assert DEFAULT_PERSONA in names
    assert len({p.system_prompt for p in personas}) == len(personas)
    assert len({p.display_name for p in personas}) == len(personas)
    assert len({p.description for p in personas}) == len(personas)


@pytest.mark.parametrize("persona", load_builtin_personas(), ids=lambda p: p.name)
def test_builtin_has_guidance_for_every_mood(persona: Persona) -> None:
    for mood in Mood:
        guidance = persona.mood_guidance(mood)
        assert guidance, f"{persona.name} has no guidance for {mood.value}"


@pytest.mark.parametrize("persona", load_builtin_personas(), ids=lambda p: p.name)
def test_builtin_prompt_covers_the_ground_rules(persona: Persona) -> None:
    prompt = persona.system_prompt
    assert prompt.startswith("You are ")
    assert "in character" in prompt
    assert "Never say you are an AI" in prompt
    assert "never write the user's lines" in prompt
    assert "conversational" in prompt
    # Small models follow short prompts better; keep them in the agreed window.
    assert 60 <= len(prompt.split()) <= 125
    assert "\n" not in prompt


def test_builtin_sampling_fits_the_characters() -> None:
    by_name = {p.name: p for p in load_builtin_personas()}
    assert by_name["bard"].temperature > by_name["friend"].temperature
    assert by_name["teacher"].temperature < by_name["friend"].temperature
    # Distinct mood guidance per persona, not one shared text.
    for mood in Mood:
        texts = {p.mood_guidance(mood) for p in by_name.values()}
        assert len(texts) == len(by_name)


def test_builtins_are_fresh_lists() -> None:
    first = load_builtin_personas()
    first.clear()
    assert load_builtin_personas()


# --- validation --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "a" * 33, "has space", "under_score", "-lead", "ümlaut"])
def test_bad_names_are_rejected(name: str) -> None:
    with pytest.raises(ValidationError, match="not a valid persona name"):
        make_persona(name=name)


def test_name_is_normalised_and_display_name_defaults() -> None:
    persona = make_persona(name="  Sea-Dog2 ")
    assert persona.name == "sea-dog2"
    assert persona.display_name == "Sea Dog2"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 0),
        ("temperature", 2.5),
        ("top_p", 0),
        ("top_p", 1.1),
        ("top_k", -1),
        ("top_k", 1001),
        ("repetition_penalty", 0.9),
        ("repetition_penalty", 2.1),
        ("max_new_tokens", 0),
        ("max_new_tokens", 1025),
        ("system_prompt", ""),
        ("system_prompt", "x" * 2001),
        ("description", "two\nlines"),
        ("description", "x" * 201),
        ("display_name", "x" * 65),
    ],
)
def test_out_of_range_values_are_rejected(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        make_persona(**{field: value})
    assert info.value.errors()[0]["loc"][0] == field


def test_mood_keys_accept_common_spellings() -> None:
    persona = make_persona(mood_responses={"no_emotion": "Chat.", "Happiness": "Cheer."})
    assert persona.mood_guidance(Mood.NO_EMOTION) == "Chat."
    assert persona.mood_guidance(Mood.HAPPINESS) == "Cheer."
    assert persona.mood_guidance(Mood.ANGER) is None


def test_unknown_mood_key_and_too_long_guidance_are_rejected() -> None:
    with pytest.raises(ValidationError, match="unknown mood 'happy'"):
        make_persona(mood_responses={"happy": "x"})
    with pytest.raises(ValidationError):
        make_persona(mood_responses={"anger": "x" * 401})


def test_persona_is_frozen() -> None:
    persona = make_persona()
    with pytest.raises(ValidationError):
        persona.temperature = 1.5  # type: ignore[misc]


# --- sampling ----------------------------------------------------------------------------


def test_sampling_scales_tokens_by_length() -> None:
    persona = make_persona(temperature=0.5, top_p=0.8, top_k=7, repetition_penalty=1.3)
    params = {length: persona.sampling(length) for length in LengthPreset}
    assert params[LengthPreset.MEDIUM] == SamplingParams(
        temperature=0.5, top_p=0.8, top_k=7, repetition_penalty=1.3, max_new_tokens=200
    )
    assert params[LengthPreset.SHORT].max_new_tokens == 66
    assert params[LengthPreset.LONG].max_new_tokens == 400
    assert persona.sampling() == params[LengthPreset.MEDIUM]
    for p in params.values():
        assert (p.temperature, p.top_p, p.top_k, p.repetition_penalty) == (0.5, 0.8, 7, 1.3)


@pytest.mark.parametrize(
    ("budget", "short", "long"),
    [(30, 30, 60), (60, 32, 120), (96, 32, 192), (600, 200, 1024), (1024, 341, 1024)],
)
def test_sampling_bounds(budget: int, short: int, long: int) -> None:
    persona = make_persona(max_new_tokens=budget)
    assert persona.sampling(LengthPreset.SHORT).max_new_tokens == short
    assert persona.sampling(LengthPreset.MEDIUM).max_new_tokens == budget
    assert persona.sampling(LengthPreset.LONG).max_new_tokens == long


def test_length_instructions_cover_every_preset() -> None:
    assert set(LENGTH_INSTRUCTIONS) == set(LengthPreset)
    assert len(set(LENGTH_INSTRUCTIONS.values())) == len(LengthPreset)


# --- JSON ----------------------------------------------------------------------------------


@pytest.mark.parametrize("persona", load_builtin_personas(), ids=lambda p: p.name)
def test_json_round_trip(persona: Persona) -> None:
    text = persona.to_json()
    assert '"no emotion"' in text
    assert Persona.from_json(text) == persona


def test_from_json_reports_bad_data_readably() -> None:
    with pytest.raises(ConfigError, match=r"Stored persona is invalid: temperature"):
        Persona.from_json('{"name": "x", "system_prompt": "You are x.", "temperature": 9}')
    with pytest.raises(ConfigError, match="Stored persona is invalid"):
        Persona.from_json("not json")


# --- TOML files --------------------------------------------------------------------------

GOOD_TOML = """
display_name = "Sea Dog"
system_prompt = "You are a sea dog."
temperature = 1.2

[mood_responses]
anger = "Growl."
"no emotion" = "Bark."
"""


def test_load_file_defaults_name_to_stem(tmp_path: Path) -> None:
    persona = load_persona_file(write(tmp_path, "sea-dog.toml", GOOD_TOML))
    assert persona.name == "sea-dog"
    assert persona.display_name == "Sea Dog"
    assert persona.temperature == 1.2
    assert persona.mood_guidance(Mood.NO_EMOTION) == "Bark."


def test_load_dir_sorted_and_skips_other_files(tmp_path: Path) -> None:
    write(tmp_path, "b.toml", 'system_prompt = "You are b."')
    write(tmp_path, "a.toml", 'system_prompt = "You are a."')
    write(tmp_path, "notes.txt", "not a persona")
    assert [p.name for p in load_persona_dir(tmp_path)] == ["a", "b"]


def test_missing_dir_is_empty(tmp_path: Path) -> None:
    assert load_persona_dir(tmp_path / "nope") == []


def test_dir_that_is_a_file_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "file", "")
    with pytest.raises(ConfigError, match="not a folder"):
        load_persona_dir(path)


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "typo.toml", 'system_prompt = "You are x."\ntemprature = 0.5\n')
    with pytest.raises(ConfigError) as info:
        load_persona_dir(tmp_path)
    message = str(info.value)
    assert str(path) in message
    assert "unknown key 'temprature'" in message
    assert "temperature" in message  # the allowed keys are listed
    assert "https://" not in message  # no pydantic docs links


def test_out_of_range_temperature_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "hot.toml", 'system_prompt = "You are x."\ntemperature = 5\n')
    with pytest.raises(ConfigError) as info:
        load_persona_file(path)
    message = str(info.value)
    assert str(path) in message
    assert "temperature:" in message
    assert "less than or equal to 2" in message
    assert "(got 5)" in message
    assert "\n" not in message


def test_bad_toml_and_missing_prompt(tmp_path: Path) -> None:
    broken = write(tmp_path, "broken.toml", "system_prompt = ")
    with pytest.raises(ConfigError, match=r"broken\.toml: not valid TOML"):
        load_persona_file(broken)
    empty = write(tmp_path, "empty.toml", "")
    with pytest.raises(ConfigError, match="system_prompt: required key is missing"):
        load_persona_file(empty)


def test_bad_mood_key_in_file(tmp_path: Path) -> None:
    path = write(tmp_path, "m.toml", 'system_prompt = "x"\n[mood_responses]\njoy = "yay"\n')
    with pytest.raises(ConfigError, match="mood_responses: unknown mood 'joy'"):
        load_persona_file(path)


def test_duplicate_names_in_dir_are_an_error(tmp_path: Path) -> None:
    write(tmp_path, "one.toml", 'name = "same"\nsystem_prompt = "x"')
    write(tmp_path, "same.toml", 'system_prompt = "y"')
    with pytest.raises(ConfigError, match="both define the persona 'same'"):
        load_persona_dir(tmp_path)


def test_folder_overrides_builtin(tmp_path: Path) -> None:
    write(tmp_path, "pirate.toml", 'system_prompt = "You are a polite pirate."')
    write(tmp_path, "robot.toml", 'system_prompt = "You are a robot."')
    catalog = PersonaCatalog([*load_builtin_personas(), *load_persona_dir(tmp_path)])
    assert catalog.get("pirate").system_prompt == "You are a polite pirate."
    assert "robot" in catalog
    assert catalog.get("friend") == next(p for p in load_builtin_personas() if p.name == "friend")


# --- catalog -------------------------------------------------------------------------------


def test_catalog_unknown_lists_valid_names() -> None:
    catalog = PersonaCatalog(load_builtin_personas())
    with pytest.raises(UnknownPersonaError) as info:
        catalog.get("ninja")
    assert isinstance(info.value, InputError)
    assert info.value.name == "ninja"
    assert info.value.valid == sorted(catalog.names())
    for name in EXPECTED_BUILTINS:
        assert name in str(info.value)


def test_catalog_lookup_ignores_case_and_whitespace() -> None:
    catalog = PersonaCatalog(load_builtin_personas())
    assert catalog.get("  PiRaTe ").name == "pirate"
    assert " Bard" in catalog
    assert 42 not in catalog
    assert "ninja" not in catalog


def test_catalog_precedence_add_remove() -> None:
    first = make_persona(name="x", system_prompt="first")
    second = make_persona(name="x", system_prompt="second")
    other = make_persona(name="a")
    catalog = PersonaCatalog([first, other, second])
    assert catalog.get("x").system_prompt == "second"
    assert catalog.names() == ["a", "x"]
    assert [p.name for p in catalog.all()] == ["a", "x"]
    assert len(catalog) == 2
    catalog.add(make_persona(name="b"))
    assert catalog.names() == ["a", "b", "x"]
    assert catalog.remove(" X ") is True
    assert catalog.remove("x") is False
    assert "x" not in catalog
    assert [p.name for p in catalog] == ["a", "b"]


def test_removing_a_user_persona_reveals_the_base_one() -> None:
    builtins = load_builtin_personas()
    stored = make_persona(name="pirate", system_prompt="You are my own pirate.")
    catalog = PersonaCatalog(builtins, user=[stored])
    assert catalog.get("pirate") is stored
    assert catalog.is_user_defined("pirate")
    assert len(catalog) == len(builtins)

    edited = make_persona(name="pirate", system_prompt="You are my edited pirate.")
    catalog.add(edited)
    assert catalog.get("pirate") is edited

    assert catalog.remove("pirate") is True
    assert catalog.get("pirate").system_prompt.startswith("You are an old, sardonic pirate")
    assert not catalog.is_user_defined("pirate")
    # A second remove deletes the base definition too.
    assert catalog.remove("pirate") is True
    assert "pirate" not in catalog


def test_added_persona_with_a_new_name_is_removed_completely() -> None:
    catalog = PersonaCatalog(load_builtin_personas())
    catalog.add(make_persona(name="robot"))
    assert catalog.names().count("robot") == 1
    assert catalog.remove("robot") is True
    assert "robot" not in catalog
