"""The partial text of a reply, shown at most once per interval while the model writes it.

Both streaming frontends use it; each only says how to show one preview (a Discord message
edit, a Telegram draft or edit) and which errors mean "stop trying".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class PreviewPump:
    """Records partial text and shows the latest of it, throttled, until stopped.

    :meth:`update` is the engine's ``on_partial`` callback: it only records the text, so it
    never slows generation down. A background task waits for ``ready`` (earlier replies in
    the conversation have been sent), then calls ``show`` with ``preview(latest)`` at most
    once per ``interval``. An error of a type in ``gives_up`` ends the previews quietly.
    """

    def __init__(
        self,
        show: Callable[[str], Awaitable[object]],
        *,
        preview: Callable[[str], str],
        ready: Callable[[], Awaitable[object]],
        interval: float,
        gives_up: tuple[type[BaseException], ...],
    ) -> None:
        self._show = show
        self._preview = preview
        self._ready = ready
        self._interval = interval
        self._gives_up = gives_up
        self._latest = ""
        self._shown = ""
        self._changed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def update(self, text: str) -> None:
        if not text.strip() or self._stopping.is_set():
            return
        self._latest = text
        self._changed.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """No more previews; returns once the one being shown (if any) is done."""
        self._stopping.set()
        self._changed.set()  # wakes a loop waiting for new text
        if self._task is not None:
            # Not cancelled: a send interrupted half-way could post a message twice.
            await self._task

    async def _run(self) -> None:
        await self._ready()
        while not self._stopping.is_set():
            await self._changed.wait()
            self._changed.clear()
            if self._stopping.is_set():
                return
            preview = self._preview(self._latest)
            if preview == self._shown:
                continue
            try:
                await self._show(preview)
            except self._gives_up as exc:
                log.info("Stopped showing a reply while it is written: %s", exc)
                return
            self._shown = preview
            # The pause doubles as the rate limit; stopping cuts it short.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval)
