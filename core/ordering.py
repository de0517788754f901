"""Per-conversation turn taking: replies in arrival order, conversations in parallel.

A ticket is taken synchronously when a message arrives, before any await, so arrival order
is exactly call order. The message can then be stored at once (nothing is lost if the
process dies while it waits) and the reply is generated only when every earlier message of
the same conversation has been answered or abandoned.
"""

from __future__ import annotations

import asyncio


class Turn:
    """One message's place in its conversation's queue."""

    def __init__(self, queue: TurnQueue, key: str, previous: asyncio.Future[None] | None) -> None:
        self._queue = queue
        self._key = key
        self._previous = previous
        self._mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.first_in_line = previous is None or previous.done()
        """No earlier turn of this conversation was unfinished when this one was taken, so
        nothing an earlier message does (storing it, its reply) can happen after this
        turn's reads: unlike :meth:`wait`'s answer, which says only whether the turn ahead
        was still running at that later moment."""

    async def wait(self) -> bool:
        """Return once every earlier turn of this conversation has finished; whether it
        had to wait for one (so whatever those turns could change may have changed)."""
        if self._previous is None or self._previous.done():
            return False
        # shield: a caller cancelled while waiting must not cancel the turn ahead of it.
        await asyncio.shield(self._previous)
        return True

    def finish(self) -> None:
        """Release the next turn, but never before the turns ahead of this one finished."""
        if self._mine.done():
            return
        previous = self._previous
        if previous is None or previous.done():
            self._release()
        else:
            previous.add_done_callback(lambda _: self._release())

    def _release(self) -> None:
        if not self._mine.done():
            self._mine.set_result(None)
            self._queue._forget(self._key, self._mine)


class TurnQueue:
    """Hands out turns per conversation key."""

    def __init__(self) -> None:
        self._tails: dict[str, asyncio.Future[None]] = {}
        self._unfinished: dict[str, int] = {}

    def join(self, key: str) -> Turn:
        """Take the next place in ``key``'s queue; synchronous so order is call order."""
        turn = Turn(self, key, self._tails.get(key))
        self._tails[key] = turn._mine
        self._unfinished[key] = self._unfinished.get(key, 0) + 1
        return turn

    def unfinished(self, key: str) -> int:
        """How many turns of ``key`` are waiting or running."""
        return self._unfinished.get(key, 0)

    def _forget(self, key: str, future: asyncio.Future[None]) -> None:
        left = self._unfinished.get(key, 1) - 1
        if left:
            self._unfinished[key] = left
        else:
            self._unfinished.pop(key, None)
        if self._tails.get(key) is future:
            del self._tails[key]

    def __len__(self) -> int:
        return len(self._tails)
