"""`personabot db`, run as an operator runs it (a real subprocess): its errors and its lock.

An operator runs these commands by hand or from a deploy script, often against a database
that a bot is starting on at the same moment. So a wrong URL must read as one line that
says what to fix, never a traceback, and a migration must never interleave with the
auto-migration of a starting bot: the commands take start-up's lock.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from core.storage import migrate, sqlite_url
from core.storage.database import make_engine, sqlite_migration_lock
from tests.test_cli import personabot, personabot_env

PASSWORD = "s3cr3t-pw"
COMMANDS = [["db", "upgrade"], ["db", "downgrade", "base"], ["db", "current"]]


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A local port that refuses connections for the whole test: bound, never listening.

    Binding it (rather than picking a free port and closing it) keeps any other process
    from taking it meanwhile, so "unreachable" cannot turn into "some server answered".
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def bad_url(kind: str, port: int) -> str:
    return {
        "unknown-dialect": "notadb://x",
        "unknown-driver": f"postgresql+nosuchdriver://bob:{PASSWORD}@db.example/bot",
        "sync-driver": "sqlite://",
        "unparsable": f"bob:{PASSWORD} at db.example",
        "unreachable-server": f"postgresql+asyncpg://bob:{PASSWORD}@127.0.0.1:{port}/bot",
    }[kind]


# Every command meets an unknown dialect (refused before any command-specific code) and an
# unreachable server (refused by the command's first query); the other ways a URL can be
# wrong fail in the same engine set-up, so one command covers them.
BAD_URL_CASES = [
    *(
        (command, kind)
        for command in COMMANDS
        for kind in ("unknown-dialect", "unreachable-server")
    ),
    *((["db", "upgrade"], kind) for kind in ("unknown-driver", "sync-driver", "unparsable")),
]


@pytest.mark.parametrize(
    ("command", "kind"), BAD_URL_CASES, ids=[f"{' '.join(c)}-{k}" for c, k in BAD_URL_CASES]
)
def test_db_commands_report_a_bad_database_url_in_one_line(
    command: list[str], kind: str, refusing_port: int, tmp_path: Path, model_cache_dir: Path
) -> None:
    done = personabot(
        command,
        tmp_path,
        model_cache_dir,
        PERSONABOT_DATABASE_URL=bad_url(kind, refusing_port),
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("personabot: ")
    assert "PERSONABOT_DATABASE_URL" in lines[0]
    assert PASSWORD not in done.stderr and PASSWORD not in done.stdout
    assert done.stdout == ""


def revision_in(database: Path) -> str | None:
    """The schema revision recorded in a SQLite file, read without any personabot code."""
    if not database.exists():
        return None
    with closing(sqlite3.connect(database)) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        if "alembic_version" not in tables:
            return None
        row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
        return None if row is None else str(row[0])


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
async def test_db_commands_wait_for_the_start_up_migration_lock(
    command: list[str], tmp_path: Path, model_cache_dir: Path
) -> None:
    """While a starting bot migrates (holding start-up's own lock, taken here through the
    very function start-up uses), a `db` command waits, says so, and touches nothing; once
    the lock is free it does its work. SQLite only: there the lock is a file beside the
    database. On PostgreSQL, `migrate` takes an advisory lock inside every upgrade and
    downgrade, for start-up and the CLI alike, so there is no CLI-side lock to test."""
    database = tmp_path / "data" / "personabot.db"
    head = migrate.head_revision()
    if command[1] == "downgrade":
        prepared = personabot(["db", "upgrade"], tmp_path, model_cache_dir)
        assert prepared.returncode == 0, prepared.stderr
    before = revision_in(database)
    expected = {"upgrade": head, "downgrade": None, "current": before}[command[1]]

    engine = make_engine(sqlite_url(database))
    process: asyncio.subprocess.Process | None = None
    try:
        async with sqlite_migration_lock(engine):
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bots",
                *command,
                env=personabot_env(tmp_path, model_cache_dir),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            assert process.stderr is not None
            said: list[str] = []
            async with asyncio.timeout(120):  # only turns a hang into a failure
                while not any("waiting" in line for line in said):
                    line = (await process.stderr.readline()).decode()
                    assert line, f"finished without waiting for the lock: {said}"
                    said.append(line)
            assert process.returncode is None
            assert revision_in(database) == before
        async with asyncio.timeout(120):
            out, err = await process.communicate()
    finally:
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()
        await engine.dispose()

    assert process.returncode == 0, "".join(said) + err.decode()
    assert f"database revision: {expected or 'base (empty)'};" in out.decode()
    assert revision_in(database) == expected
