"""Running a chat frontend in a test exactly as ``personabot run`` does, and stopping it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from core.bootstrap import build_engine
from core.engine import Engine
from core.generation.generator import Generator
from core.settings import Settings

#: ``run_discord`` or ``run_telegram``: serve until the event is set, announcing progress.
Serve = Callable[..., Coroutine[Any, Any, None]]


@dataclass
class RunningBot:
    engine: Engine
    settings: Settings
    stop: asyncio.Event
    task: asyncio.Task[None]


#: A test's way to start its platform's bot: ``await start_bot(**setting_overrides)``.
StartBot = Callable[..., Awaitable[RunningBot]]


class BotRunner:
    """Starts frontends on fresh engines; :meth:`stop_all` stops them gracefully."""

    def __init__(self, make_settings: Callable[..., Settings], generator: Generator) -> None:
        self._make_settings = make_settings
        self._generator = generator
        self._running: list[RunningBot] = []

    async def start(
        self,
        serve: Serve,
        values: dict[str, Any],
        *,
        ready: Awaitable[object] | None = None,
        generator: Generator | None = None,
    ) -> RunningBot:
        """Start ``serve``; return once ``ready`` is done (by default, the first
        announcement), or raise the error start-up failed with."""
        settings = self._make_settings(**values)
        engine = await build_engine(settings, generator=generator or self._generator)
        stop, online = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(serve(engine, settings, stop, announce=lambda _: online.set()))
        waiting = asyncio.ensure_future(online.wait() if ready is None else ready)
        await asyncio.wait([task, waiting], timeout=30, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if task.done():  # start-up failed: raise its error here
            await engine.aclose()
            task.result()
        assert waiting.done() and not waiting.cancelled(), "the bot did not come up in 30 s"
        self._running.append(RunningBot(engine, settings, stop, task))
        return self._running[-1]

    async def stop_all(self) -> None:
        for bot in self._running:
            bot.stop.set()
            await asyncio.wait_for(bot.task, 60)  # a graceful stop finishes quickly
            await bot.engine.aclose()
