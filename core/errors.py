"""Errors that reach users and operators.

Every error carries a message written for the person who has to act on it, so frontends can
show ``str(error)`` as it is instead of a traceback.
"""

from __future__ import annotations


class PersonabotError(Exception):
    """Base class: a problem the user or operator can fix, with a message saying how."""


class ConfigError(PersonabotError):
    """A setting is missing, malformed or points at something unusable."""


class InputError(PersonabotError):
    """A chat message or command argument that cannot be processed as given."""


class UnknownPersonaError(InputError):
    """A persona name that is not in the catalogue; the message lists the valid names."""

    def __init__(self, name: str, valid: list[str]) -> None:
        self.name = name
        self.valid = valid
        super().__init__(f"Unknown persona {name!r}. Choose one of: {', '.join(valid)}.")


class ModelLoadError(PersonabotError):
    """The configured model profile cannot be loaded on this machine."""


class GenerationError(PersonabotError):
    """The generator failed while producing a reply."""


class GeneratorBusyError(GenerationError):
    """Too many replies are already waiting for the model; this one was refused at once.

    Back-pressure rather than unbounded latency: a busy bot says "try again in a moment"
    straight away instead of answering minutes later. Nothing was generated, so trying
    again is always safe.
    """


class StorageError(PersonabotError):
    """The database cannot be opened, migrated or written."""
