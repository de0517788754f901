"""Decode speed and GPU memory of the serving weight formats on a Mistral-7B-shaped model.

For each setup it builds a model with Mistral-7B's dimensions (``MistralConfig``: hidden 4096,
32 layers, 32 heads / 8 KV heads, MLP 14336, vocabulary 32000) with random weights directly in
bf16 on the GPU, prepares it with the same functions the bot's loader uses
(:mod:`core.generation.local.quantization`, :mod:`core.generation.local.compiled_decoding`),
and times greedy ``generate`` at each batch size: a prompt of ``--prompt`` random tokens, exactly
``--new-tokens`` new ones (end-of-sequence is switched off). Random weights: speed and memory
only.

A setup is ``FORMAT-MODE[-lora-merged|-lora-unmerged]``: FORMAT ``nf4`` (bitsandbytes),
``int4`` (torchao tinygemm), ``bf16`` or ``fp32``; MODE ``eager`` (``generate``),
``compile`` (``generate`` with a static KV cache + torch.compile "reduce-overhead", i.e. CUDA
graphs) or ``graph`` (:class:`benchmarks.graph_decoder.GraphDecoder`: the one-token step,
argmax included, as one CUDA graph and no per-token Python beyond it; uncompiled with
``--smoke``) or ``slots`` (the serving scheduler's decode path,
:class:`core.generation.batching.slot_batch.SlotBatch`: static per-conversation KV slots, one CUDA
graph per batch-size and width bucket, greedy tokens copied to the host after every step as
the scheduler does; eager with ``--smoke``). ``-lora-*`` adds a random LoRA
adapter (r=16 on q/k/v/o/gate/up/down, as ``personabot train`` makes) either merged into the
bf16 weights before quantising or left as a peft adapter on top.

    python -m benchmarks.decode_speed                       # every GPU setup, batch 1, 8, 32
    python -m benchmarks.decode_speed --setups int4-compile,nf4-eager --batches 1
    python -m benchmarks.decode_speed --smoke               # a toy model on the CPU (tests)

Each setup runs in its own Python process (``--isolate``, the default on a GPU) with a time
limit, so a setup that fails to compile or runs out of memory costs only itself, and compiled
graphs of one setup do not linger into the next. Every result is printed as soon as it is
measured; ``--json PATH`` writes them all.

Rates: ``tokens_per_s`` is batch x new tokens over the wall time of the whole ``generate``
call (the prompt's prefill included), the median of ``--repeats`` timed calls after one
untimed warm-up call (which compiles, for ``compile`` setups).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.random_models import MISTRAL_7B_DIMS, random_mistral
from core.generation.local.quantization import NF4Kernel, Quantization

TINY_DIMS: dict[str, Any] = {
    "hidden_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 256,
    "vocab_size": 1000,
    "max_position_embeddings": 2048,
    "sliding_window": None,
}
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

GPU_SETUPS = (
    "nf4-eager",
    "nf4-compile",
    "bf16-eager",
    "bf16-compile",
    "int4-eager",
    "int4-compile",
    "int4-graph",
    "bf16-graph",
    "int4-slots",
    "nf4-slots",
    "nf4triton-slots",
    "bf16-slots",
    "nf4-eager-lora-unmerged",
    "nf4-eager-lora-merged",
    "int4-compile-lora-unmerged",
    "int4-compile-lora-merged",
)
SMOKE_SETUPS = (
    "fp32-eager",
    "fp32-graph",
    "fp32-slots",
    "nf4-eager",
    "nf4-eager-lora-unmerged",
    "nf4-eager-lora-merged",
)
FORMATS = ("nf4", "nf4triton", "int4", "gemlite", "bf16", "fp32")
QUANTIZED: dict[str, Quantization] = {
    "nf4": "nf4",
    "nf4triton": "nf4",
    "int4": "int4",
    "gemlite": "gemlite",
}
"""The formats the loader quantises in memory, by their ``PERSONABOT_QUANTIZATION`` value.
``nf4`` multiplies with bitsandbytes' kernels, as every NF4 row measured before the fused
kernel did; ``nf4triton`` decodes on the fused kernel (``PERSONABOT_NF4_KERNEL=triton``)."""
MODES = ("eager", "compile", "graph", "slots")
RESULT_PREFIX = "RESULT "


@dataclass(frozen=True)
class Setup:
    """One way of serving the model, parsed from its name."""

    name: str
    weights: str
    mode: str  # "eager", "compile" (generate), "graph" (GraphDecoder) or "slots" (SlotBatch)
    lora: str | None  # None, "merged" or "unmerged"

    @property
    def compiled(self) -> bool:
        return self.mode != "eager"

    @classmethod
    def parse(cls, name: str) -> Setup:
        parts = name.split("-")
        lora = None
        if len(parts) == 4 and parts[2] == "lora" and parts[3] in ("merged", "unmerged"):
            lora = parts[3]
        elif len(parts) != 2:
            parts = ["?", "?"]
        if parts[0] not in FORMATS or parts[1] not in MODES:
            raise argparse.ArgumentTypeError(
                f"unknown setup {name!r}: expected FORMAT-MODE[-lora-merged|-lora-unmerged] "
                f"with FORMAT one of {', '.join(FORMATS)} and MODE one of {', '.join(MODES)}"
            )
        return cls(name, parts[0], parts[1], lora)


def build_random_model(dims: dict[str, Any], device: str, dtype: Any) -> Any:
    """Random weights created directly on ``device`` (seconds for a 7B on a GPU)."""
    model = random_mistral(dims, device, dtype)
    # Random logits hit the end-of-sequence token now and then; every call must decode the
    # same number of tokens.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model.eval()


def save_random_lora(model: Any, folder: Path, rank: int) -> Path:
    """A non-zero random LoRA adapter for ``model``, saved like ``personabot train`` saves one."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=list(LORA_TARGETS),
        init_lora_weights=False,  # random A and B: a zero B would make merging trivial
    )
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(str(folder))
    peft_model.unload()  # back to the bare base model, LoRA layers removed
    return folder


def prepare(setup: Setup, dims: dict[str, Any], device: str, lora_rank: int) -> Any:
    """Build the model for ``setup`` with the loader's own functions."""
    import torch
    from peft import PeftModel

    from core.generation.local.compiled_decoding import enable_compiled_decoding
    from core.generation.local.quantization import merge_adapter, quantize

    dtype = torch.float32 if setup.weights == "fp32" else torch.bfloat16
    model = build_random_model(dims, device, dtype)
    with tempfile.TemporaryDirectory() as folder:
        adapter = save_random_lora(model, Path(folder), lora_rank) if setup.lora else None
        if adapter is not None and setup.lora == "merged":
            model = merge_adapter(model, adapter)
        quantization = QUANTIZED.get(setup.weights)
        if quantization is not None:
            kernel: NF4Kernel = "triton" if setup.weights == "nf4triton" else "bitsandbytes"
            quantize(model, quantization, device, nf4_kernel=kernel)
        if adapter is not None and setup.lora == "unmerged":
            model = PeftModel.from_pretrained(model, str(adapter))
    if setup.mode == "compile":
        enable_compiled_decoding(model)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    return model.eval()


class SlotDecoder:
    """Greedy decoding through the serving scheduler's slot batch, for timing.

    Per token it does what the scheduler's worker does: one step (a graph replay on a GPU),
    the next tokens to the host, and the tokens back into the batch's input buffer.
    """

    def __init__(self, model: Any, slots: int, capacity: int, vocab_size: int) -> None:
        import torch

        from core.generation.batching.slot_batch import SlotBatch

        self.model = model
        # Every call sends the same prompts: reusing them would time no prompt encoding.
        self.batch = SlotBatch(slots, capacity, vocab_size, 0, graphs=True, reuse_prefixes=False)
        with torch.inference_mode():  # so the warm-up call captures the prompt graphs too
            self.batch.allocate_for(model)
        self.decode_s: list[float] = []
        """Per call: seconds from the first token on the host to the last (prefill excluded)."""

    def generate(self, input_ids: Any, new_tokens: int) -> Any:
        import torch

        with torch.inference_mode():
            self.batch.keep([])
            logits = self.batch.add(self.model, input_ids.tolist())
            tokens = logits.argmax(dim=-1).tolist()
            first = time.perf_counter()
            produced = [tokens]
            for _ in range(new_tokens - 1):
                self.batch.note_tokens(tokens)
                tokens = self.batch.step(self.model).argmax(dim=-1).tolist()
                produced.append(tokens)
            self.decode_s.append(time.perf_counter() - first)
        new = torch.tensor(produced, dtype=input_ids.dtype, device=input_ids.device).T
        return torch.cat([input_ids, new], dim=1)


def time_generate(model: Any, input_ids: Any, new_tokens: int, device: str) -> float:
    import torch

    from benchmarks.graph_decoder import GraphDecoder

    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    if isinstance(model, GraphDecoder | SlotDecoder):
        output = model.generate(input_ids, new_tokens)
    else:
        output = time_hf_generate(model, input_ids, new_tokens)
    if device == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    produced = output.shape[1] - input_ids.shape[1]
    if produced != new_tokens:
        raise RuntimeError(f"generated {produced} tokens, expected {new_tokens}")
    return elapsed


def time_hf_generate(model: Any, input_ids: Any, new_tokens: int) -> Any:
    import torch

    with torch.inference_mode():
        return model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )


def run_setup(setup: Setup, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Measure one setup at every batch size; print each result as soon as it exists."""
    import torch

    from core.generation.local.quantization import weight_bytes

    device = "cpu" if args.smoke else "cuda"
    dims = TINY_DIMS if args.smoke else MISTRAL_7B_DIMS
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = prepare(setup, dims, device, args.lora_rank)
    prepare_s = time.perf_counter() - started
    weights = weight_bytes(model)
    allocated = torch.cuda.memory_allocated() if device == "cuda" else None
    if setup.mode == "graph":
        from benchmarks.graph_decoder import GraphDecoder

        model = GraphDecoder(model, args.prompt + args.new_tokens, compile=device == "cuda")
    elif setup.mode == "slots":
        capacity = args.prompt + args.new_tokens
        model = SlotDecoder(model, max(args.batches), capacity, dims["vocab_size"])
    results = []
    for batch in args.batches:
        if time.perf_counter() - started > args.setup_seconds:
            emit({"setup": setup.name, "batch": batch, "skipped": "time limit"}, args)
            continue
        generator = torch.Generator().manual_seed(args.seed + batch)
        input_ids = torch.randint(
            3, dims["vocab_size"], (batch, args.prompt), generator=generator
        ).to(device)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        first = time.perf_counter()
        time_generate(model, input_ids, args.new_tokens, device)  # warm-up (compiles)
        warmup_s = time.perf_counter() - first
        times = [
            time_generate(model, input_ids, args.new_tokens, device) for _ in range(args.repeats)
        ]
        median = statistics.median(times)
        decode_only: dict[str, Any] = {}
        if isinstance(model, SlotDecoder):
            decode_s = statistics.median(model.decode_s[-args.repeats :])
            steps = args.new_tokens - 1
            decode_only = {"decode_only_tokens_per_s": round(batch * steps / decode_s, 1)}
        result = {
            "setup": setup.name,
            "batch": batch,
            "prompt_tokens": args.prompt,
            "new_tokens": args.new_tokens,
            "tokens_per_s": round(batch * args.new_tokens / median, 1),
            **decode_only,
            "seconds_per_call": [round(t, 3) for t in times],
            "warmup_s": round(warmup_s, 1),
            "prepare_s": round(prepare_s, 1),
            "weight_bytes": weights,
            "weight_gb": round(weights / 1e9, 3),
            "allocated_gb": None if allocated is None else round(allocated / 1e9, 3),
            "peak_gb": (
                round(torch.cuda.max_memory_allocated() / 1e9, 3) if device == "cuda" else None
            ),
        }
        emit(result, args)
        results.append(result)
    return results


def emit(result: dict[str, Any], args: argparse.Namespace) -> None:
    """One line per result: machine-readable for the parent, readable for a person."""
    if args.child:
        print(RESULT_PREFIX + json.dumps(result), flush=True)
    elif not args.quiet:
        print(describe(result), flush=True)


def describe(result: dict[str, Any]) -> str:
    if "skipped" in result or "error" in result:
        reason = result.get("skipped") or result.get("error")
        return f"{result['setup']:<28} batch {result.get('batch', '-')!s:>3}: {reason}"
    peak = "" if result["peak_gb"] is None else f", peak {result['peak_gb']:.2f} GB"
    decode = result.get("decode_only_tokens_per_s")
    decode_only = "" if decode is None else f", {decode:.1f} decoding only"
    return (
        f"{result['setup']:<28} batch {result['batch']:>3}: {result['tokens_per_s']:>8.1f} tok/s"
        f"{decode_only}  (weights {result['weight_gb']:.2f} GB{peak}; "
        f"warm-up {result['warmup_s']} s)"
    )


def run_isolated(setup: Setup, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run one setup in a child process with a time limit; relay its results as they come."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.decode_speed",
        "--child",
        "--no-isolate",
        "--setups",
        setup.name,
        "--batches",
        ",".join(map(str, args.batches)),
        "--prompt",
        str(args.prompt),
        "--new-tokens",
        str(args.new_tokens),
        "--repeats",
        str(args.repeats),
        "--seed",
        str(args.seed),
        "--lora-rank",
        str(args.lora_rank),
        "--setup-seconds",
        str(args.setup_seconds),
    ]
    if args.smoke:
        command.append("--smoke")
    results: list[dict[str, Any]] = []
    tail: list[str] = []
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    # A watchdog, so that a child stuck without printing (a hung compile) is killed too.
    watchdog = threading.Timer(args.setup_seconds + args.grace_seconds, process.kill)
    watchdog.start()
    assert process.stdout is not None
    try:
        for line in process.stdout:
            if line.startswith(RESULT_PREFIX):
                result = json.loads(line[len(RESULT_PREFIX) :])
                results.append(result)
                if not args.quiet:
                    print(describe(result), flush=True)
            else:
                tail = [*tail[-20:], line.rstrip()]
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
        code = process.wait()
    if len(results) < len(args.batches):  # a result (or skip) per batch size means done
        reason = f"exit code {code}" if code > 0 else "killed at time limit"
        error = {"setup": setup.name, "error": reason, "log_tail": tail[-8:]}
        if not args.quiet:
            print(describe(error), flush=True)
            print("\n".join("    " + line for line in tail[-8:]), flush=True)
        results.append(error)
    return results


def release_memory() -> None:
    """Drop the last setup's model and compiled graphs before the next one (in-process runs)."""
    import torch

    gc.collect()
    torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def environment() -> dict[str, Any]:
    import torch
    import transformers

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
    for package in ("bitsandbytes", "torchao", "peft"):
        try:
            module = __import__(package)
            info[package] = getattr(module, "__version__", "?")
        except Exception as exc:  # missing, or an import that fails on this machine
            info[package] = f"unavailable ({type(exc).__name__})"
    return info


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.decode_speed",
        description="Decode tokens/s and GPU memory per weight format on a Mistral-7B-shaped "
        "model with random weights.",
    )
    parser.add_argument(
        "--setups",
        help="comma-separated setups (FORMAT-MODE[-lora-merged|-lora-unmerged]); default: "
        f"{','.join(GPU_SETUPS)} (with --smoke: {','.join(SMOKE_SETUPS)})",
    )
    parser.add_argument("--batches", default=None, help="comma-separated (default 1,8,32)")
    parser.add_argument("--prompt", type=int, default=None, help="prompt tokens (default 256)")
    parser.add_argument("--new-tokens", type=int, default=None, help="new tokens (default 128)")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per batch size")
    parser.add_argument("--lora-rank", type=int, default=16, help="rank of the random LoRA")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--setup-seconds",
        type=float,
        default=240.0,
        help="time limit per setup: later batch sizes are skipped past it, and an isolated "
        "setup is killed a grace period later",
    )
    parser.add_argument("--grace-seconds", type=float, default=60.0, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="write every result and the versions here")
    parser.add_argument("--quiet", action="store_true", help="print only the final JSON")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a toy model on the CPU, batch 1 and 2, prompt 16, 8 new tokens (tests)",
    )
    parser.add_argument(
        "--isolate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="one process per setup (default: on, except with --smoke)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    default_setups = SMOKE_SETUPS if args.smoke else GPU_SETUPS
    names = args.setups.split(",") if args.setups else list(default_setups)
    try:
        args.setups = [Setup.parse(name.strip()) for name in names if name.strip()]
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if args.smoke:
        bad = [s.name for s in args.setups if s.mode == "compile" or s.weights in ("int4", "bf16")]
        if bad:
            parser.error(f"--smoke runs on the CPU; these setups need a GPU: {', '.join(bad)}")
    batches = args.batches or ("1,2" if args.smoke else "1,8,32")
    args.batches = [int(b) for b in batches.split(",")]
    args.prompt = args.prompt or (16 if args.smoke else 256)
    args.new_tokens = args.new_tokens or (8 if args.smoke else 128)
    if args.isolate is None:
        args.isolate = not args.smoke
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.smoke and not args.child:
        import torch

        if not torch.cuda.is_available():
            print("decode_speed needs a CUDA GPU; use --smoke on a CPU.", file=sys.stderr)
            return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    results: list[dict[str, Any]] = []
    info = {} if args.child else environment()
    for setup in args.setups:
        if args.isolate:
            results.extend(run_isolated(setup, args))
        else:
            try:
                results.extend(run_setup(setup, args))
            except Exception as exc:  # report and go on with the next setup
                error = {"setup": setup.name, "error": f"{type(exc).__name__}: {exc}"[:500]}
                emit(error, args)
                results.append(error)
            release_memory()
        if args.json:  # after every setup, so a run cut short keeps what it measured
            report = {"environment": info, "results": results}
            args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.child:
        return 0
    report = {"environment": info, "results": results}
    if args.quiet:
        print(json.dumps(report))
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
