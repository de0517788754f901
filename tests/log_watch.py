"""What a frontend logged, for effects a fake server cannot see: shared by the platform tests."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager


class LogWatch(logging.Handler):
    """Every message logged under one logger, and a wait for a message to appear."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self._changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        self._changed.set()

    def count(self, text: str) -> int:
        return sum(text.lower() in line.lower() for line in self.lines)

    async def until(self, text: str, times: int = 1, within: float = 60.0) -> None:
        async with asyncio.timeout(within):
            while self.count(text) < times:
                self._changed.clear()
                await self._changed.wait()


@contextmanager
def watching(logger_name: str) -> Iterator[LogWatch]:
    """A :class:`LogWatch` on ``logger_name`` (at INFO) for the ``with`` block."""
    watch = LogWatch()
    logger = logging.getLogger(logger_name)
    previous = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(watch)
    try:
        yield watch
    finally:
        logger.removeHandler(watch)
        logger.setLevel(previous)
