"""Opening the database: engine set-up, SQLite tuning and the schema-version check.

Everything that can go wrong at start-up (an unwritable folder, an unreachable server, a
schema that is behind or from a newer release) is turned into a :class:`StorageError` whose
message names the setting to change, because that is all an operator sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from alembic.util.exc import CommandError
from sqlalchemy import URL, event, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from core.errors import StorageError
from core.storage import migrate
from core.storage.retry import RetryPolicy, describe, is_transient

log = logging.getLogger(__name__)

SETTINGS_HINT = (
    "Set PERSONABOT_DATA_DIR to a writable folder or PERSONABOT_DATABASE_URL to another database."
)


def sqlite_url(path: Path) -> str:
    """The async SQLite URL for a database file (made absolute, so the cwd does not matter)."""
    return f"sqlite+aiosqlite:///{path.expanduser().resolve()}"


def masked(url: str | URL) -> str:
    """The URL as it may appear in logs and error messages: without its password."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid database URL>"


def sqlite_file(url: URL) -> Path | None:
    """The file behind a SQLite URL, or ``None`` for in-memory and non-SQLite databases."""
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database or ""
    if url.query.get("uri") in ("true", "1") and database.startswith("file:"):
        if "mode=memory" in str(url.query.get("mode", "")) or "mode=memory" in database:
            return None
        database = database.removeprefix("file:").split("?", 1)[0]
    if database in ("", ":memory:"):
        return None
    return Path(database).expanduser()


def prepare_sqlite_file(path: Path) -> None:
    """Create the database's folder and fail early, naming the path, when it is unusable.

    SQLite's own error for this case is "unable to open database file", which names neither
    the file nor what to do about it.
    """
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in (folder, *folder.parents) if p.exists()), None)
        reason = (
            f"{blocker} is a file, not a folder"
            if blocker is not None and not blocker.is_dir()
            else one_line(exc.strerror or str(exc))
        )
        raise StorageError(
            f"Cannot create the folder {folder} for the database file {path}: {reason}. "
            f"{SETTINGS_HINT}"
        ) from exc
    if not folder.is_dir():
        raise StorageError(
            f"Cannot use the database file {path}: {folder} is not a folder. {SETTINGS_HINT}"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StorageError(
            f"Cannot use the database file {path}: the folder {folder} is not writable. "
            f"{SETTINGS_HINT}"
        )
    if path.exists() and not (path.is_file() and os.access(path, os.R_OK | os.W_OK)):
        raise StorageError(
            f"Cannot use the database file {path}: it is not a readable and writable file. "
            f"{SETTINGS_HINT}"
        )


def _install_sqlite_pragmas(engine: AsyncEngine) -> None:
    """Tune every new SQLite connection; pragmas are per connection, so one-off is not enough.

    (WAL, which lets readers run while a reply is being written, is a property of the file and
    is switched on once by :meth:`Database.open`.) busy_timeout makes concurrent writers
    wait instead of failing with "database is locked", foreign_keys enables the ON DELETE
    rules the schema relies on, and synchronous=NORMAL is the safe setting for WAL.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA busy_timeout=5000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()


def _switch_to_wal(path: Path) -> None:
    """Put the database file in WAL mode (stored in the file, so once is enough).

    Changing the journal mode needs the file to itself, and SQLite answers "database is
    locked" at once rather than through the busy timeout; hence the retries, on a worker
    thread, while the caller holds the start-up lock that keeps other bots from migrating.
    """
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as connection:
        for pause in (0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 0.0):
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc).lower() or not pause:
                    raise
                time.sleep(pause)


async def _prepare_sqlite_file(engine: AsyncEngine) -> None:
    """WAL mode for a SQLite file, switched under the start-up lock before any other work."""
    path = sqlite_file(engine.url)
    if path is None:
        return
    try:
        async with sqlite_migration_lock(engine):
            await asyncio.to_thread(_switch_to_wal, path)
    except (sqlite3.Error, OSError) as exc:
        raise StorageError(f"Cannot open the database {masked(engine.url)}: {exc}") from exc


def make_engine(url: str) -> AsyncEngine:
    """An async engine for any SQLAlchemy async URL, with SQLite tuned and its folder ready."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StorageError(
            f"The database URL is not valid ({one_line(str(exc))}). Set "
            "PERSONABOT_DATABASE_URL to a SQLAlchemy URL such as "
            "sqlite+aiosqlite:////path/to/personabot.db."
        ) from exc
    path = sqlite_file(parsed)
    if path is not None:
        prepare_sqlite_file(path)
    try:
        engine = create_async_engine(parsed, pool_pre_ping=parsed.get_backend_name() != "sqlite")
    except (SQLAlchemyError, ImportError) as exc:
        raise StorageError(
            f"Cannot use the database {masked(parsed)}: {one_line(str(exc))}. "
            "PERSONABOT_DATABASE_URL must name an async driver that is installed, e.g. "
            "sqlite+aiosqlite:// or postgresql+asyncpg://."
        ) from exc
    if parsed.get_backend_name() == "sqlite":
        _install_sqlite_pragmas(engine)
    return engine


class Database:
    """An async engine plus the session factory the repository draws short sessions from."""

    def __init__(self, engine: AsyncEngine, retry: RetryPolicy | None = None) -> None:
        self.engine = engine
        #: How long store operations wait out a database outage (see core.storage.retry).
        self.retry = retry or RetryPolicy()
        # expire_on_commit=False: rows are turned into plain values after commit, and
        # reloading them would need another round trip (or fail outside the session).
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._sqlite_writer = asyncio.Lock() if engine.dialect.name == "sqlite" else None

    @property
    def url(self) -> str:
        """The database URL with the password hidden, for messages."""
        return masked(self.engine.url)

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql`` (or another SQLAlchemy dialect's name)."""
        return self.engine.dialect.name

    def session(self) -> AsyncSession:
        return self._sessions()

    @contextlib.asynccontextmanager
    async def writing(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a write transaction, committed on leaving (rolled back on error).

        For single Core statements on the hot path (storing each message): a session's unit
        of work costs several times the statement itself. Writers take turns on SQLite, as
        in :meth:`transaction`.
        """
        async with contextlib.AsyncExitStack() as stack:
            if self._sqlite_writer is not None:
                await stack.enter_async_context(self._sqlite_writer)
            yield await stack.enter_async_context(self.engine.begin())

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session in a write transaction, committed on leaving (rolled back on error).

        On SQLite, one at a time in this process. SQLite lets one writer in at a time and
        makes the others retry from its busy handler, which sleeps longer between tries
        the longer it has waited; with a batch of conversations writing at once that sleeping
        was most of the time a reply spent outside the model
        (docs/benchmarks.md#storage-under-concurrency). Queueing writers here
        hands the lock straight from one to the next. (Other processes on the same file
        still meet the busy handler, as before.)
        """
        async with contextlib.AsyncExitStack() as stack:
            if self._sqlite_writer is not None:
                await stack.enter_async_context(self._sqlite_writer)
            session = await stack.enter_async_context(self.session())
            await stack.enter_async_context(session.begin())
            yield session

    @classmethod
    async def open(
        cls, url: str, *, auto_migrate: bool = True, retry: RetryPolicy | None = None
    ) -> Database:
        """Connect, check the schema revision and migrate it to the newest when allowed.

        A database that cannot be reached (refused, starting up, network down) is tried
        ``retry.connect_attempts`` times with a growing pause, so a bot started alongside
        its database waits for it; any other failure stops at once.
        """
        policy = retry or RetryPolicy()
        engine = make_engine(url)
        try:
            await _prepare_sqlite_file(engine)
            await _open_with_retries(engine, policy, auto_migrate=auto_migrate)
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine, policy)

    async def close(self) -> None:
        """Return every connection; on SQLite the last close also checkpoints the WAL."""
        await self.engine.dispose()


async def _open_with_retries(
    engine: AsyncEngine, policy: RetryPolicy, *, auto_migrate: bool
) -> None:
    attempts = max(policy.connect_attempts, 1)
    pauses = policy.pauses()
    waited = 0.0
    for attempt in range(1, attempts + 1):
        try:
            await _check_schema(engine, auto_migrate=auto_migrate)
            return
        except StorageError as exc:
            cause = exc.__cause__
            if cause is None or not is_transient(cause):
                raise
            if attempt == attempts:
                raise StorageError(
                    f"Cannot reach the database {masked(engine.url)} after {attempts} "
                    f"attempt{'s' if attempts > 1 else ''} over {waited:.0f} s: "
                    f"{describe(cause)}. Check that the database server is running and "
                    "reachable from here, or raise PERSONABOT_DATABASE_CONNECT_ATTEMPTS to "
                    "wait longer."
                ) from cause
            pause = next(pauses)
            waited += pause
            log.warning(
                "The database %s is not reachable yet (%s); attempt %d of %d, retrying in %.1f s.",
                masked(engine.url),
                describe(cause),
                attempt,
                attempts,
                pause,
            )
            await asyncio.sleep(pause)


async def _check_schema(engine: AsyncEngine, *, auto_migrate: bool) -> None:
    where = masked(engine.url)
    try:
        heads = await migrate.current_heads(engine)
    except (SQLAlchemyError, OSError) as exc:
        raise StorageError(f"Cannot open the database {where}: {_cause(exc)}") from exc
    head = migrate.head_revision()
    unknown = sorted(set(heads) - migrate.known_revisions())
    if unknown:
        raise StorageError(
            f"The database {where} is at schema revision {', '.join(unknown)}, which this "
            "version of personabot does not know: a newer version has written it. Upgrade "
            "personabot, or point PERSONABOT_DATABASE_URL at another database. The database "
            "was left untouched."
        )
    if heads == (head,):
        return
    current = ", ".join(heads) or "none (empty database)"
    if not auto_migrate:
        raise StorageError(
            f"The database {where} is at schema revision {current}, but this version of "
            f"personabot needs {head}. Run `personabot db upgrade` (or set "
            "PERSONABOT_AUTO_MIGRATE=true)."
        )
    try:
        async with sqlite_migration_lock(engine):
            # Another process may have migrated while this one waited for the lock.
            if await migrate.current_heads(engine) == (head,):
                return
            await migrate.upgrade(engine)
    except (SQLAlchemyError, OSError, CommandError) as exc:
        raise StorageError(
            f"Upgrading the database {where} from schema revision {current} to {head} "
            f"failed: {_cause(exc)}"
        ) from exc


@contextlib.asynccontextmanager
async def sqlite_migration_lock(
    engine: AsyncEngine, *, on_wait: Callable[[Path], None] | None = None
) -> AsyncIterator[None]:
    """Serialise migrations of one SQLite file across processes (and engines).

    Two bots started together on one database would otherwise both run the first revision,
    and the second would fail on "table already exists": SQLite's driver runs DDL outside
    the migration's transaction, so its own locking does not help. An exclusive ``flock``
    on a file beside the database does; PostgreSQL takes an advisory lock in ``migrate``.
    Start-up and ``personabot db`` both take it, so a manual migration cannot run into a
    bot's. Whoever finds it held waits; ``on_wait`` (given the lock file) is called first,
    so a person at a terminal is told why nothing happens.
    """
    path = sqlite_file(engine.url)
    if path is None:
        yield
        return
    lock_file = path.with_name(path.name + ".migrate-lock")
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if on_wait is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                on_wait(lock_file)
                await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        else:
            await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _cause(exc: BaseException) -> str:
    """The driver's own message, without SQLAlchemy's SQL echo and documentation link."""
    orig = getattr(exc, "orig", None)
    return one_line(str(orig) if orig is not None else str(exc))


def one_line(message: str) -> str:
    """One line without a final full stop, to be embedded in a sentence of our own."""
    return message.strip().split("\n", 1)[0].rstrip(".")
