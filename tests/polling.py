"""Waiting for effects that nothing announces: another process's writes, a server's state.

Where the code under test offers an event the tests wait on it; a subprocess, a database
server or a background task does not, so these checks poll, with a deadline that only turns
a hang into a failure (it asserts nothing about speed).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable


async def until(
    condition: Callable[[], bool | Awaitable[bool]], *, within: float = 60.0, every: float = 0.05
) -> None:
    """Return once ``condition()`` (sync or async) is true; TimeoutError after ``within`` s."""
    async with asyncio.timeout(within):
        while True:
            result = condition()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await asyncio.sleep(every)
