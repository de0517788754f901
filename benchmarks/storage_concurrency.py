"""Storage under concurrency: what one store call costs alone and among N at once.

Why: under load (``benchmarks.load``, 32 conversations) a good part of each reply's time is
spent in the engine outside the generator, and almost all of it is the conversation store: a
message costs the engine several store calls (the conversation, its messages, the message
and the reply stored), and conversations served in one batch make those calls together.
Figures: docs/benchmarks.md#storage-under-concurrency.
This times the store alone, on a SQLite file in a temporary folder, with no model: each
call alone, then ``--concurrency`` conversations reading their state and history at once,
then as many storing a message at once. Reports, as JSON, p50 and max per call and the
wall time of each burst.

    .venv/bin/python -m benchmarks.storage_concurrency --concurrency 32 --json
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from core.storage import ConversationState, ConversationStore, Database, sqlite_url
from core.types import Author, ConversationRef

AUTHOR = Author("u1", "Alice")
TEXT = "I just got a new job and I'm so happy about it! " * 2


async def _timed(call: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await call()
    return time.perf_counter() - started


def _summary(times: list[float], wall: float | None = None) -> dict[str, float]:
    out = {
        "p50_ms": round(statistics.median(times) * 1000, 2),
        "max_ms": round(max(times) * 1000, 2),
    }
    if wall is not None:
        out["wall_ms"] = round(wall * 1000, 2)
    return out


async def _burst(
    states: list[ConversationState], call: Callable[[ConversationState], Awaitable[Any]]
) -> dict[str, float]:
    started = time.perf_counter()
    times = await asyncio.gather(*(_timed(functools.partial(call, s)) for s in states))
    return _summary(list(times), time.perf_counter() - started)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        database = await Database.open(sqlite_url(Path(folder) / "personabot.db"))
        store = ConversationStore(database)
        try:
            refs = [ConversationRef("bench", str(i)) for i in range(args.concurrency)]
            states = [await store.get_or_create(r, default_persona="friend") for r in refs]
            for state in states:
                for _ in range(args.history):
                    await store.add_message(state.id, role="user", author=AUTHOR, text=TEXT)

            async def state_of(s: ConversationState) -> object:
                return await store.get_or_create(s.ref, default_persona="friend")

            async def history_of(s: ConversationState) -> object:
                return await store.history(s.id, limit=args.history)

            async def store_one(s: ConversationState) -> object:
                return await store.add_message(s.id, role="user", author=AUTHOR, text=TEXT)

            calls = {"state": state_of, "history": history_of, "add_message": store_one}
            alone: dict[str, dict[str, float]] = {}
            for name, call in calls.items():
                lone = [
                    await _timed(functools.partial(call, states[0])) for _ in range(args.repeats)
                ]
                alone[name] = _summary(lone)
            together: dict[str, list[dict[str, float]]] = {name: [] for name in calls}
            for _ in range(args.repeats):
                for name, call in calls.items():
                    together[name].append(await _burst(states, call))
        finally:
            await database.close()
    return {
        "benchmark": "storage_concurrency",
        "concurrency": args.concurrency,
        "history_messages": args.history,
        "alone": alone,
        # The median burst of ``repeats``, by wall time.
        "together": {
            name: sorted(runs, key=lambda r: r["wall_ms"])[len(runs) // 2]
            for name, runs in together.items()
        },
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=32, help="conversations at once")
    parser.add_argument("--history", type=int, default=8, help="messages per conversation")
    parser.add_argument("--repeats", type=int, default=5, help="bursts (and lone calls) each")
    parser.add_argument("--json", action="store_true", help="one line of JSON")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.repeats < 1 or args.history < 1:
        parser.error("--concurrency, --history and --repeats must be at least 1")
    result = asyncio.run(measure(args))
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
