"""Reply latency of the whole engine (mood, storage, prompt, generation) on this machine.

Sends a fixed script of messages through ``Engine.reply`` in one conversation (so history
grows as in a real chat) and reports p50/p95 latency per reply as one JSON object.

    .venv/bin/python -m benchmarks.reply_latency --messages 30

Runs on the offline profile by default in a throw-away data directory; the converted model
is cached in PERSONABOT_CACHE_DIR (default .pytest_cache/models) between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from core.bootstrap import build_engine
from core.settings import Settings
from core.types import Author, ConversationRef

SCRIPT = [
    "Hi! How are you doing today?",
    "I just got a new job and I'm so happy about it!",
    "But I'm a bit nervous about the first day, to be honest.",
    "What should I wear to make a good impression?",
    "My old boss was awful, he shouted at everyone.",
    "Do you have any tips for remembering people's names?",
    "I'm worried I won't make any friends there.",
    "Thanks, that helps. What do you do to relax?",
    "I love cooking pasta on the weekend.",
    "Can you suggest a good book to read on the train?",
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def measure(args: argparse.Namespace) -> dict[str, object]:
    cache: Path = args.cache_dir
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(
            data_dir=Path(data_dir),
            cache_dir=cache,
            model_profile=args.profile,
            device=args.device,
            seed=args.seed,
            default_persona=args.persona,
        )
        started = time.perf_counter()
        engine = await build_engine(settings)
        load_s = time.perf_counter() - started
        conversation = ConversationRef("benchmark", "1")
        await engine.set_length(conversation, args.length)
        author = Author("bench", "Sam")
        for text in SCRIPT[: args.warmup]:
            await engine.reply(ConversationRef("benchmark", "warmup"), author, text)
        latencies: list[float] = []
        prompt_tokens: list[int] = []
        words = 0
        for i in tqdm(range(args.messages), desc="replies", unit="msg"):
            text = SCRIPT[i % len(SCRIPT)]
            t0 = time.perf_counter()
            reply = await engine.reply(conversation, author, text)
            latencies.append(time.perf_counter() - t0)
            prompt_tokens.append(reply.prompt_tokens)
            words += len(reply.text.split())
        name = engine.generator_name
        await engine.aclose()
    return {
        "benchmark": "reply_latency",
        "generator": name,
        "persona": args.persona,
        "length": args.length,
        "messages": args.messages,
        "p50_s": round(statistics.median(latencies), 3),
        "p95_s": round(percentile(latencies, 95), 3),
        "mean_s": round(statistics.fmean(latencies), 3),
        "max_s": round(max(latencies), 3),
        "mean_prompt_tokens": round(statistics.fmean(prompt_tokens), 1),
        "mean_reply_words": round(words / args.messages, 1),
        "engine_start_s": round(load_s, 2),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=30, help="replies to time")
    parser.add_argument("--warmup", type=int, default=2, help="untimed replies first")
    parser.add_argument("--profile", default="smollm2-135m", help="model profile")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--persona", default="friend")
    parser.add_argument("--length", default="medium", help="short, medium or long")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    args.cache_dir = Path(os.environ.get("PERSONABOT_CACHE_DIR", ".pytest_cache/models")).resolve()
    print(json.dumps(asyncio.run(measure(args)), indent=2))


if __name__ == "__main__":
    main()
