"""Riding out a database that is briefly unreachable, without ever storing a message twice.

A PostgreSQL server restarts (an upgrade, a failover, a container rescheduled) and a bot that
runs for months must not answer its users with tracebacks meanwhile, nor lose what it had
already accepted. Two places use this module:

* start-up (:meth:`core.storage.Database.open`) tries ``connect_attempts`` times with a
  growing pause, so a bot started together with its database waits for it;
* every store operation retries for up to ``outage_seconds`` when the failure is one of
  *connection* (refused, dropped, server shutting down or starting up, pool exhausted, SQLite
  busy), never when the SQL itself was refused.

Retrying a write is only safe when it cannot apply twice; the store makes sure of that (see
``ConversationStore.add_message``), this module only decides *whether* and *when*.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

log = logging.getLogger(__name__)

T = TypeVar("T")

# SQLSTATE classes that mean "the connection, not the statement, failed": 08 connection
# exception, 57P01-57P05 operator intervention (shutdown, crash, starting up), 53300 too many
# connections, 40001/40P01 serialisation failure and deadlock (retrying is the documented fix).
_TRANSIENT_SQLSTATES = ("08", "57P", "53300", "40001", "40P01")
_TRANSIENT_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ETIMEDOUT,
    errno.EPIPE,
}


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How patient storage is with an unreachable database.

    The defaults retry nothing, which is what a one-off command and most tests want; the
    bot's own settings (``PERSONABOT_DATABASE_*``) turn patience on.
    """

    connect_attempts: int = 1
    backoff_seconds: float = 0.5
    max_backoff_seconds: float = 10.0
    outage_seconds: float = 0.0

    def pauses(self) -> Iterator[float]:
        """Exponential back-off: backoff, 2x, 4x, ... capped at ``max_backoff_seconds``."""
        pause = max(self.backoff_seconds, 0.0)
        while True:
            yield min(pause, self.max_backoff_seconds)
            pause = pause * 2 if pause > 0 else 0.0


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception, the driver error SQLAlchemy wrapped, and their causes."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        todo.extend(
            [
                orig if isinstance(orig, BaseException) else None,
                current.__cause__,
                current.__context__,
            ]
        )


def is_transient(exc: BaseException) -> bool:
    """Whether retrying could succeed: the database was unreachable, not the SQL wrong."""
    for error in _chain(exc):
        if isinstance(error, DBAPIError) and error.connection_invalidated:
            return True
        if isinstance(error, PoolTimeoutError | ConnectionError | TimeoutError):
            return True
        if isinstance(error, OSError) and error.errno in _TRANSIENT_ERRNOS:
            return True
        sqlstate = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(_TRANSIENT_SQLSTATES):
            return True
        if type(error).__name__ == "OperationalError" and "database is locked" in str(error):
            return True  # SQLite: another process held the write lock past busy_timeout
    return False


def describe(exc: BaseException) -> str:
    """The innermost useful message, on one line, for logs and error messages."""
    for error in _chain(exc):
        if not isinstance(error, DBAPIError) and str(error).strip():
            return str(error).strip().split("\n", 1)[0].rstrip(".")
    return type(exc).__name__


async def retrying(
    operation: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    action: str,
    where: str,
) -> T:
    """Run ``operation``; while it fails transiently, retry with back-off for the outage budget.

    Each retry is logged as a warning naming the action and the (password-free) database,
    so an operator sees an outage as it happens; the last failure is re-raised unchanged.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + policy.outage_seconds
    pauses = policy.pauses()
    attempt = 1
    while True:
        try:
            return await operation()
        except Exception as exc:
            remaining = deadline - loop.time()
            if not is_transient(exc) or remaining <= 0:
                raise
            pause = min(next(pauses), remaining)
            log.warning(
                "Could not %s: the database %s is unreachable (%s); retrying in %.1f s "
                "(attempt %d, giving up %.0f s from now).",
                action,
                where,
                describe(exc),
                pause,
                attempt,
                remaining,
            )
            attempt += 1
            await asyncio.sleep(pause)
