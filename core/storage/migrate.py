"""Run Alembic from inside the application, on the application's own async engine.

The ``migrations`` package is located through ``importlib`` rather than a path relative to
the working directory, so ``personabot db upgrade`` and the start-up auto-migration work from
an installed package as well as from a checkout.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from core.errors import StorageError

MIGRATIONS_PACKAGE = "migrations"
# Arbitrary, fixed key of the PostgreSQL advisory lock that serialises migrations when several
# bot processes (Discord shards, a Telegram process) start against one database at once.
MIGRATION_LOCK_KEY = 0x70657273  # "pers"


def script_location() -> Path:
    """The directory of the ``migrations`` package, wherever it is installed."""
    spec = importlib.util.find_spec(MIGRATIONS_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    if not locations:
        raise StorageError(
            f"The '{MIGRATIONS_PACKAGE}' package with the database migrations cannot be "
            "found; reinstall personabot."
        )
    return Path(locations[0])


def alembic_config(connection: Connection | None = None) -> Config:
    """A file-less Alembic config; ``env.py`` uses ``connection`` when one is given."""
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest revision this code knows; a database there needs no migration."""
    head = _scripts().get_current_head()
    if head is None:
        raise StorageError("The migrations package contains no revisions; reinstall personabot.")
    return head


def known_revisions() -> set[str]:
    """Every revision id shipped with this code, to recognise a database from a newer one."""
    return {script.revision for script in _scripts().walk_revisions()}


async def _run_alembic(engine: AsyncEngine, action: Callable[[Config], None]) -> None:
    """Run an Alembic command inside one transaction on one of ``engine``'s connections.

    On SQLite, foreign keys are switched off for the duration: batch mode rebuilds a table
    by copying and dropping it, and with foreign keys on, dropping a parent table would
    cascade-delete its children's rows. They are switched back on afterwards because the
    connection goes back to the pool. (The pragma is ignored inside a transaction, hence
    the separate statements around the migration's own transaction.)

    On PostgreSQL the transaction first takes an advisory lock, so processes starting
    together migrate one after the other; Alembic reads the schema revision after the lock
    is granted, so the later ones find nothing left to do.
    """
    async with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            await _foreign_keys(conn, enabled=False)
        try:
            async with conn.begin():
                if conn.dialect.name == "postgresql":
                    await conn.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                    )
                await conn.run_sync(lambda sync_conn: action(alembic_config(sync_conn)))
        finally:
            if sqlite:
                await _foreign_keys(conn, enabled=True)


async def _foreign_keys(conn: AsyncConnection, *, enabled: bool) -> None:
    await conn.exec_driver_sql(f"PRAGMA foreign_keys={'ON' if enabled else 'OFF'}")
    await conn.commit()


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema up to ``revision`` (default: the newest one)."""
    await _run_alembic(engine, lambda config: command.upgrade(config, revision))


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Take the schema back to ``revision`` (``"base"`` drops every table)."""
    await _run_alembic(engine, lambda config: command.downgrade(config, revision))


def _heads(sync_conn: Connection) -> tuple[str, ...]:
    return tuple(MigrationContext.configure(sync_conn).get_current_heads())


async def current_heads(engine: AsyncEngine) -> tuple[str, ...]:
    """Every revision recorded in ``alembic_version``; empty for an unmigrated database."""
    async with engine.connect() as conn:
        return await conn.run_sync(_heads)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The database's revision, or ``None`` when it has never been migrated."""
    heads = await current_heads(engine)
    if len(heads) > 1:
        raise StorageError(
            f"The database records several schema revisions ({', '.join(heads)}); "
            "it was migrated by a branched history this version cannot handle."
        )
    return heads[0] if heads else None
