"""The ``personabot`` command line: the composition root for every frontend.

Settings are read once here and passed down; errors the user can fix are printed as one
clear message (exit code 2 for configuration, 1 otherwise) instead of a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer

from core.errors import ConfigError, PersonabotError
from core.settings import Settings, load_settings

app = typer.Typer(
    name="personabot",
    help="A chat bot that answers in the voice of a switchable persona, adapting to your "
    "mood. Configure it with PERSONABOT_* environment variables or a TOML file "
    "(PERSONABOT_CONFIG); see README.md for every setting.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Manage the database schema (Alembic migrations).", no_args_is_help=True)
app.add_typer(db_app, name="db")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML settings file (same as PERSONABOT_CONFIG)."),
]
ProfileOption = Annotated[
    str | None,
    typer.Option(
        "--profile",
        help="Model profile: auto, mistral-7b or smollm2-135m (PERSONABOT_MODEL_PROFILE).",
    ),
]


def _settings(config: Path | None = None, **overrides: Any) -> Settings:
    try:
        settings = load_settings({"config": config, **overrides})
    except ConfigError as exc:
        typer.echo(f"personabot: {exc}", err=True)
        raise typer.Exit(2) from None
    _configure_logging(settings.log_level)
    return settings


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # Library chatter drowns the chat; keep their warnings and errors only.
    for noisy in ("httpx", "transformers", "peft", "accelerate", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - transformers is a hard dependency
        pass


def _run(coro: Coroutine[Any, Any, int]) -> None:
    """Run a command coroutine, turning user-fixable errors into one line and an exit code."""
    try:
        code = asyncio.run(coro)
    except ConfigError as exc:
        typer.echo(f"personabot: {exc}", err=True)
        raise typer.Exit(2) from None
    except PersonabotError as exc:
        typer.echo(f"personabot: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        code = 130
    raise typer.Exit(code)


@app.command()
def chat(
    config: ConfigOption = None,
    profile: ProfileOption = None,
    persona: Annotated[
        str | None, typer.Option(help="Switch the conversation to this persona first.")
    ] = None,
    channel: Annotated[
        str, typer.Option(help="Conversation id; each id keeps its own history.")
    ] = "local",
    name: Annotated[str, typer.Option(help="Your display name in the history.")] = "you",
    json_lines: Annotated[
        bool, typer.Option("--json", help="Piped mode: print one JSON object per line.")
    ] = False,
) -> None:
    """Chat with a persona in the terminal. Pipe lines in to script it (one reply per line)."""
    from bots.terminal import stdin_is_interactive

    settings = _settings(config, model_profile=profile)
    _run(_chat(settings, persona, channel, name, json_lines, stdin_is_interactive()))


async def _chat(
    settings: Settings,
    persona: str | None,
    channel: str,
    name: str,
    json_lines: bool,
    interactive: bool,
) -> int:
    from bots.terminal import TerminalChat
    from core.bootstrap import build_engine
    from core.types import Author, ConversationRef

    if interactive:
        typer.echo("Loading the model…", err=True)
    engine = await build_engine(settings)
    try:
        conversation = ConversationRef("terminal", channel)
        if persona:
            await engine.set_persona(conversation, persona)
        terminal = TerminalChat(
            engine,
            conversation=conversation,
            author=Author(id=f"terminal:{name}", display_name=name),
            stdin=sys.stdin,
            stdout=sys.stdout,
            interactive=interactive and not json_lines,
            json_lines=json_lines,
        )
        return await terminal.run()
    finally:
        await engine.aclose()


@app.command()
def run(config: ConfigOption = None, profile: ProfileOption = None) -> None:
    """Start every configured frontend (Discord, Telegram), else the terminal chat."""
    settings = _settings(config, model_profile=profile)
    from bots.runner import plan_frontends

    plan = plan_frontends(settings)
    for line in plan.report():
        typer.echo(line, err=True)
    if plan.terminal:
        from bots.terminal import stdin_is_interactive

        _run(_chat(settings, None, "local", "you", False, stdin_is_interactive()))
    raise typer.Exit(1)


@app.command()
def personas(config: ConfigOption = None) -> None:
    """List the personas: built-in, from the persona folder, and user-made."""
    settings = _settings(config)

    async def _list() -> int:
        from core.personas import PersonaCatalog, load_builtin_personas, load_persona_dir

        catalog = PersonaCatalog(
            [*load_builtin_personas(), *load_persona_dir(settings.resolved_persona_dir)]
        )
        for persona in catalog.all():
            default = " (default)" if persona.name == settings.default_persona else ""
            typer.echo(f"{persona.name:<10} {persona.display_name}{default}: {persona.description}")
        return 0

    _run(_list())


@app.command("config")
def show_config(config: ConfigOption = None) -> None:
    """Print the effective settings (tokens masked) and where data lives."""
    settings = _settings(config)
    for key, value in settings.model_dump().items():
        typer.echo(f"{key} = {value!s}")
    typer.echo(f"# database: {settings.resolved_database_url}")
    typer.echo(f"# persona folder: {settings.resolved_persona_dir}")
    typer.echo(f"# model cache: {settings.resolved_cache_dir}")


@db_app.command("upgrade")
def db_upgrade(
    config: ConfigOption = None,
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply migrations up to REVISION (default: the latest)."""
    settings = _settings(config)
    _run(_migrate(settings, "upgrade", revision))


@db_app.command("downgrade")
def db_downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision, e.g. 'base' (drops all).")],
    config: ConfigOption = None,
) -> None:
    """Revert migrations down to REVISION."""
    settings = _settings(config)
    _run(_migrate(settings, "downgrade", revision))


@db_app.command("current")
def db_current(config: ConfigOption = None) -> None:
    """Show the database's revision and the latest one this code knows."""
    settings = _settings(config)
    _run(_migrate(settings, "current", ""))


async def _migrate(settings: Settings, action: str, revision: str) -> int:
    from sqlalchemy.ext.asyncio import create_async_engine

    from core.bootstrap import prepare_data_dir
    from core.storage import migrate

    if settings.database_url is None:
        prepare_data_dir(settings)
    engine = create_async_engine(settings.resolved_database_url)
    try:
        if action == "upgrade":
            await migrate.upgrade(engine, revision)
        elif action == "downgrade":
            await migrate.downgrade(engine, revision)
        current = await migrate.current_revision(engine)
    finally:
        await engine.dispose()
    typer.echo(f"database revision: {current or 'base (empty)'}; latest: {migrate.head_revision()}")
    return 0


def main() -> None:
    """Console-script entry point."""
    app()
