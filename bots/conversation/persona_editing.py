"""Creating and deleting personas from a chat, the same way on every platform.

Discord asks for a new persona in a form; Telegram and the terminal take it on the command
line (``/persona create NAME INSTRUCTIONS``). Either way it is validated, checked against the
names taken and stored here, so the rules and the answers cannot differ between platforms.
Who may do it is the platform's check (see :mod:`bots.conversation.commands`).
"""

from __future__ import annotations

from collections.abc import Mapping

from bots.conversation import texts
from core.engine import Engine
from core.errors import InputError
from core.personas import persona_from_mapping
from core.types import ConversationRef

CREATE_USAGE = (
    "Write it as /persona create NAME INSTRUCTIONS, e.g. /persona create chef You are a "
    "passionate chef who relates everything to food."
)

#: The description a persona made on a command line gets: its instructions' first line,
#: cut to the length a description may have.
_DESCRIPTION_CHARS = 200


def persona_action(argument: str) -> tuple[str, str]:
    """``/persona``'s argument as (action, rest): ``create``, ``delete``, ``set`` (also for a
    bare name, which switches to it), or ``show`` when there is none."""
    parts = argument.split(maxsplit=1)
    if not parts:
        return "show", ""
    action = parts[0].lower()
    if action in ("create", "delete", "set"):
        return action, parts[1].strip() if len(parts) > 1 else ""
    return "set", argument.strip()


def fields_from_text(argument: str) -> dict[str, str]:
    """``NAME INSTRUCTIONS`` (the instructions may span lines) as a new persona's fields."""
    parts = argument.split(maxsplit=1)
    if len(parts) < 2:
        raise InputError(CREATE_USAGE)
    name, instructions = parts[0], parts[1].strip()
    first_line = instructions.splitlines()[0].strip()
    if len(first_line) > _DESCRIPTION_CHARS:
        first_line = first_line[: _DESCRIPTION_CHARS - 1].rstrip() + "…"
    return {"name": name.lower(), "description": first_line, "system_prompt": instructions}


async def create_persona(
    engine: Engine,
    fields: Mapping[str, str],
    *,
    here: ConversationRef,
    created_by: str,
    switch_with: str,
) -> str:
    """Store a new persona in ``here``'s community; the answer to show. Raises
    PersonabotError saying what is wrong."""
    persona = persona_from_mapping(fields, source="New persona")
    if persona.name in {p.name for p in engine.personas(here)}:
        raise InputError(texts.persona_exists(persona.name))
    await engine.create_persona(persona, created_by=created_by, conversation=here)
    return texts.persona_created(persona, switch_with)


async def delete_persona(engine: Engine, name: str, *, here: ConversationRef) -> tuple[bool, str]:
    """Delete a persona ``here``'s community made: whether it was there, and the answer."""
    name = name.strip()
    if not name:
        raise InputError("Which persona? Write it as /persona delete NAME.")
    if await engine.delete_persona(name, here):
        return True, texts.persona_deleted(name)
    return False, texts.no_such_persona(name)
