"""Training throughput and peak GPU memory of QLoRA on a Mistral-7B-shaped model.

Builds ``MistralConfig`` with Mistral-7B's dimensions (hidden 4096, 32 layers, 32 heads, 8
key/value heads, MLP 14336, vocabulary 32000) with random weights, quantises its linear
layers to NF4 (double quantisation, bf16 compute), applies the same LoRA adapters and runs
the same training step as ``personabot train`` (:func:`training.train_lm.apply_lora` and
:func:`training.train_lm.train_loop`) on random tokens, then prints one JSON object with
training tokens per second and peak GPU memory.

    python -m benchmarks.train_throughput --steps 20 --seq-len 512 --batch-size 4
    python -m benchmarks.train_throughput --tiny          # a toy model on the CPU (tests)

Why random weights: throughput and memory depend on the shapes, not the values, so the
benchmark needs neither the 14 GB download nor Hub access. The weights are created directly
in bf16 on the GPU (seconds, no fp32 copy on the CPU) and each linear layer is quantised in
place; ``--build reload`` instead saves the bf16 model and reloads it through
``from_pretrained`` with a ``BitsAndBytesConfig``, the exact loading path of a real run.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.random_models import MISTRAL_7B_DIMS, random_mistral
from core.generation.local.quantization import compute_dtype, quantize_nf4
from training.sft_data import TokenizedExample
from training.train_lm import (
    DEFAULT_TARGETS,
    LoopSettings,
    apply_lora,
    load_base_model,
    resolve_device,
    train_loop,
)

TINY_DIMS: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 224,
    "vocab_size": 1000,
    "max_position_embeddings": 2048,
}


def build_random_model(dims: dict[str, Any], device: str) -> Any:
    """Random weights created on ``device`` in the compute dtype (bf16 on a GPU)."""
    return random_mistral(dims, device, compute_dtype(device))


def random_examples(n: int, seq_len: int, vocab: int, seed: int) -> list[TokenizedExample]:
    """Full-length sequences of random tokens, every token a target (worst case for memory)."""
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        ids = [rng.randrange(3, vocab) for _ in range(seq_len)]
        examples.append(TokenizedExample(ids, list(ids)))
    return examples


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    device = resolve_device(args.device)
    dims = TINY_DIMS if args.tiny else MISTRAL_7B_DIMS
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    quantize_seconds = 0.0
    if args.build == "reload":
        with tempfile.TemporaryDirectory(dir=args.tmp_dir) as folder:
            build_random_model(dims, device).save_pretrained(folder)
            if device == "cuda":
                torch.cuda.empty_cache()
            model = load_base_model(folder, load_in_4bit=args.load_in_4bit, device=device)
        build_seconds = time.perf_counter() - started
    else:
        model = build_random_model(dims, device)
        if device == "cuda":
            torch.cuda.synchronize()
        build_seconds = time.perf_counter() - started
        if args.load_in_4bit:
            started = time.perf_counter()
            quantize_nf4(model, device)  # the serving loader's, layer by layer
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
            quantize_seconds = time.perf_counter() - started
    params = sum(p.numel() for p in model.parameters())
    model_memory = torch.cuda.memory_allocated() / 2**30 if device == "cuda" else None
    footprint = model.get_memory_footprint() / 2**30
    model = apply_lora(
        model,
        quantized=args.load_in_4bit,
        r=args.lora_r,
        alpha=args.lora_alpha,
        dropout=0.05,
        targets=DEFAULT_TARGETS,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    trainable, _ = model.get_nb_trainable_parameters()
    steps = args.warmup + args.steps
    examples = random_examples(
        steps * args.batch_size * args.grad_accum, args.seq_len, dims["vocab_size"], args.seed
    )
    loop = LoopSettings(
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=2e-4,
        warmup_ratio=0.03,
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim=args.optim,
        epochs=1.0,
        max_steps=steps,
        eval_steps=0,
        save_steps=0,
        save_total_limit=1,
        save_dtype="float32",
        eval_batch_size=args.batch_size,
        group_by_length=False,
        seed=args.seed,
        log_steps=1,  # one record (and one GPU sync) per step, so warm-up steps can be dropped
        progress=not args.quiet,
        eval_at_start=False,
    )
    metrics = train_loop(model, examples, [], loop, device=device, pad_id=0, output=None)
    timed = metrics["train_loss"][args.warmup :]
    tokens = sum(r["tokens"] for r in timed)
    seconds = sum(r["seconds"] for r in timed)
    import bitsandbytes
    import peft
    import transformers

    result: dict[str, Any] = {
        "model": ("tiny Mistral-shaped" if args.tiny else "Mistral-7B-shaped")
        + " (random weights)",
        "parameters": params,
        "trainable_parameters": trainable,
        "quantization": "nf4 + double quant" if args.load_in_4bit else "none",
        "compute_dtype": str(compute_dtype(device)).replace("torch.", ""),
        "build": args.build,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "grad_accum": args.grad_accum,
        "gradient_checkpointing": args.gradient_checkpointing,
        "optimizer": metrics["optimizer"],
        "lora": {"r": args.lora_r, "alpha": args.lora_alpha, "targets": list(DEFAULT_TARGETS)},
        "warmup_steps": args.warmup,
        "timed_steps": len(timed),
        "tokens_per_s": tokens / seconds if seconds else None,
        "seconds_per_step": seconds / len(timed) if timed else None,
        "final_loss": metrics["train_loss"][-1]["loss"],
        "build_seconds": round(build_seconds, 2),
        "quantize_seconds": round(quantize_seconds, 2),
        "model_memory_gb": model_memory,
        "model_footprint_gb": footprint,
        "peak_gpu_memory_gb": metrics.get("peak_gpu_memory_gb"),
        "peak_gpu_reserved_gb": metrics.get("peak_gpu_reserved_gb"),
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor(),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "bitsandbytes": bitsandbytes.__version__,
        },
    }
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="toy dimensions (CPU smoke test)")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-alpha", type=int, default=32)
    parser.add_argument("--optim", default="auto", help="auto, paged_adamw_32bit or adamw")
    parser.add_argument(
        "--4bit", dest="load_in_4bit", action=argparse.BooleanOptionalAction, default=True
    )
    parser.add_argument(
        "--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True
    )
    parser.add_argument("--build", choices=("direct", "reload"), default="direct")
    parser.add_argument("--tmp-dir", default=None, help="where --build reload saves (~15 GB)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be at least 1 and --warmup at least 0")
    if not args.tiny and resolve_device(args.device) != "cuda":
        parser.error("the 7B-shaped model needs a CUDA GPU; use --tiny on a CPU")
    result = measure(args)
    text = json.dumps(result, indent=2)
    if args.output is not None:
        args.output.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
