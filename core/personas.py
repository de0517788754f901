"""Personas: who the bot speaks as, how it reacts to each mood, and how it samples.

A persona is plain data, so operators and users can add their own without writing Python:

* built-ins ship as TOML files in :mod:`core.persona_library` (one file per persona, the file
  stem is the persona name);
* an operator can drop more TOML files into the persona folder (``Settings.persona_dir``);
* users can create personas at runtime, which the storage layer keeps as JSON
  (:meth:`Persona.to_json` / :meth:`Persona.from_json`).

:class:`PersonaCatalog` merges those sources, later ones overriding earlier ones by name.

Every way of building a persona validates it with the same pydantic model, and every
validation failure is turned into a :class:`~core.errors.ConfigError` whose message names the
source and the offending key, because the person reading it is editing a TOML file, not
debugging pydantic.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from core.errors import ConfigError, UnknownPersonaError
from core.types import LengthPreset, Mood, SamplingParams

__all__ = [
    "BUILTIN_PACKAGE",
    "DEFAULT_PERSONA",
    "LENGTH_INSTRUCTIONS",
    "NAME_PATTERN",
    "Persona",
    "PersonaCatalog",
    "describe_validation_error",
    "load_builtin_personas",
    "load_persona_dir",
    "load_persona_file",
    "persona_from_mapping",
]

#: Package (relative to ``core``) holding the built-in persona TOML files.
BUILTIN_PACKAGE = "persona_library"

#: The persona a new conversation uses unless settings say otherwise.
DEFAULT_PERSONA = "friend"

#: A persona name is typed in chat commands (``/persona pirate``) and used as a file name, so
#: it is restricted to a slug that needs no quoting anywhere. It may not start with ``-`` so it
#: is never mistaken for a command-line option.
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")

#: Added to the system prompt so the model knows how long to answer. Phrased as plain
#: imperatives because small models follow short direct instructions best; ``max_new_tokens``
#: (see :meth:`Persona.sampling`) is only the hard stop behind it.
LENGTH_INSTRUCTIONS: dict[LengthPreset, str] = {
    LengthPreset.SHORT: "Keep your reply to one or two sentences.",
    LengthPreset.MEDIUM: "Keep your reply to a short paragraph of three to five sentences.",
    LengthPreset.LONG: (
        "You may give a fuller reply of two or three paragraphs when the topic needs it."
    ),
}

# Token budgets per length preset. ``short`` still allows 32 tokens because a sentence or two
# of a chatty persona (with an interjection like "Arr, matey") rarely fits in fewer, and a
# reply cut mid-word reads worse than one a little long. ``long`` doubles the persona's own
# value but never exceeds the model-independent ceiling of 1024.
_SHORT_DIVISOR = 3
_SHORT_MINIMUM = 32
_LONG_FACTOR = 2
MAX_NEW_TOKENS_CEILING = 1024

_OneLine = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^[^\r\n]*$")]


class Persona(BaseModel):
    """One persona: identity, system prompt, per-mood guidance and sampling settings.

    Frozen so a persona taken from the catalog can be shared between concurrent
    conversations without anyone mutating it under the others. ``extra="forbid"`` so that a
    misspelt TOML key (``temprature = 0.9``) is reported instead of silently ignored.
    """

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        str_strip_whitespace=True,
        validate_default=True,
    )

    name: str = Field(
        description="Slug used in commands and as the file name: lowercase letters, digits "
        "and '-', 1-32 characters.",
    )
    display_name: str = Field(
        default="",
        max_length=64,
        description="Name shown to people; defaults to the name in title case.",
    )
    description: _OneLine = Field(
        default="", max_length=200, description="One line describing the persona."
    )
    system_prompt: str = Field(
        min_length=1, max_length=2000, description="Instructions that set the character."
    )
    mood_responses: dict[Mood, Annotated[str, Field(min_length=1, max_length=400)]] = Field(
        default_factory=dict,
        description="How this persona responds when the user seems to feel each mood.",
    )
    temperature: float = Field(default=0.8, gt=0.0, le=2.0)
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    top_k: int = Field(default=50, ge=0, le=1000)
    repetition_penalty: float = Field(default=1.1, ge=1.0, le=2.0)
    max_new_tokens: int = Field(default=200, ge=1, le=MAX_NEW_TOKENS_CEILING)
    adapter: str | None = Field(
        default=None,
        min_length=1,
        max_length=1000,
        description="Folder of this persona's own LoRA adapter (e.g. one trained on a chat "
        "export); unset: the profile's default adapter.",
    )

    @field_validator("name", mode="before")
    @classmethod
    def _check_name(cls, value: object) -> object:
        # Lower-casing first means "Pirate.toml" or "/persona create Pirate" just work; only
        # characters that can never be part of a slug are rejected.
        if not isinstance(value, str):
            return value
        name = value.strip().lower()
        if not NAME_PATTERN.fullmatch(name):
            raise ValueError(
                f"{value!r} is not a valid persona name: use 1-32 lowercase letters, digits "
                "and '-', starting with a letter or digit"
            )
        return name

    @field_validator("mood_responses", mode="before")
    @classmethod
    def _parse_mood_keys(cls, value: object) -> object:
        # TOML keys are free text; accept the spellings Mood.parse knows ("no_emotion",
        # "neutral", "Happiness") so authors need not quote "no emotion".
        if not isinstance(value, Mapping):
            return value
        parsed: dict[Mood, object] = {}
        for key, text in value.items():
            mood = key if isinstance(key, Mood) else Mood.parse(str(key))
            if mood in parsed:
                raise ValueError(f"mood {mood.value!r} is given twice")
            parsed[mood] = text
        return parsed

    @model_validator(mode="before")
    @classmethod
    def _default_display_name(cls, data: object) -> object:
        # Filled in before validation (the model is frozen afterwards) from the raw name;
        # if that name is invalid, the name's own error is what gets reported.
        if isinstance(data, Mapping) and not data.get("display_name"):
            name = data.get("name")
            if isinstance(name, str) and name.strip():
                title = name.strip().lower().replace("-", " ").title()
                return {**data, "display_name": title}
        return data

    def sampling(self, length: LengthPreset = LengthPreset.MEDIUM) -> SamplingParams:
        """Decoding settings for one reply, with the token budget scaled by ``length``.

        ``short`` is about a third of the persona's budget but at least 32 tokens (and never
        more than the persona's own value); ``medium`` is the persona's value; ``long`` is
        twice it, capped at 1024.
        """
        budget = self.max_new_tokens
        if length is LengthPreset.SHORT:
            budget = min(budget, max(_SHORT_MINIMUM, budget // _SHORT_DIVISOR))
        elif length is LengthPreset.LONG:
            budget = min(MAX_NEW_TOKENS_CEILING, budget * _LONG_FACTOR)
        return SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            repetition_penalty=self.repetition_penalty,
            max_new_tokens=budget,
            adapter=self.adapter,
        )

    def mood_guidance(self, mood: Mood) -> str | None:
        """How to respond to a user who seems to feel ``mood``, or None if not specified."""
        return self.mood_responses.get(mood)

    def to_json(self) -> str:
        """Serialise for the database; mood keys are stored as their label text."""
        return self.model_dump_json()

    @classmethod
    def from_json(cls, data: str | bytes) -> Persona:
        """Rebuild a persona stored with :meth:`to_json`.

        Raises :class:`ConfigError` with a readable message if the stored text is not valid
        JSON or no longer passes validation (e.g. limits tightened since it was saved).
        """
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise ConfigError(
                f"Stored persona is invalid: {describe_validation_error(exc)}"
            ) from None


def describe_validation_error(exc: ValidationError) -> str:
    """Turn a pydantic error into one line per problem, naming the key and the bad value.

    pydantic's own ``str()`` is a multi-line dump with documentation URLs; people editing a
    persona file need "temperature: must be <= 2 (got 5)".
    """
    parts: list[str] = []
    for error in exc.errors(include_url=False):
        key = ".".join(str(part) for part in error["loc"]) or "(persona)"
        if error["type"] == "extra_forbidden":
            allowed = ", ".join(Persona.model_fields)
            parts.append(f"unknown key {key!r} (allowed keys: {allowed})")
            continue
        message = str(error["msg"])
        message = message.removeprefix("Value error, ")
        if error["type"] == "missing":
            parts.append(f"{key}: required key is missing")
        elif error["type"].startswith("value_error"):
            parts.append(f"{key}: {message}")
        else:
            parts.append(f"{key}: {message} (got {_short_repr(error.get('input'))})")
    return "; ".join(parts)


def _short_repr(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def persona_from_mapping(
    data: Mapping[str, Any], *, source: str, default_name: str | None = None
) -> Persona:
    """Validate a mapping (parsed TOML, a command's arguments) into a persona.

    ``source`` names where the data came from for error messages; ``default_name`` is used
    when the mapping has no ``name`` (a TOML file's stem).
    """
    fields = dict(data)
    if "name" not in fields and default_name is not None:
        fields["name"] = default_name
    try:
        return Persona.model_validate(fields)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation_error(exc)}") from None


def _parse_toml(text: str, *, source: str, default_name: str) -> Persona:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    return persona_from_mapping(data, source=source, default_name=default_name)


def load_persona_file(path: Path) -> Persona:
    """Load one persona TOML file; its name defaults to the file stem.

    Raises :class:`ConfigError` naming the file for unreadable files, bad TOML and values
    that fail validation.
    """
    source = f"Persona file {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot be read: {exc.strerror}") from None
    return _parse_toml(text, source=source, default_name=path.stem.lower())


def load_persona_dir(path: Path) -> list[Persona]:
    """Load every ``*.toml`` in ``path`` (not recursive), sorted by file name.

    A missing folder is normal (the operator has not added any personas) and gives an empty
    list. Two files defining the same name are an error, because which one wins would depend
    on file-name order and the operator would not notice.
    """
    if not path.exists():
        return []
    if not path.is_dir():
        raise ConfigError(f"Persona folder {path} is not a folder.")
    personas: list[Persona] = []
    seen: dict[str, Path] = {}
    for file in sorted(path.glob("*.toml")):
        if not file.is_file():
            continue
        persona = load_persona_file(file)
        if persona.name in seen:
            raise ConfigError(
                f"Persona files {seen[persona.name]} and {file} both define the persona "
                f"{persona.name!r}; rename or remove one of them."
            )
        seen[persona.name] = file
        personas.append(persona)
    return personas


@cache
def _builtin_personas() -> tuple[Persona, ...]:
    folder = resources.files("core").joinpath(BUILTIN_PACKAGE)
    personas: list[Persona] = []
    for entry in sorted(folder.iterdir(), key=lambda item: item.name):
        if not entry.name.endswith(".toml") or not entry.is_file():
            continue
        stem = entry.name.removesuffix(".toml")
        persona = _parse_toml(
            entry.read_text(encoding="utf-8"),
            source=f"Built-in persona file {entry.name}",
            default_name=stem,
        )
        if persona.name != stem:
            # The file name is the persona's identity for built-ins; a mismatch is a bug in
            # the package, not an operator error.
            raise ConfigError(
                f"Built-in persona file {entry.name} defines name {persona.name!r}; "
                f"expected {stem!r}."
            )
        personas.append(persona)
    return tuple(personas)


def load_builtin_personas() -> list[Persona]:
    """The personas shipped with personabot, sorted by name.

    Read through :mod:`importlib.resources` so this works from a wheel or zip as well as a
    source checkout. Parsed once per process; callers get a fresh list each time.
    """
    return list(_builtin_personas())


def _key(name: str) -> str:
    return name.strip().lower()


#: The scope of personas everyone may use: the built-ins, the operator's, and published ones.
GLOBAL = ""


class PersonaCatalog:
    """The personas available to conversations, looked up by name within a scope.

    Layers, each resolved by name:

    * ``personas`` (the base layer), in precedence order, lowest first: built-ins, then the
      operator's folder. A later persona with the same name replaces an earlier one, so an
      operator can redefine ``pirate`` by dropping a ``pirate.toml`` in the folder.
    * ``user``: personas stored in the database without a scope (the operator's, published
      ones, and those made before personas had scopes), plus every :meth:`add` without one.
      A user persona wins over a base persona of the same name.
    * scoped personas: made in one community (a Discord server, a Telegram chat) and seen
      only there. Their names may not hide a global persona's.

    Personas with their own LoRA adapter (trained on someone's chat export) are private:
    visible in a scope only where the operator granted them (:meth:`grant`). The global
    view (``scope=GLOBAL``, the operator's) sees everything global.

    Keeping users' personas in their own layer is what makes deletion right: when a user
    deletes their own ``pirate``, :meth:`remove` drops it and the base ``pirate`` is served
    again, instead of the name vanishing until a restart.

    Lookups ignore case and surrounding whitespace, because names arrive from chat commands
    typed by people.
    """

    def __init__(self, personas: Iterable[Persona] = (), *, user: Iterable[Persona] = ()) -> None:
        self._base: dict[str, Persona] = {persona.name: persona for persona in personas}
        self._user: dict[str, Persona] = {persona.name: persona for persona in user}
        self._scoped: dict[str, dict[str, Persona]] = {}
        self._grants: dict[str, set[str]] = {}

    def get(self, name: str, scope: str = GLOBAL) -> Persona:
        """The persona called ``name`` as ``scope`` sees it; raises
        :class:`UnknownPersonaError` listing the names visible there."""
        persona = self._find(_key(name), scope)
        if persona is None:
            raise UnknownPersonaError(name, self.names(scope))
        return persona

    def _find(self, key: str, scope: str) -> Persona | None:
        own = self._scoped.get(scope, {}).get(key) if scope != GLOBAL else None
        if own is not None:
            return own
        shared = self._user.get(key) or self._base.get(key)
        if shared is None or not self._usable(shared, scope):
            return None
        return shared

    def _usable(self, persona: Persona, scope: str) -> bool:
        """A global persona is usable everywhere, unless it is private (has an adapter)."""
        if scope == GLOBAL or persona.adapter is None:
            return True
        return scope in self._grants.get(persona.name, set())

    def names(self, scope: str = GLOBAL) -> list[str]:
        """The persona names visible in ``scope``, sorted."""
        keys = self._base.keys() | self._user.keys() | self._scoped.get(scope, {}).keys()
        return sorted(key for key in keys if self._find(key, scope) is not None)

    def all(self, scope: str = GLOBAL) -> list[Persona]:
        """The personas visible in ``scope`` (the winning definition per name), by name."""
        return [self.get(name, scope) for name in self.names(scope)]

    def scope_of(self, name: str, scope: str) -> str | None:
        """Where ``name`` as ``scope`` sees it was made: ``scope``, GLOBAL, or None."""
        key = _key(name)
        if scope != GLOBAL and key in self._scoped.get(scope, {}):
            return scope
        return GLOBAL if self._find(key, scope) is not None else None

    def scoped(self, scope: str) -> list[Persona]:
        """The personas made in ``scope`` itself, by name."""
        return sorted(self._scoped.get(scope, {}).values(), key=lambda p: p.name)

    def scopes(self) -> list[str]:
        """Every scope that has personas of its own, sorted."""
        return sorted(scope for scope, personas in self._scoped.items() if personas)

    def is_global_name(self, name: str) -> bool:
        """Whether a global persona (private ones included) has this name."""
        key = _key(name)
        return key in self._user or key in self._base

    def add(self, persona: Persona, scope: str = GLOBAL) -> None:
        """Add a user persona to ``scope``, replacing one with the same name there."""
        if scope == GLOBAL:
            self._user[persona.name] = persona
        else:
            self._scoped.setdefault(scope, {})[persona.name] = persona

    def remove(self, name: str, scope: str = GLOBAL) -> bool:
        """Remove ``scope``'s own definition of ``name``; False if there was none.

        Removing a global user persona reveals the base persona it overrode, if any, so
        ``name`` may still be in the catalog afterwards.
        """
        key = _key(name)
        if scope != GLOBAL:
            return self._scoped.get(scope, {}).pop(key, None) is not None
        if self._user.pop(key, None) is not None:
            return True
        return self._base.pop(key, None) is not None

    def grant(self, name: str, scope: str) -> None:
        """Let ``scope`` use the private (adapter) persona ``name``."""
        self._grants.setdefault(_key(name), set()).add(scope)

    def move_scope(self, old: str, new: str) -> None:
        """``old``'s own personas and grants now belong to ``new``."""
        moved = self._scoped.pop(old, {})
        if moved:
            self._scoped[new] = {**moved, **self._scoped.get(new, {})}
        for granted in self._grants.values():
            if old in granted:
                granted.discard(old)
                granted.add(new)

    def grants(self, name: str) -> list[str]:
        return sorted(self._grants.get(_key(name), set()))

    def is_user_defined(self, name: str, scope: str = GLOBAL) -> bool:
        """Whether ``name`` resolves in ``scope`` to a stored persona :meth:`remove` undoes."""
        key = _key(name)
        if scope != GLOBAL:
            return key in self._scoped.get(scope, {})
        return key in self._user

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        return self._find(_key(name), GLOBAL) is not None

    def __len__(self) -> int:
        return len(self.names())

    def __iter__(self) -> Iterator[Persona]:
        return iter(self.all())
