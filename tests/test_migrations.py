"""Alembic migrations: up and down, the start-up schema check, and the alembic CLI.

The same revisions serve SQLite and PostgreSQL: tests taking ``engine`` or ``database_url``
run on both (a real server, see ``tests/postgres.py``).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from core.errors import StorageError
from core.storage import Database, migrate, sqlite_url
from core.storage.database import make_engine
from core.storage.models import Base

REPO_ROOT = Path(__file__).resolve().parent.parent
APP_TABLES = {"conversations", "messages", "personas", "persona_grants"}


@pytest_asyncio.fixture(loop_scope="function")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(database_url)
    yield engine
    await engine.dispose()


@pytest_asyncio.fixture(loop_scope="function")
async def sqlite_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(sqlite_url(tmp_path / "db.sqlite"))
    yield engine
    await engine.dispose()


async def table_names(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def test_upgrade_from_empty_creates_tables(engine: AsyncEngine) -> None:
    assert await migrate.current_revision(engine) is None

    await migrate.upgrade(engine)

    assert await table_names(engine) == APP_TABLES | {"alembic_version"}
    assert await migrate.current_revision(engine) == migrate.head_revision()


async def test_migrated_schema_matches_the_models(engine: AsyncEngine) -> None:
    await migrate.upgrade(engine)

    def differences(conn: Connection) -> list[object]:
        return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))

    async with engine.connect() as conn:
        assert await conn.run_sync(differences) == []


async def test_constraints_carry_the_naming_convention(engine: AsyncEngine) -> None:
    await migrate.upgrade(engine)

    def names(conn: Connection) -> dict[str, set[str | None]]:
        insp = inspect(conn)
        return {
            "uq": {uq["name"] for t in APP_TABLES for uq in insp.get_unique_constraints(t)},
            "fk": {fk["name"] for fk in insp.get_foreign_keys("messages")},
            "ix": {ix["name"] for ix in insp.get_indexes("messages")},
            "ck": {ck["name"] for ck in insp.get_check_constraints("messages")},
        }

    async with engine.connect() as conn:
        found = await conn.run_sync(names)
    assert found == {
        "uq": {
            "uq_conversations_platform_channel_id",
            "uq_personas_scope_name",
            "uq_persona_grants_persona_scope",
        },
        "fk": {
            "fk_messages_conversation_id_conversations",
            "fk_messages_reply_to_id_messages",
        },
        "ix": {
            "ix_messages_conversation_id_id",
            "ix_messages_reply_to_id",
            "ix_messages_created_at",
        },
        "ck": {"ck_messages_role"},
    }


async def test_downgrade_to_base_drops_every_table(engine: AsyncEngine) -> None:
    await migrate.upgrade(engine)

    await migrate.downgrade(engine, "base")

    assert (await table_names(engine)) & APP_TABLES == set()
    assert await migrate.current_revision(engine) is None
    await migrate.upgrade(engine)  # and the way back up still works
    assert await table_names(engine) >= APP_TABLES


async def test_foreign_keys_are_back_on_after_a_migration(sqlite_engine: AsyncEngine) -> None:
    engine = sqlite_engine
    await migrate.upgrade(engine)

    async with engine.connect() as conn:
        assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1


def test_revisions_are_known() -> None:
    assert migrate.head_revision() in migrate.known_revisions()


async def test_open_upgrades_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()

    database = await Database.open(sqlite_url(path))
    try:
        assert await table_names(database.engine) >= APP_TABLES
        assert await migrate.current_revision(database.engine) == migrate.head_revision()
    finally:
        await database.close()


async def test_open_without_auto_migrate_asks_for_db_upgrade(database_url: str) -> None:
    url = database_url

    with pytest.raises(StorageError, match="personabot db upgrade"):
        await Database.open(url, auto_migrate=False)

    engine = make_engine(url)
    try:
        assert (await table_names(engine)) & APP_TABLES == set()  # left untouched
    finally:
        await engine.dispose()


async def test_open_without_auto_migrate_accepts_a_current_database(engine: AsyncEngine) -> None:
    await migrate.upgrade(engine)

    database = await Database.open(
        engine.url.render_as_string(hide_password=False), auto_migrate=False
    )
    await database.close()


async def test_a_revision_from_newer_code_is_refused_and_left_alone(engine: AsyncEngine) -> None:
    await migrate.upgrade(engine)
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = 'from_the_future'"))

    with pytest.raises(StorageError, match="from_the_future") as caught:
        await Database.open(engine.url.render_as_string(hide_password=False))

    assert "newer version" in str(caught.value)
    assert await migrate.current_revision(engine) == "from_the_future"


async def test_processes_starting_together_migrate_once(database_url: str) -> None:
    """Two bots (e.g. Discord shards) opening one empty database at the same moment."""
    first, second = await asyncio.gather(Database.open(database_url), Database.open(database_url))
    try:
        assert await migrate.current_revision(first.engine) == migrate.head_revision()
        assert await table_names(second.engine) >= APP_TABLES
    finally:
        await first.close()
        await second.close()


async def test_a_new_sqlite_file_opened_by_several_bots_at_once_always_works(
    tmp_path: Path,
) -> None:
    """Switching a new file to WAL needs it to itself and SQLite does not wait for that:
    before the switch moved under the start-up lock, about half of such starts failed with
    "database is locked"."""
    for attempt in range(8):
        url = sqlite_url(tmp_path / f"shared-{attempt}.db")
        databases = await asyncio.gather(*(Database.open(url) for _ in range(3)))
        try:
            for database in databases:
                assert await migrate.current_revision(database.engine) == migrate.head_revision()
        finally:
            for database in databases:
                await database.close()


def run_alembic(env_overrides: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONABOT_")}
    env.update(env_overrides)
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_alembic_cli_upgrades_the_configured_database(database_url: str) -> None:
    url = database_url

    result = run_alembic({"PERSONABOT_DATABASE_URL": url}, "upgrade", "head")

    assert result.returncode == 0, result.stderr
    database = await Database.open(url, auto_migrate=False)  # already at head
    await database.close()


async def test_alembic_cli_defaults_to_the_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "not" / "yet" / "there"

    result = run_alembic({"PERSONABOT_DATA_DIR": str(data_dir)}, "upgrade", "head")

    assert result.returncode == 0, result.stderr
    database = await Database.open(sqlite_url(data_dir / "personabot.db"), auto_migrate=False)
    await database.close()


def test_migrations_are_found_without_the_repository_as_working_directory(
    tmp_path: Path,
) -> None:
    """The installed-package case: script_location must not depend on the cwd."""
    url = sqlite_url(tmp_path / "elsewhere.db")
    code = (
        "import asyncio, sys\n"
        "from core.storage import Database\n"
        "async def main():\n"
        "    db = await Database.open(sys.argv[1])\n"
        "    await db.close()\n"
        "asyncio.run(main())\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERSONABOT_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    result = subprocess.run(
        [sys.executable, "-c", code, url],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


async def test_personas_made_before_scopes_stay_global(engine: AsyncEngine) -> None:
    """0004 cannot tell where an old persona was made (only who made it): it stays global,
    and a downgrade refuses while two scopes share a name the old schema cannot hold."""
    await migrate.upgrade(engine, "0003")
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO personas (name, definition, created_by) VALUES ('chef', '{}', 'u')")
        )
    await migrate.upgrade(engine)
    async with engine.begin() as conn:
        rows = (await conn.execute(text("SELECT scope, name FROM personas"))).all()
        assert [tuple(row) for row in rows] == [("", "chef")]
        await conn.execute(
            text(
                "INSERT INTO personas (scope, name, definition) "
                "VALUES ('telegram:chat:1', 'chef', '{}')"
            )
        )
    with pytest.raises(Exception, match="several scopes"):
        await migrate.downgrade(engine, "0003")
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM personas WHERE scope <> ''"))
    await migrate.downgrade(engine, "0003")
    assert await migrate.current_revision(engine) == "0003"
