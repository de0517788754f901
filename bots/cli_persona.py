"""``personabot persona ...``: personas kept in the database, including adapter-backed ones.

A persona backed by its own LoRA adapter (say, one trained on a chat export) is stored like
any user-made persona: its definition, with the adapter's folder, is a JSON row in the
personas table. The bot serves it from the same base model as every other persona and
loads the adapter the first time someone talks to it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import typer

from bots.cli_common import ConfigOption, run_command, settings_or_exit
from core.settings import Settings
from core.storage import ConversationStore

persona_app = typer.Typer(
    help="Manage personas stored in the database (user-made and adapter-backed).",
    no_args_is_help=True,
)


@asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[ConversationStore]:
    """The database the bot uses, migrated as at start-up, for one command's work."""
    from core.bootstrap import open_database

    database = await open_database(settings)
    try:
        yield ConversationStore(database)
    finally:
        await database.close()


@persona_app.command("add-adapter")
def add_adapter(
    name: Annotated[
        str,
        typer.Argument(
            help="Persona name: 1-32 lowercase letters, digits and '-'.", show_default=False
        ),
    ],
    path: Annotated[
        Path,
        typer.Argument(
            help="The adapter folder `personabot train` wrote (holding adapter_config.json).",
            show_default=False,
        ),
    ],
    description: Annotated[str, typer.Option(help="One line describing the persona.")] = "",
    display_name: Annotated[
        str, typer.Option(help="Name shown to people (default: NAME in title case).")
    ] = "",
    replace: Annotated[
        bool, typer.Option(help="Replace a stored persona of the same name.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Register a persona that speaks with its own LoRA adapter.

    PATH must be a peft LoRA adapter trained on the running profile's base model (checked
    now, not on the first message). The persona gets the system prompt that import-chat
    datasets are built with, so it is served in the words it was trained on. A running bot
    picks it up when restarted.
    """
    settings = settings_or_exit(config)
    from core.generation.adapters import check_adapter, expected_base_model
    from core.personas import load_builtin_personas, load_persona_dir, persona_from_mapping
    from training.chat_import import PERSONAL_SYSTEM_PROMPT

    adapter = path.expanduser().resolve()
    fields = {
        "name": name,
        "display_name": display_name,
        "description": description,
        "system_prompt": PERSONAL_SYSTEM_PROMPT,
        "adapter": str(adapter),
    }

    async def _add() -> int:
        persona = persona_from_mapping(fields, source="persona add-adapter")
        info = check_adapter(adapter, expected_base_model(settings))
        shipped = {p.name for p in load_builtin_personas()}
        shipped |= {p.name for p in load_persona_dir(settings.resolved_persona_dir)}
        async with open_store(settings) as store:
            stored = {stored_name for stored_name, _ in await store.list_personas()}
            if persona.name in stored and not replace:
                typer.echo(
                    f"personabot: a stored persona {persona.name!r} exists already; pass "
                    "--replace to replace it, or pick another name.",
                    err=True,
                )
                return 2
            await store.save_persona(persona.name, persona.to_json(), "cli:add-adapter")
        note = (
            " (it overrides the built-in persona of that name)" if persona.name in shipped else ""
        )
        typer.echo(
            f"Registered persona {persona.name!r}{note} with adapter {info.path} "
            f"(base model {info.base_model}, LoRA rank {info.rank})."
        )
        typer.echo(f"Restart the bot, then switch to it with /persona {persona.name}.")
        return 0

    run_command(_add())


@persona_app.command("list")
def list_personas(config: ConfigOption = None) -> None:
    """List every persona (built-in, persona folder, stored) and the adapter each uses."""
    settings = settings_or_exit(config)

    async def _list() -> int:
        from core.bootstrap import load_personas

        async with open_store(settings) as store:
            catalog = await load_personas(settings, store)
        for persona in catalog.all():
            where = "stored" if catalog.is_user_defined(persona.name) else "built-in/folder"
            adapter = persona.adapter or "default adapter"
            typer.echo(f"{persona.name:<16} {where:<16} {adapter}")
        return 0

    run_command(_list())


@persona_app.command("remove")
def remove(
    name: Annotated[str, typer.Argument(help="A stored persona's name.", show_default=False)],
    config: ConfigOption = None,
) -> None:
    """Delete a stored persona (the adapter folder itself is left where it is)."""
    settings = settings_or_exit(config)

    async def _remove() -> int:
        async with open_store(settings) as store:
            removed = await store.delete_persona(name.strip().lower())
        if not removed:
            typer.echo(f"personabot: no stored persona called {name!r}.", err=True)
            return 1
        typer.echo(f"Removed persona {name.strip().lower()!r}.")
        return 0

    run_command(_remove())
