"""A real, throwaway PostgreSQL server for the tests, from the distribution's own packages.

The storage, migration and fault tests run against SQLite and PostgreSQL alike, and a fake
PostgreSQL would prove nothing about the SQL, the asyncpg driver or reconnecting after an
outage. So a session fixture creates a cluster with ``initdb`` in a temporary folder, starts
it with ``pg_ctl`` on a free port of 127.0.0.1 (its socket in that folder, so it never
touches a system cluster) and stops it at the end. Each test gets a database of its own.

PostgreSQL refuses to run as root, so when the tests do (containers, CI) the server runs as
an unprivileged user (``postgres`` if it exists, else ``nobody``) through ``runuser``,
``setpriv`` or ``su``, and the folder is handed to that user. Where no server can be started
(binaries missing, no way to drop privileges) the PostgreSQL variants are skipped with the
reason; ``scripts/test`` installs the packages where it can.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import pwd
import secrets
import shutil
import socket
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ADMIN = "personabot"
BIN_ENV = "TEST_PG_BIN"  # a folder holding initdb and pg_ctl, to override the search


def find_bin_dir() -> Path | None:
    """The newest PostgreSQL server's binaries: Debian keeps them off PATH, by version."""
    candidates: list[Path] = []
    if os.environ.get(BIN_ENV):
        candidates.append(Path(os.environ[BIN_ENV]))
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(versions)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _unprivileged_prefix() -> tuple[list[str], pwd.struct_passwd | None]:
    """The command prefix that runs a program as an ordinary user, when we are root."""
    if os.geteuid() != 0:
        return [], None
    for name in ("postgres", "nobody"):
        try:
            user = pwd.getpwnam(name)
        except KeyError:
            continue
        if shutil.which("runuser"):
            return ["runuser", "-u", name, "--"], user
        if shutil.which("setpriv"):
            return [
                "setpriv",
                f"--reuid={user.pw_uid}",
                f"--regid={user.pw_gid}",
                "--clear-groups",
                "--",
            ], user
        if shutil.which("su"):
            return ["su", "-s", "/bin/sh", name, "-c", '"$0" "$@"', "--"], user
    raise RuntimeError("running as root and found no user and no tool to drop privileges")


class PostgresServer:
    """One PostgreSQL cluster in its own folder; can be stopped and started again."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.password = secrets.token_urlsafe(12)
        self.port = _free_port()
        self._prefix, self._user = _unprivileged_prefix()
        self.root = Path(tempfile.mkdtemp(prefix="personabot-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root
        self._names = itertools.count(1)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._user is not None:
            for path in (self.root, pwfile):
                os.chown(path, self._user.pw_uid, self._user.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            ADMIN,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--no-locale",
        )
        # Durability is not under test here, speed is welcome; connections: two engines'
        # pools plus the test's own.
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# personabot tests\n"
                "listen_addresses = '127.0.0.1'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.socket_dir}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 200\n"
            )

    def _run(self, program: str, *args: str, timeout: float = 120) -> str:
        result = subprocess.run(
            [*self._prefix, str(self.bin_dir / program), *args],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{program} failed ({result.returncode}): {result.stderr.strip() or result.stdout}"
            )
        return result.stdout

    def start(self) -> None:
        """Start and wait until it accepts connections (pg_ctl -w)."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "start")

    def stop(self) -> None:
        """Fast shutdown: open sessions are terminated, as in a real outage or failover."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        result = subprocess.run(
            [*self._prefix, str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "status"],
            capture_output=True,
            check=False,
        )
        return result.returncode == 0

    def psql(self, sql: str, database: str = "postgres") -> str:
        return self._run(
            "psql",
            "-h",
            str(self.socket_dir),
            "-p",
            str(self.port),
            "-U",
            ADMIN,
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-Atc",
            sql,
        )

    def url(self, database: str, *, password: str | None = None) -> str:
        """The async URL personabot is configured with, over TCP with the password."""
        secret = self.password if password is None else password
        return f"postgresql+asyncpg://{ADMIN}:{secret}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        name = f"test_{next(self._names)}"
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            if self.running():
                self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def start_server() -> PostgresServer:
    """A started server, or ``pytest.skip`` naming why none can be started here."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL is not installed (no initdb/pg_ctl under /usr/lib/postgresql/*/bin "
            f"or on PATH, nor in ${BIN_ENV}); scripts/test installs it with apt-get where it can"
        )
    server: PostgresServer | None = None
    try:
        server = PostgresServer(bin_dir)
        server.start()
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        if server is not None:
            server.destroy()
        pytest.skip(f"cannot start a PostgreSQL server from {bin_dir}: {exc}")
    return server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One server for the whole session; each test takes a database of its own."""
    server = start_server()
    yield server
    server.destroy()


@pytest.fixture
def outage_server() -> Iterator[PostgresServer]:
    """A server of the test's own, for tests that stop and restart it."""
    server = start_server()
    yield server
    server.destroy()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database of each kind personabot supports."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'data' / 'personabot.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()


class CuttingProxy:
    """A TCP proxy to PostgreSQL that can cut a connection around a COMMIT, on request.

    The hardest moment to lose a connection is during COMMIT: the client cannot tell whether
    the transaction landed. This proxy (the network edge, nothing of ours) reproduces both
    cases exactly: ``cut_before_commit`` drops the connection instead of forwarding the
    client's COMMIT (the server rolls back), ``cut_after_commit`` drops it after the server
    confirmed the COMMIT but before the client hears so (the data is in). It speaks just
    enough of the wire protocol to find message boundaries; connect through it with
    ``ssl=disable`` so the stream is plain from the first byte.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.cut_before_commit = 0
        self.cut_after_commit = 0
        self.cuts: list[str] = []
        self._server: asyncio.Server | None = None

    def url(self, server: PostgresServer, database: str) -> str:
        return (
            f"postgresql+asyncpg://{ADMIN}:{server.password}@127.0.0.1:{self.port}/"
            f"{database}?ssl=disable"
        )

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @staticmethod
    async def _message(reader: asyncio.StreamReader, typed: bool = True) -> tuple[bytes, bytes]:
        kind = await reader.readexactly(1) if typed else b""
        head = await reader.readexactly(4)
        (length,) = struct.unpack("!I", head)
        return kind, head + await reader.readexactly(length - 4)

    async def _relay(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        server_in, server_out = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def upstream() -> None:
            _, startup = await self._message(client_in, typed=False)
            server_out.write(startup)
            while True:
                kind, rest = await self._message(client_in)
                commit = kind == b"Q" and rest[4:].lstrip().upper().startswith(b"COMMIT")
                if commit and self.cut_before_commit:
                    self.cut_before_commit -= 1
                    self.cuts.append("before commit")
                    return
                server_out.write(kind + rest)
                await server_out.drain()

        async def downstream() -> None:
            while True:
                kind, rest = await self._message(server_in)
                if kind == b"C" and rest[4:].startswith(b"COMMIT") and self.cut_after_commit:
                    self.cut_after_commit -= 1
                    self.cuts.append("after commit")
                    return
                client_out.write(kind + rest)
                await client_out.drain()

        pumps = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        for writer in (client_out, server_out):
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
