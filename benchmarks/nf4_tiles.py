"""Which tiling of the fused NF4 kernel is fastest, per Mistral-7B projection shape and row count.

Why: the fused kernel's speed depends on its tiling (output features per program,
quantisation blocks per loop step, split of the input dimension, warps, pipeline stages),
and the best one differs by shape, row count and GPU; this sweep measures them
and, with ``--write-table``, writes the fastest per shape and row bucket (or "bitsandbytes"
where that is faster) into the tuned table that
:func:`core.generation.local.nf4_triton.choose_tiling` reads. Each candidate multiplies random
NF4 weights (quantised by the loader's ``quantize_nf4``) by random bf16 rows, is checked
against bitsandbytes' own product of the same weights, and is timed as one CUDA graph of
``--repeats`` calls, the way decode steps run. Candidates are first swept at
``--full-rows``; at the other row counts only the best ``--keep`` of that sweep and the
current choice are timed.

    python -m benchmarks.nf4_tiles --json tiles.json \\
        --write-table core/generation/local/nf4_tiles.json

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

BLOCK_N = (64, 128, 256)
GROUPS = (1, 2, 4)
SPLIT_K = (1, 2, 4, 8, 16)
WARPS = (4, 8)
STAGES = (2, 3)
"""32 features a program lost at every shape and row count of the first sweep
(docs/benchmarks-log.md#2026-12-03-fused-nf4-kernel-h200), so it is left out."""


def build_weight(in_features: int, out_features: int, seed: int) -> Any:
    """A bitsandbytes NF4 layer (double-quantised, bf16 compute) of random weights on CUDA."""
    import torch

    from core.generation.local.quantization import quantize_nf4

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
    from core.generation.local.nf4_triton import TileConfig

    return [
        TileConfig(block_n=n, groups=g, split_k=k, num_warps=w, num_stages=st)
        for n, g, k, w, st in itertools.product(BLOCK_N, GROUPS, SPLIT_K, WARPS, STAGES)
    ]


def sweep_shape(
    in_features: int,
    out_features: int,
    rows_list: Sequence[int],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    import torch

    from core.generation.local.nf4_triton import choose_tiling, gpu_name, nf4_matmul

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
            chosen = choose_tiling(rows, out_features, in_features, blocksize, gpu_name(0))
            pool = [*(candidates() if rows == args.full_rows else best_at_full)]
            if chosen is not None:
                pool.append(chosen)
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
                    print(json.dumps({"failed": config.as_dict(), "error": repr(exc)[:300]}))
                    continue
                timed.append((us, config, error))
        timed.sort(key=lambda item: item[0])
        if rows == args.full_rows:
            best_at_full = [config for _, config, _ in timed[: args.keep]]
        chosen_us = next((us for us, config, _ in timed if config == chosen), bnb_us)
        fastest_us, fastest, _ = timed[0]
        result = {
            "in_features": in_features,
            "out_features": out_features,
            "blocksize": blocksize,
            "rows": rows,
            "bitsandbytes_us": round(bnb_us, 2),
            "chosen": None if chosen is None else chosen.as_dict(),
            "chosen_us": round(chosen_us, 2),
            "fastest": fastest.as_dict() if fastest_us < bnb_us else None,
            "best": [
                {**config.as_dict(), "us": round(us, 2), "relative_error": round(error, 5)}
                for us, config, error in timed[:5]
            ],
            "max_relative_error": round(max(error for _, _, error in timed), 5),
        }
        print(json.dumps(result), flush=True)
        results.append(result)
    return results


def write_table(path: str, gpu: str, results: Sequence[dict[str, Any]], command: str) -> None:
    """Put this GPU's fastest tilings (or null: bitsandbytes) into the tuned table at
    ``path``, keeping the other GPUs' entries: the file the serving path reads."""
    from core.generation.local.nf4_triton import ROW_BUCKETS

    try:
        with open(path, encoding="utf-8") as handle:
            table = json.load(handle)
    except FileNotFoundError:
        table = {}
    gpus = dict(table.get("gpus", {}))
    gpus[gpu] = [
        {
            "out_features": r["out_features"],
            "in_features": r["in_features"],
            "blocksize": r["blocksize"],
            "rows": r["rows"],
            "config": r["fastest"],
            "us": r["best"][0]["us"],
            "bitsandbytes_us": r["bitsandbytes_us"],
        }
        for r in results
        if r["rows"] in ROW_BUCKETS
    ]
    table = {
        "about": "Fastest fused-NF4 tilings per GPU, shape and row bucket (config null: "
        "bitsandbytes was faster), written by: " + command,
        "gpus": gpus,
    }
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(table, handle, indent=1)
        handle.write("\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.nf4_tiles",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument(
        "--rows", default="1,16,32,64", help="comma-separated row counts (the table's buckets)"
    )
    parser.add_argument("--full-rows", type=int, default=32, help="rows of the full sweep")
    parser.add_argument("--keep", type=int, default=6, help="best candidates kept for others")
    parser.add_argument("--repeats", type=int, default=50, help="calls per timed graph")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="also write every result here")
    parser.add_argument(
        "--write-table",
        metavar="PATH",
        help="write this GPU's fastest tilings into the tuned table at PATH "
        "(core/generation/local/nf4_tiles.json is the one the serving path reads)",
    )
    args = parser.parse_args(argv)
    try:
        args.rows = [int(r) for r in args.rows.split(",") if r]
    except ValueError:
        parser.error("--rows takes comma-separated whole numbers, e.g. 1,8,32")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from core.generation.local.nf4_triton import gpu_name

    if not torch.cuda.is_available():
        print("nf4_tiles needs a CUDA GPU; torch sees none.", file=sys.stderr)
        return 2
    started = time.perf_counter()
    shapes = dict.fromkeys((i, o) for _, i, o in layer_shapes(MISTRAL_7B_DIMS))
    results = []
    for in_features, out_features in shapes:
        results.extend(sweep_shape(in_features, out_features, args.rows, args))
    gpu = gpu_name(0)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(
                {
                    "gpu": gpu,
                    "torch": torch.__version__,
                    "seconds": round(time.perf_counter() - started, 1),
                    "results": results,
                },
                handle,
                indent=1,
            )
    if args.write_table:
        command = "python -m benchmarks.nf4_tiles " + " ".join(
            sys.argv[1:] if argv is None else argv
        )
        write_table(args.write_table, gpu, results, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
