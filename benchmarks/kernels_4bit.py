"""The 4-bit matrix kernels alone: one Mistral-7B decoder layer's linear layers, per row count.

Why: a decode step of 32 conversations multiplies every weight by 32 rows, a prompt pass by up
to 2,048; which 4-bit kernel is fastest depends on that row count, and the whole-model
benchmarks (``decode_speed``, ``load``) mix it with attention, sampling and scheduling. This
one times only the seven projections of one decoder layer (q, k, v, o, gate, up, down; a
Mistral-7B has 32 such layers), each format quantised by the serving loader's own functions
(:mod:`core.generation.local.quantization`), as one CUDA graph of all seven replayed ``--repeats``
times. It also reports each format's first call at each row count (GemLite tunes its kernels
there) and its output's error against bf16 on the same random input.

    python -m benchmarks.kernels_4bit --json kernels.json
    python -m benchmarks.kernels_4bit --formats nf4,gemlite --rows 1,32

CUDA only: the 4-bit kernels measured here have no CPU build worth timing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from benchmarks.random_models import MISTRAL_7B_DIMS
from core.generation.local.quantization import NF4Kernel, Quantization

FORMATS: dict[str, Quantization] = {
    "bf16": "none",
    "nf4": "nf4",
    "nf4triton": "nf4",
    "int4": "int4",
    "gemlite": "gemlite",
}
"""Format names here and the loader's ``PERSONABOT_QUANTIZATION`` value for each; ``nf4`` is
bitsandbytes' own kernels, ``nf4triton`` the fused one (``PERSONABOT_NF4_KERNEL=triton``)."""
ROWS = (1, 8, 16, 32, 512, 2048)


def layer_shapes(dims: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(name, in_features, out_features) of one decoder layer's projections."""
    hidden, mlp = dims["hidden_size"], dims["intermediate_size"]
    kv = hidden // dims["num_attention_heads"] * dims["num_key_value_heads"]
    return [
        ("q_proj", hidden, hidden),
        ("k_proj", hidden, kv),
        ("v_proj", hidden, kv),
        ("o_proj", hidden, hidden),
        ("gate_proj", hidden, mlp),
        ("up_proj", hidden, mlp),
        ("down_proj", mlp, hidden),
    ]


def build_layer(fmt: str, dims: dict[str, Any], seed: int) -> Any:
    """The projections as a ``ModuleDict``, quantised to ``fmt`` on the GPU."""
    import torch

    from core.generation.local.quantization import quantize

    class Projections(torch.nn.Module):
        """What the quantisers expect of a model: modules to walk and a ``dtype``."""

        dtype = torch.bfloat16

        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.ModuleDict(
                {
                    name: torch.nn.Linear(fan_in, fan_out, bias=False, dtype=torch.bfloat16)
                    for name, fan_in, fan_out in layer_shapes(dims)
                }
            )

    torch.manual_seed(seed)
    with torch.device("cuda"):
        model = Projections()
    kernel: NF4Kernel = "triton" if fmt == "nf4triton" else "bitsandbytes"
    quantize(model, FORMATS[fmt], "cuda", nf4_kernel=kernel)
    return model.layers


def measure(fmt: str, rows: int, layers: Any, dims: dict[str, Any], repeats: int) -> dict[str, Any]:
    import torch

    generator = torch.Generator(device="cuda").manual_seed(rows)
    inputs = {
        size: torch.randn(rows, size, device="cuda", dtype=torch.bfloat16, generator=generator)
        for size in {dims["hidden_size"], dims["intermediate_size"]}
    }

    def once() -> list[Any]:
        return [
            layer(inputs[fan_in])
            for (_, fan_in, _), layer in zip(layer_shapes(dims), layers.values(), strict=True)
        ]

    with torch.inference_mode():
        torch.cuda.synchronize()
        started = time.perf_counter()
        outs = once()  # GemLite tunes its kernels for this row count here
        torch.cuda.synchronize()
        first_s = time.perf_counter() - started
        stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            once()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(repeats):
                once()
        graph.replay()
        torch.cuda.synchronize()
        start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        layer_ms = start.elapsed_time(end) / repeats
    return {
        "format": fmt,
        "rows": rows,
        "layer_ms": round(layer_ms, 4),
        "model_ms": round(layer_ms * dims["num_hidden_layers"], 3),
        "first_call_s": round(first_s, 3),
        "outputs": outs,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.kernels_4bit",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument(
        "--formats",
        default=",".join(FORMATS),
        help=f"comma-separated, of {', '.join(FORMATS)} (default: all)",
    )
    parser.add_argument(
        "--rows",
        default=",".join(map(str, ROWS)),
        help="comma-separated row counts: decode batch sizes, or prompt tokens in a pass",
    )
    parser.add_argument("--repeats", type=int, default=20, help="graph-replayed calls timed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="also write every result here")
    args = parser.parse_args(argv)
    args.formats = [f for f in args.formats.split(",") if f]
    unknown = sorted(set(args.formats) - set(FORMATS))
    if unknown:
        parser.error(f"unknown format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    try:
        args.rows = [int(r) for r in args.rows.split(",") if r]
    except ValueError:
        parser.error("--rows takes comma-separated whole numbers, e.g. 1,8,32")
    if not args.rows or min(args.rows) < 1:
        parser.error("--rows needs at least one row count of 1 or more")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("kernels_4bit needs a CUDA GPU; torch sees none.", file=sys.stderr)
        return 2
    dims = MISTRAL_7B_DIMS
    reference: dict[int, list[Any]] = {}
    results = []
    for fmt in args.formats:
        started = time.perf_counter()
        layers = build_layer(fmt, dims, args.seed)
        quantize_s = time.perf_counter() - started
        for rows in args.rows:
            result = measure(fmt, rows, layers, dims, args.repeats)
            outs = result.pop("outputs")
            if fmt == "bf16":
                reference[rows] = outs
            elif rows in reference:
                errors = [
                    float((o.float() - r.float()).norm() / r.float().norm())
                    for o, r in zip(outs, reference[rows], strict=True)
                ]
                result["relative_error_vs_bf16"] = round(max(errors), 4)
            result["quantize_s"] = round(quantize_s, 1)
            print(json.dumps(result), flush=True)
            results.append(result)
        del layers
        torch.cuda.empty_cache()
    if args.json:
        environment = {
            "gpu": torch.cuda.get_device_name(0),
            "torch": torch.__version__,
        }
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump({"environment": environment, "results": results}, out, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
