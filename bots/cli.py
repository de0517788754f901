"""The ``personabot`` command line: the composition root for every frontend.

Settings are read once here and passed down; errors the user can fix are printed as one
clear message (exit code 2 for configuration, 1 otherwise) instead of a traceback.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

from bots.cli_chat_import import import_chat
from bots.cli_common import ConfigOption, ProfileOption, run_command, settings_or_exit
from bots.cli_mood import register_mood_commands
from bots.cli_persona import persona_app
from bots.cli_training import register_training_commands
from core import redaction
from core.errors import StorageError
from core.settings import Settings

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

    settings = settings_or_exit(config, model_profile=profile)
    run_command(_chat(settings, persona, channel, name, json_lines, stdin_is_interactive()))


async def _chat(
    settings: Settings,
    persona: str | None,
    channel: str,
    name: str,
    json_lines: bool,
    interactive: bool,
) -> int:
    from bots.runner import stop_on_signals
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
            shutdown_timeout=settings.shutdown_timeout_seconds,
        )
        # SIGTERM (systemctl stop, docker stop) and Ctrl-C end the chat gracefully: the reply
        # being written is finished (within the timeout) and storage is closed cleanly.
        stop = asyncio.Event()
        with stop_on_signals(stop):
            return await terminal.run(stop)
    finally:
        await engine.aclose()


@app.command()
def run(config: ConfigOption = None, profile: ProfileOption = None) -> None:
    """Start every configured frontend (Discord, Telegram), else the terminal chat."""
    settings = settings_or_exit(config, model_profile=profile)
    from bots.runner import plan_frontends

    plan = plan_frontends(settings)
    for line in plan.report():
        typer.echo(line, err=True)
    if plan.terminal:
        from bots.terminal import stdin_is_interactive

        run_command(_chat(settings, None, "local", "you", False, stdin_is_interactive()))
    run_command(_serve(settings, plan.started))


async def _serve(settings: Settings, names: list[str]) -> int:
    """Build the engine once and share it between every platform frontend."""
    from bots.runner import serve
    from core.bootstrap import build_engine

    typer.echo("Loading the model…", err=True)
    engine = await build_engine(settings)
    try:
        return await serve(engine, settings, names, lambda line: typer.echo(line, err=True))
    finally:
        await engine.aclose()


@app.command()
def personas(config: ConfigOption = None) -> None:
    """List the personas: built-in, from the persona folder, and user-made."""
    settings = settings_or_exit(config)

    async def _list() -> int:
        from bots.cli_persona import open_store
        from core.bootstrap import load_personas

        async with open_store(settings) as store:
            catalog = await load_personas(settings, store)
        for persona in catalog.all():
            default = " (default)" if persona.name == settings.default_persona else ""
            typer.echo(f"{persona.name:<10} {persona.display_name}{default}: {persona.description}")
        return 0

    run_command(_list())


@app.command("config")
def show_config(config: ConfigOption = None) -> None:
    """Print the effective settings (tokens and passwords masked) and where data lives."""
    settings = settings_or_exit(config)
    for key, value in settings.model_dump().items():
        typer.echo(f"{key} = {_shown(key, value)}")
    typer.echo(f"# database: {_shown('database_url', settings.resolved_database_url)}")
    typer.echo(f"# persona folder: {settings.resolved_persona_dir}")
    typer.echo(f"# model cache: {settings.resolved_cache_dir}")


def _shown(key: str, value: object) -> str:
    """A setting as `config` may print it: output that gets pasted into bug reports and chats.

    Tokens are SecretStr and print as stars already, but the database URL is a plain string
    whose password would show, so it goes through the same masking as every storage message.
    Every other value is redacted too: a password in another URL (a proxy's in
    OPENAI_BASE_URL) or a configured secret must not leak through a field nobody thought of.
    """
    if key == "database_url" and value is not None:
        from core.storage.database import masked

        return masked(str(value))
    return redaction.redact(str(value))


@db_app.command("upgrade")
def db_upgrade(
    config: ConfigOption = None,
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply migrations up to REVISION (default: the latest)."""
    settings = settings_or_exit(config)
    run_command(_migrate(settings, "upgrade", revision))


@db_app.command("downgrade")
def db_downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision, e.g. 'base' (drops all).")],
    config: ConfigOption = None,
) -> None:
    """Revert migrations down to REVISION."""
    settings = settings_or_exit(config)
    run_command(_migrate(settings, "downgrade", revision))


@db_app.command("current")
def db_current(config: ConfigOption = None) -> None:
    """Show the database's revision and the latest one this code knows."""
    settings = settings_or_exit(config)
    run_command(_migrate(settings, "current", ""))


async def _migrate(
    settings: Settings, action: Literal["upgrade", "downgrade", "current"], revision: str
) -> int:
    """Run one `db` command the way start-up migrates: same engine set-up, same lock.

    The engine comes from ``make_engine``, so a malformed URL or a missing driver is a
    one-line StorageError naming PERSONABOT_DATABASE_URL, not a traceback. On SQLite the
    command takes start-up's migration lock (a file beside the database) and waits, as a
    starting bot does, while another process holds it, saying so on stderr; a manual
    upgrade can then never interleave with a bot's auto-migration. PostgreSQL needs
    nothing here: ``migrate`` takes its advisory lock inside every upgrade and downgrade,
    and reading the revision is one transactional SELECT.
    """
    from alembic.util.exc import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    from core.bootstrap import prepare_data_dir
    from core.storage import migrate
    from core.storage.database import make_engine, masked, sqlite_migration_lock
    from core.storage.retry import describe, is_transient

    def waiting(lock_file: Path) -> None:
        typer.echo(
            f"personabot: another process is migrating this database (it holds {lock_file}); "
            "waiting for it to finish…",
            err=True,
        )

    if settings.database_url is None:
        prepare_data_dir(settings)
    engine = make_engine(settings.resolved_database_url)
    where = masked(engine.url)
    try:
        async with sqlite_migration_lock(engine, on_wait=waiting):
            if action == "upgrade":
                await migrate.upgrade(engine, revision)
            elif action == "downgrade":
                await migrate.downgrade(engine, revision)
            current = await migrate.current_revision(engine)
    except (SQLAlchemyError, OSError, CommandError) as exc:
        hint = (
            " Check PERSONABOT_DATABASE_URL and that the database server is running and "
            "reachable from here."
            if isinstance(exc, OSError) or is_transient(exc)
            else ""
        )
        raise StorageError(
            f"`personabot db {action}` failed on the database {where}: {describe(exc)}.{hint}"
        ) from exc
    finally:
        await engine.dispose()
    typer.echo(f"database revision: {current or 'base (empty)'}; latest: {migrate.head_revision()}")
    return 0


register_mood_commands(app)
register_training_commands(app)
app.command("import-chat")(import_chat)
app.add_typer(persona_app, name="persona")


def main() -> None:
    """Console-script entry point."""
    app()
