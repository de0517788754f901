"""Serving under load: N conversations talking to the real engine at once.

Each of ``--conversations`` conversations sends ``--messages`` messages one after another
(the next once the previous reply is stored), all conversations at the same time, through
``Engine.reply`` with streaming (``on_partial``), as the Discord and Telegram frontends do.
Reports, as JSON: p50/p95 time to the full reply and to the first streamed text (both from
the message being handed to the engine), the part of each reply's time spent outside the
generator (storage, mood, prompt building), aggregate completion tokens per second, how the
scheduler batched (mean and peak batch size), how many prompt tokens the KV cache already
held (prefix reuse), and peak GPU memory on CUDA.

    # the offline model on this CPU
    .venv/bin/python -m benchmarks.load --conversations 8 --messages 3 --max-new-tokens 32
    # a Mistral-7B-shaped model with random weights on a GPU (no Hub, no downloads):
    # NF4 by default, --quantization gemlite, int4 (torchao) or none (bf16)
    python -m benchmarks.load --random-model mistral-7b --conversations 32 --messages 4 \\
        --max-new-tokens 64 --quantization int4
    # a toy random model on a CPU (smoke test)
    python -m benchmarks.load --random-model tiny --conversations 4 --messages 2

Why random weights: speed and memory depend on the shapes, not the values. The random model
gets a word-level tokenizer built on the spot (32,000 entries: the words of the persona
library, then filler words) with Mistral's chat format, so prompts have realistic token
counts and every sampled token decodes to a word; replies are nonsense words and run to the
token limit, which is what a load test wants. It needs only torch, transformers, tokenizers,
bitsandbytes (for NF4) or torchao (for int4) and this repository.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import re
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.random_models import MISTRAL_7B_DIMS, random_mistral
from benchmarks.reply_latency import SCRIPT, percentile
from core.bootstrap import build_engine
from core.engine import Engine
from core.errors import GeneratorBusyError
from core.generation.batching.batch_scheduler import BatchingConfig
from core.generation.factory import create_generator
from core.generation.generator import Generator
from core.generation.local.profiles import ModelSpec
from core.generation.local.quantization import NF4_KERNELS, QUANTIZATIONS, NF4Kernel, Quantization
from core.settings import Settings
from core.types import Author, ConversationRef

PERSONA_LIBRARY = Path(__file__).resolve().parent.parent / "core" / "persona_library"

RANDOM_MODELS: dict[str, dict[str, Any]] = {
    "mistral-7b": MISTRAL_7B_DIMS,
    "tiny": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 224,
        "vocab_size": 2000,
        "max_position_embeddings": 4096,
        "sliding_window": None,
    },
}
"""Mistral-7B-Instruct-v0.2's dimensions (as in benchmarks.train_throughput), and a toy."""

MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
    "[INST] {{ m['content'] }} [/INST]{% elif m['role'] == 'assistant' %}"
    "{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)


# -- the random model ---------------------------------------------------------------------------


def word_tokenizer(vocab_size: int) -> Any:
    """A word-level tokenizer of exactly ``vocab_size`` entries with Mistral's chat format."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"]
    # The benchmark's own messages first, so a small vocabulary still covers them.
    texts = [
        *SCRIPT,
        *(p.read_text(encoding="utf-8") for p in sorted(PERSONA_LIBRARY.glob("*.toml"))),
    ]
    vocab: dict[str, int] = {}
    for token in [*specials, *(w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower()))]:
        vocab.setdefault(token, len(vocab))
    filler = 0
    while len(vocab) < vocab_size:
        vocab.setdefault(f"w{filler}", len(vocab))
        filler += 1
    core = Tokenizer(models.WordLevel(dict(list(vocab.items())[:vocab_size]), unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    fast: Any = PreTrainedTokenizerFast  # untyped in transformers
    tokenizer = fast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="</s>",
        additional_special_tokens=["[INST]", "[/INST]"],
    )
    tokenizer.chat_template = MISTRAL_TEMPLATE
    return tokenizer


def random_generator(
    name: str,
    device: str,
    quantization: Quantization,
    batching: BatchingConfig,
    graphs: bool = False,
    nf4_kernel: NF4Kernel = "triton",
) -> Generator:
    """The transformers backend over a random model of ``name``'s shape.

    ``quantization`` is ``nf4`` (bitsandbytes), ``int4`` (torchao tinygemm, CUDA only),
    ``gemlite`` (GemLite's Triton kernels, CUDA only) or ``none`` (bf16 on CUDA, fp32 on a
    CPU), quantised in memory as the engine's loader does.
    ``graphs``: decode on the static slot cache (CUDA graphs on a GPU), as
    ``PERSONABOT_COMPILE`` does; ``nf4_kernel`` as ``PERSONABOT_NF4_KERNEL``.
    """
    import torch

    from core.generation.local.quantization import compute_dtype, quantize
    from core.generation.local.transformers_generator import TransformersGenerator

    dims = RANDOM_MODELS[name]
    dtype = compute_dtype(device)
    torch.manual_seed(0)
    model = random_mistral(dims, device, dtype, bos_token_id=1, eos_token_id=2)
    quantize(model, quantization, device, nf4_kernel)
    if device == "cuda":
        torch.cuda.empty_cache()
    model.eval()
    tokenizer = word_tokenizer(dims["vocab_size"])
    spec = ModelSpec(
        profile=f"random-{name}",
        source="random weights",
        gguf_file=None,
        converted_dir=None,
        quantization=quantization,
        adapter=None,
        device=device,
        system_role=False,
        compile=graphs,
        nf4_kernel=nf4_kernel,
    )
    return TransformersGenerator(model, tokenizer, spec, system_role=False, batching=batching)


# -- the load -----------------------------------------------------------------------------------


@dataclass
class Timings:
    """What one conversation measured."""

    replies: list[float] = field(default_factory=list)
    first_text: list[float] = field(default_factory=list)
    outside_generation: list[float] = field(default_factory=list)
    """Per reply, seconds the engine spent outside the generator (storage, mood, prompt)."""
    busy: int = 0
    words: int = 0


async def converse(engine: Engine, index: int, messages: int, timings: Timings) -> None:
    conversation = ConversationRef("load", str(index))
    author = Author(f"user-{index}", f"User{index}")
    for turn in range(messages):
        text = SCRIPT[(index + turn) % len(SCRIPT)]
        started = time.perf_counter()
        first: list[float] = []

        def partial(so_far: str, first: list[float] = first, started: float = started) -> None:
            if so_far and not first:
                first.append(time.perf_counter() - started)

        try:
            reply = await engine.reply(conversation, author, text, on_partial=partial)
        except GeneratorBusyError:
            timings.busy += 1
            continue
        elapsed = time.perf_counter() - started
        timings.replies.append(elapsed)
        generating = reply.extra.get("generation_seconds")
        if isinstance(generating, float):
            timings.outside_generation.append(elapsed - generating)
        timings.first_text.extend(first)
        timings.words += len(reply.text.split())


def write_persona(folder: Path, max_new_tokens: int) -> None:
    """The default persona with every reply's token budget set to ``max_new_tokens``."""
    folder.mkdir(parents=True, exist_ok=True)
    friend = (PERSONA_LIBRARY / "friend.toml").read_text(encoding="utf-8")
    budget = re.sub(r"(?m)^max_new_tokens = \d+$", f"max_new_tokens = {max_new_tokens}", friend)
    (folder / "friend.toml").write_text(budget, encoding="utf-8")


def settings_for(args: argparse.Namespace, data_dir: Path) -> Settings:
    profile = args.profile
    if args.random_model:  # only the prompt budget follows from it
        profile = "mistral-7b" if args.random_model == "mistral-7b" else "smollm2-135m"
    return Settings(
        data_dir=data_dir,
        cache_dir=args.cache_dir,
        model_profile=profile,
        device=args.device,
        seed=args.seed,
        default_persona="friend",
        mood_detector=args.mood_detector,
        max_batch_size=args.max_batch_size or args.conversations,
        batch_window_ms=args.batch_window_ms,
        max_queued_requests=args.max_queued,
        max_prompt_tokens=args.max_prompt_tokens,
        load_in_4bit=None if args.random_model else args.load_in_4bit,
        quantization="auto" if args.random_model or not args.quantization else args.quantization,
        nf4_kernel=args.nf4_kernel,
    )


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    args.device = _device(args.device)
    cuda = args.device == "cuda"
    with tempfile.TemporaryDirectory() as folder:
        data_dir = Path(folder)
        write_persona(data_dir / "personas", args.max_new_tokens)
        settings = settings_for(args, data_dir)
        started = time.perf_counter()
        if args.random_model:
            quantization: Quantization = args.quantization or ("nf4" if cuda else "none")
            batching = BatchingConfig.from_settings(settings)
            if args.padded_prefill_rows is not None:
                batching = dataclasses.replace(
                    batching, padded_prefill_rows=args.padded_prefill_rows
                )
            graphs = cuda if args.graphs is None else args.graphs
            generator = await asyncio.to_thread(
                random_generator,
                args.random_model,
                args.device,
                quantization,
                batching,
                graphs,
                args.nf4_kernel,
            )
        else:
            generator = await create_generator(settings)
        engine = await build_engine(settings, generator=generator)
        load_s = time.perf_counter() - started
        weights_gb = torch.cuda.memory_allocated() / 2**30 if cuda else None
        try:
            for i in range(args.warmup):  # first calls allocate and warm the kernels
                await engine.reply(ConversationRef("warmup", str(i)), Author("w", "W"), SCRIPT[i])
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            stats = getattr(generator, "batch_stats", None)
            before = dataclasses.replace(stats) if stats is not None else None  # a copy
            timings = [Timings() for _ in range(args.conversations)]
            wall_started = time.perf_counter()
            await asyncio.gather(
                *(converse(engine, i, args.messages, timings[i]) for i in range(args.conversations))
            )
            wall = time.perf_counter() - wall_started
            name = engine.generator_name
        finally:
            await engine.aclose()
    replies = [t for timing in timings for t in timing.replies]
    first = [t for timing in timings for t in timing.first_text]
    outside = [t for timing in timings for t in timing.outside_generation]
    result: dict[str, Any] = {
        "benchmark": "load",
        "generator": name,
        "device": args.device,
        "conversations": args.conversations,
        "messages_per_conversation": args.messages,
        "max_new_tokens": args.max_new_tokens,
        "max_batch_size": settings.max_batch_size,
        "replies": len(replies),
        "busy_refusals": sum(t.busy for t in timings),
        "wall_s": round(wall, 2),
        "reply_p50_s": _round(statistics.median(replies)) if replies else None,
        "reply_p95_s": _round(percentile(replies, 95)) if replies else None,
        "first_text_p50_s": _round(statistics.median(first)) if first else None,
        "first_text_p95_s": _round(percentile(first, 95)) if first else None,
        "outside_generation_p50_s": _round(statistics.median(outside)) if outside else None,
        "outside_generation_p95_s": _round(percentile(outside, 95)) if outside else None,
        "mean_reply_words": round(sum(t.words for t in timings) / max(1, len(replies)), 1),
        "load_s": round(load_s, 1),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    if stats is not None and before is not None:
        tokens = stats.tokens - before.tokens
        steps = stats.steps - before.steps
        result["completion_tokens"] = tokens
        result["tokens_per_s"] = round(tokens / wall, 1)
        result["mean_batch_size"] = (
            round((stats.row_steps - before.row_steps) / steps, 2) if steps else None
        )
        result["peak_batch_size"] = stats.peak_rows
        # Prompt tokens admitted, and how many of them the KV cache already held.
        result["prompt_tokens"] = stats.prompt_tokens - before.prompt_tokens
        result["reused_prompt_tokens"] = stats.reused_tokens - before.reused_tokens
        # Where the worker's time went (the rest of the wall time it was idle or waiting).
        result["prefills"] = stats.prefills - before.prefills
        result["prefill_s"] = round(stats.prefill_s - before.prefill_s, 2)
        result["step_s"] = round(stats.step_s - before.step_s, 2)
        result["sample_s"] = round(stats.sample_s - before.sample_s, 2)
    if cuda:
        result["gpu"] = torch.cuda.get_device_name()
        result["nf4_kernel"] = args.nf4_kernel
        result["weights_gb"] = round(weights_gb or 0.0, 2)
        result["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result


def _round(value: float) -> float:
    return round(value, 3)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--conversations", type=int, default=8, help="concurrent conversations")
    parser.add_argument("--messages", type=int, default=3, help="messages per conversation")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="reply token budget")
    parser.add_argument(
        "--profile", default="smollm2-135m", help="model profile (ignored with --random-model)"
    )
    parser.add_argument(
        "--random-model",
        choices=sorted(RANDOM_MODELS),
        help="a model of this shape with random weights instead of a profile's weights",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument(
        "--load-in-4bit",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="NF4 weights for a profile's model (default: the profile's choice)",
    )
    parser.add_argument(
        "--quantization",
        choices=QUANTIZATIONS,
        default=None,
        help="weight format (PERSONABOT_QUANTIZATION); for a random model the default is nf4 "
        "on CUDA and none on a CPU; int4 and gemlite need CUDA and the gpu extra",
    )
    parser.add_argument(
        "--nf4-kernel",
        choices=NF4_KERNELS,
        default="triton",
        help="NF4 decode-step kernel on CUDA (PERSONABOT_NF4_KERNEL): triton, the fused one "
        "(default, as served), or bitsandbytes, as every NF4 load run before it",
    )
    parser.add_argument(
        "--max-batch-size", type=int, default=0, help="PERSONABOT_MAX_BATCH_SIZE (0: N)"
    )
    parser.add_argument(
        "--graphs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random model: decode on the static slot KV cache, replayed as CUDA graphs on a "
        "GPU (PERSONABOT_COMPILE); default on with CUDA",
    )
    parser.add_argument(
        "--padded-prefill-rows",
        type=int,
        default=None,
        help="random model with --graphs: from this many prompts admitted at once, one "
        "padded eager pass encodes them instead of captured prompt passes (default: never)",
    )
    parser.add_argument("--batch-window-ms", type=float, default=10.0)
    parser.add_argument("--max-queued", type=int, default=64, help="PERSONABOT_MAX_QUEUED_REQUESTS")
    parser.add_argument("--max-prompt-tokens", type=int, default=None)
    parser.add_argument("--mood-detector", default="lexicon", help="mood detector to use")
    parser.add_argument("--warmup", type=int, default=1, help="untimed replies first")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--json", action="store_true", help="one line of JSON, not indented")
    args = parser.parse_args(argv)
    args.cache_dir = Path(os.environ.get("PERSONABOT_CACHE_DIR", ".pytest_cache/models")).resolve()
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = asyncio.run(measure(args))
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
