"""Deciding which frontends ``personabot run`` starts, telling the user why, running them.

All platform frontends share one engine (one model in memory, one database) on one event
loop, and stop together: on SIGINT/SIGTERM, or when any of them fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.settings import Settings

if TYPE_CHECKING:  # the engine pulls in storage and models; planning needs neither
    from core.engine import Engine

    #: A frontend serves until the event is set; ``announce`` tells the operator it is online.
    FrontendRunner = Callable[
        [Engine, Settings, asyncio.Event, Callable[[str], None]], Coroutine[Any, Any, None]
    ]


@dataclass(frozen=True, slots=True)
class FrontendPlan:
    """Which frontends will start, and a reason for each one that will not."""

    started: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return "terminal" in self.started

    def report(self) -> list[str]:
        lines = [f"Starting {name}." for name in self.started]
        lines += [f"Not starting {name}: {why}" for name, why in self.skipped.items()]
        return lines


# Platform frontends register here as they are built: name -> (token setting, env name).
PLATFORM_FRONTENDS: dict[str, tuple[str, str]] = {
    "Discord": ("discord_token", "DISCORD_TOKEN"),
    "Telegram": ("telegram_token", "TELEGRAM_TOKEN"),
}
AVAILABLE_PLATFORMS: frozenset[str] = frozenset({"Discord", "Telegram"})


def plan_frontends(settings: Settings) -> FrontendPlan:
    """Platforms start when their token is set; the terminal chat when none does."""
    plan = FrontendPlan()
    for name, (setting, env_name) in PLATFORM_FRONTENDS.items():
        if getattr(settings, setting) is None:
            plan.skipped[name] = f"{env_name} is not set."
        elif name not in AVAILABLE_PLATFORMS:
            plan.skipped[name] = (
                f"{env_name} is set, but this version of personabot has no {name} frontend yet."
            )
        else:
            plan.started.append(name)
    if not plan.started:
        plan.started.append("terminal")
        plan.skipped.pop("terminal", None)
    return plan


def frontend_runner(name: str) -> FrontendRunner:
    """Import a frontend only when it starts, so the terminal chat never loads platform SDKs."""
    if name == "Discord":
        from bots.discord import run_discord

        return run_discord
    if name == "Telegram":
        from bots.telegram import run_telegram

        return run_telegram
    raise ValueError(f"no runnable frontend named {name!r}")


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """SIGINT/SIGTERM set ``stop`` for a graceful shutdown; a second one acts as usual.

    The handlers remove themselves on the first signal, so an impatient second Ctrl-C
    interrupts a shutdown that waits on a slow reply.
    """
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []

    def on_signal() -> None:
        stop.set()
        for sig in installed:
            loop.remove_signal_handler(sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - e.g. Windows
            continue
        installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def serve(
    engine: Engine,
    settings: Settings,
    names: list[str],
    announce: Callable[[str], None],
    stop: asyncio.Event | None = None,
) -> int:
    """Run the named frontends until a stop signal, or until one of them ends or fails.

    Returns the exit code; a frontend's error is re-raised after the others have stopped.
    """
    stop = stop or asyncio.Event()
    with stop_on_signals(stop):
        tasks = [
            asyncio.create_task(frontend_runner(name)(engine, settings, stop, announce), name=name)
            for name in names
        ]
        # Until a stop signal, or until one frontend ends (a failure): the shutdown timeout
        # below counts from that moment, not from when a frontend has finished stopping.
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        stop.set()  # stop the others too
        # Frontends finish the replies they are writing; one that is still busy after the
        # shutdown timeout is cancelled, so a stop always ends (the messages are stored).
        _, late = await asyncio.wait(tasks, timeout=settings.shutdown_timeout_seconds)
        for task in late:
            announce(
                f"{task.get_name()} did not stop within {settings.shutdown_timeout_seconds:g} s "
                "(PERSONABOT_SHUTDOWN_TIMEOUT_SECONDS); cancelling the replies it was writing."
            )
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for task, result in zip(tasks, results, strict=True):
        if isinstance(result, asyncio.CancelledError) and task in late:
            continue
        if isinstance(result, BaseException):
            raise result
    return 0
