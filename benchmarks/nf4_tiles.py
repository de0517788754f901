"""Which tiling of the fused NF4 kernel is fastest, per Mistral-7B projection shape and row count.

Why: :func:`core.generation.nf4_triton.tile_config` picks a tiling (output features per
program, quantisation blocks per loop step, split of the input dimension, pipeline stages,
how nibbles meet inputs) from the product's shape; this sweep is the measurement behind
that choice. Each candidate multiplies random NF4 weights (quantised by the loader's
``quantize_nf4``) by random bf16 rows, is checked against bitsandbytes' own product of the
same weights, and is timed as one CUDA graph of ``--repeats`` calls, the way decode steps
run. Candidates are first swept at ``--full-rows``; at the other row counts only the best
``--keep`` of that sweep and the current choice are timed.

    python -m benchmarks.nf4_tiles --json tiles.json

CUDA only (the kernel's CPU interpreter is for tests, not timings).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from benchmarks.kernels_4bit import layer_shapes
from benchmarks.random_models import MISTRAL_7B_DIMS

BLOCK_N = (32, 64, 128)
GROUPS = (1, 2, 4)
SPLIT_K = (1, 2, 4, 8, 16)
STAGES = (2, 4)
EVEN_ODD = (False, True)


def build_weight(in_features: int, out_features: int, seed: int) -> Any:
    """A bitsandbytes NF4 layer (double-quantised, bf16 compute) of random weights on CUDA."""
    import torch

    from core.generation.quantization import quantize_nf4

    class One(torch.nn.Module):
        dtype = torch.bfloat16

        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(in_features, out_features, bias=False)

    torch.manual_seed(seed)
    with torch.device("cuda"):
        module = One().to(torch.bfloat16)
    quantize_nf4(module, "cuda")
    return module.proj


def time_call(call: Any, repeats: int) -> float:
    """Microseconds per call, replayed as one CUDA graph of ``repeats`` calls."""
    import torch

    stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(repeats):
            call()
    graph.replay()
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
    end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
    start.record()
    graph.replay()
    end.record()
    torch.cuda.synchronize()
    return float(start.elapsed_time(end)) * 1000.0 / repeats


def candidates() -> list[Any]:
    from core.generation.nf4_triton import TileConfig

    return [
        TileConfig(block_n=n, groups=g, split_k=k, num_stages=s, even_odd=e)
        for n, g, k, s, e in itertools.product(BLOCK_N, GROUPS, SPLIT_K, STAGES, EVEN_ODD)
    ]


def describe(config: Any) -> dict[str, Any]:
    return {
        "block_n": config.block_n,
        "groups": config.groups,
        "split_k": config.split_k,
        "num_stages": config.num_stages,
        "even_odd": config.even_odd,
    }


def sweep_shape(
    in_features: int,
    out_features: int,
    rows_list: Sequence[int],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    import torch

    from core.generation.nf4_triton import nf4_matmul, tile_config

    layer = build_weight(in_features, out_features, args.seed)
    weight = layer.weight
    blocksize = int(weight.quant_state.blocksize)
    results = []
    best_at_full: list[Any] = []
    for rows in [args.full_rows, *[r for r in rows_list if r != args.full_rows]]:
        x = torch.randn(rows, in_features, device="cuda", dtype=torch.bfloat16)
        with torch.inference_mode():
            reference = layer(x).float()  # bitsandbytes' own product
            bnb_us = time_call(lambda x=x: layer(x), args.repeats)
            chosen = tile_config(rows, out_features, in_features, blocksize)
            pool = [*(candidates() if rows == args.full_rows else best_at_full), chosen]
            timed = []
            for config in dict.fromkeys(pool):  # in order, without repeats
                if in_features % (blocksize * config.groups):
                    continue
                if config.split_k > in_features // (blocksize * config.groups):
                    continue
                try:
                    out = nf4_matmul(x, weight, None, config).float()
                    error = float((out - reference).norm() / reference.norm())
                    us = time_call(
                        lambda x=x, c=config: nf4_matmul(x, weight, None, c), args.repeats
                    )
                except Exception as exc:  # a tiling Triton cannot build: say so, go on
                    print(json.dumps({"failed": describe(config), "error": repr(exc)[:300]}))
                    continue
                timed.append((us, config, error))
        timed.sort(key=lambda item: item[0])
        if rows == args.full_rows:
            best_at_full = [config for _, config, _ in timed[: args.keep]]
        chosen_us = next(us for us, config, _ in timed if config == chosen)
        result = {
            "in_features": in_features,
            "out_features": out_features,
            "rows": rows,
            "bitsandbytes_us": round(bnb_us, 2),
            "chosen": describe(chosen),
            "chosen_us": round(chosen_us, 2),
            "best": [
                {**describe(config), "us": round(us, 2), "relative_error": round(error, 5)}
                for us, config, error in timed[:5]
            ],
            "max_relative_error": round(max(error for _, _, error in timed), 5),
        }
        print(json.dumps(result), flush=True)
        results.append(result)
    return results


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.nf4_tiles",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--rows", default="1,8,16,32,64", help="comma-separated row counts")
    parser.add_argument("--full-rows", type=int, default=32, help="rows of the full sweep")
    parser.add_argument("--keep", type=int, default=6, help="best candidates kept for others")
    parser.add_argument("--repeats", type=int, default=50, help="calls per timed graph")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="also write every result here")
    args = parser.parse_args(argv)
    try:
        args.rows = [int(r) for r in args.rows.split(",") if r]
    except ValueError:
        parser.error("--rows takes comma-separated whole numbers, e.g. 1,8,32")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("nf4_tiles needs a CUDA GPU; torch sees none.", file=sys.stderr)
        return 2
    started = time.perf_counter()
    shapes = dict.fromkeys((i, o) for _, i, o in layer_shapes(MISTRAL_7B_DIMS))
    results = []
    for in_features, out_features in shapes:
        results.extend(sweep_shape(in_features, out_features, args.rows, args))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(
                {
                    "gpu": torch.cuda.get_device_name(0),
                    "torch": torch.__version__,
                    "seconds": round(time.perf_counter() - started, 1),
                    "results": results,
                },
                handle,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
