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
from bots.conversation.scopes import discord_dm_scope, discord_server_scope, telegram_chat_scope
from core.personas import GLOBAL
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
    from core.generation.local.adapters import check_adapter, expected_base_model
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
            stored = {n for scope, n, _ in await store.list_personas() if scope == GLOBAL}
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
        typer.echo(
            "It is private: grant it to the conversations that may use it with "
            f"`personabot persona grant {persona.name} ...`, restart the bot, then switch to "
            f"it there with /persona {persona.name}."
        )
        return 0

    run_command(_add())


@persona_app.command("list")
def list_personas(
    scope: Annotated[
        str | None,
        typer.Option(
            help="Only this community's personas (e.g. discord:server:123, telegram:chat:-100); "
            "'all' lists every community's.",
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """List the personas: global ones (built-in, persona folder, stored) with the adapter
    each uses and where private ones are granted; with --scope, a community's own."""
    settings = settings_or_exit(config)

    async def _list() -> int:
        from core.bootstrap import load_personas

        async with open_store(settings) as store:
            catalog = await load_personas(settings, store)
        if scope is None:
            for persona in catalog.all():
                where = "stored" if catalog.is_user_defined(persona.name) else "built-in/folder"
                adapter = persona.adapter or "default adapter"
                line = f"{persona.name:<16} {where:<16} {adapter}"
                if persona.adapter is not None:
                    granted = ", ".join(catalog.grants(persona.name)) or "nobody yet"
                    line += f"  (private; granted to: {granted})"
                typer.echo(line)
            return 0
        for where in catalog.scopes() if scope == "all" else [scope]:
            for persona in catalog.scoped(where):
                typer.echo(f"{where:<32} {persona.name:<16} {persona.description}")
        return 0

    run_command(_list())


@persona_app.command("publish")
def publish(
    name: Annotated[str, typer.Argument(help="The persona's name.", show_default=False)],
    scope: Annotated[
        str,
        typer.Option(
            help="The community it was made in (see `persona list --scope all`).",
            show_default=False,
        ),
    ],
    config: ConfigOption = None,
) -> None:
    """Make a persona one community made usable in every server and chat."""
    settings = settings_or_exit(config)
    key = name.strip().lower()

    async def _publish() -> int:
        from core.bootstrap import load_personas

        async with open_store(settings) as store:
            if (await load_personas(settings, store)).is_global_name(key):
                typer.echo(f"personabot: a global persona {key!r} exists already.", err=True)
                return 2
            if not await store.publish_persona(key, scope):
                typer.echo(f"personabot: {scope} has no persona called {key!r}.", err=True)
                return 1
        typer.echo(f"Published {key!r}: every community can use it after a restart.")
        return 0

    run_command(_publish())


@persona_app.command("grant")
def grant(
    name: Annotated[str, typer.Argument(help="A private persona's name.", show_default=False)],
    discord_user: Annotated[
        list[int] | None, typer.Option(help="In DMs with this Discord user (repeatable).")
    ] = None,
    discord_server: Annotated[
        list[int] | None, typer.Option(help="In this Discord server (repeatable).")
    ] = None,
    telegram_chat: Annotated[
        list[int] | None,
        typer.Option(help="In this Telegram chat; a user's private chat has their id."),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Let conversations use a private persona (one with its own adapter, which may repeat
    the chat it was trained on): nobody may until it is granted."""
    settings = settings_or_exit(config)
    key = name.strip().lower()
    scopes = [
        *(discord_dm_scope(u) for u in discord_user or []),
        *(discord_server_scope(g) for g in discord_server or []),
        *(telegram_chat_scope(c) for c in telegram_chat or []),
    ]
    if not scopes:
        raise typer.BadParameter(
            "say where: --discord-user, --discord-server or --telegram-chat", param_hint="NAME"
        )

    async def _grant() -> int:
        async with open_store(settings) as store:
            stored = {n for where, n, _ in await store.list_personas() if where == GLOBAL}
            if key not in stored:
                typer.echo(f"personabot: no stored persona called {key!r}.", err=True)
                return 1
            for scope in scopes:
                await store.grant_persona(key, scope)
        typer.echo(f"Granted {key!r} to {', '.join(scopes)}; restart the bot to apply it.")
        return 0

    run_command(_grant())


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
