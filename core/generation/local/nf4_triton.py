"""NF4 matrix products for decode steps in one Triton kernel, on bitsandbytes' own weights.

Why: for more than one row, bitsandbytes dequantises every NF4 weight to bf16 in a kernel of
its own and then runs a bf16 matrix product, so a decode step of 32 rows reads the packed
weights, writes them out again in bf16 and reads that back, which makes its linear layers
far slower than bf16 weights' and caps NF4 serving under load (see
docs/benchmarks.md#decode-speed-gpu). The kernel here reads the packed 4-bit codes and
their double-quantised block scales once, looks the codes up in the NF4 table, scales them
and multiplies in registers, so a step reads each weight's half byte and nothing more.

It keeps bitsandbytes' storage format (the same ``Params4bit`` data and ``QuantState``), so
memory use, adapters merged at load and pre-quantised checkpoints stay as they are; GemLite
and torchao's tinygemm, the libraries tried first, need formats of their own and did not
beat bitsandbytes at 32 rows. Layers switch kernels per call by row count
(:data:`FUSED_MAX_ROWS`): prompt passes of hundreds of rows keep bitsandbytes' path, where
one bf16 product of many rows pays for the dequantisation. Decode steps of many rows run
faster here than in bitsandbytes; at one row bitsandbytes' own fused kernel is faster and
keeps the call (:func:`choose_tiling` reads which from the measured table,
``nf4_tiles.json``; figures in docs/benchmarks.md#decode-speed-gpu).

The kernel also runs in Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors, fp16 or
fp32: numpy has no bf16), which is how the tests check it against bitsandbytes on a CPU.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.generation.local.quantization import packed_for_cpu

FUSED_MAX_ROWS = 64
"""Rows up to which a layer may run this kernel; more rows (prompt passes) go to bitsandbytes."""

ROW_BUCKETS = (1, 16, 32, 64)
"""Row counts a tuned table is measured at; a call takes the smallest bucket of at least its
rows (the kernel pads rows to 16, 32 or 64, so 2 to 16 rows cost the same)."""

TUNED_TABLE = "nf4_tiles.json"
"""Tilings measured per GPU model by ``benchmarks/nf4_tiles.py --write-table``, shipped next
to this module."""


@dataclass(frozen=True)
class TileConfig:
    """How one product is cut into Triton programs.

    ``block_n`` output features per program, ``groups`` quantisation blocks of the input
    dimension per loop step, ``split_k`` programs sharing one output tile's input dimension
    (their partial sums are added by a second small kernel), plus Triton's warps and
    pipeline stages.
    """

    block_n: int
    groups: int
    split_k: int
    num_warps: int = 4
    num_stages: int = 2

    def as_dict(self) -> dict[str, Any]:
        return {
            "block_n": self.block_n,
            "groups": self.groups,
            "split_k": self.split_k,
            "num_warps": self.num_warps,
            "num_stages": self.num_stages,
        }


def triton_available() -> bool:
    """Whether Triton is installed (it comes with CUDA builds of torch)."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (Triton's own switch)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def tile_config(rows: int, out_features: int, in_features: int, blocksize: int) -> TileConfig:
    """The tiling for a GPU without a tuned table: a rule of thumb, not a measurement.

    The goal is enough programs to keep every multiprocessor reading (an H200 has 132) with
    each program reading long runs of bytes: split the input dimension only when the output
    features alone give too few programs, as the key and value projections (1,024 features
    at 7B) do.
    """
    block_n = 64 if out_features >= 4096 else 32
    groups = 2
    while groups > 1 and in_features % (blocksize * groups):
        groups //= 2
    steps = in_features // (blocksize * groups)
    programs = -(-out_features // block_n)
    split_k = 1
    while programs * split_k < 264 and split_k * 2 <= steps and split_k < 16:
        split_k *= 2
    del rows  # one tiling for every row count up to FUSED_MAX_ROWS
    return TileConfig(block_n=block_n, groups=groups, split_k=split_k)


def row_bucket(rows: int) -> int:
    """The tuned table's bucket for ``rows`` (at most :data:`FUSED_MAX_ROWS`)."""
    return next(bucket for bucket in ROW_BUCKETS if rows <= bucket)


TableKey = tuple[int, int, int, int]
"""(out_features, in_features, blocksize, row bucket) of one measured product."""

TunedTables = dict[str, dict[TableKey, TileConfig | None]]
"""GPU name -> measured products -> fastest tiling, None where bitsandbytes was faster."""


def index_tables(data: dict[str, Any]) -> TunedTables:
    """The JSON a tile sweep writes, keyed for lookups (and checked: a field that is not a
    :class:`TileConfig`'s fails here, when the file is read, not at a decode step).

    Each of its entries is ``{"out_features", "in_features", "blocksize", "rows",
    "config"}`` with ``config`` a :class:`TileConfig`'s fields, or null.
    """
    return {
        str(gpu): {
            (e["out_features"], e["in_features"], e["blocksize"], e["rows"]): (
                None if e["config"] is None else TileConfig(**e["config"])
            )
            for e in entries
        }
        for gpu, entries in data.get("gpus", {}).items()
    }


def read_tuned_tables(path: Path) -> TunedTables:
    """The tuned tables in the file at ``path`` (none if there is no file)."""
    if not path.exists():
        return {}
    return index_tables(json.loads(path.read_text(encoding="utf-8")))


@functools.cache
def shipped_tables() -> TunedTables:
    """The tuned table shipped next to this module, read once."""
    return read_tuned_tables(Path(__file__).with_name(TUNED_TABLE))


def choose_tiling(
    rows: int,
    out_features: int,
    in_features: int,
    blocksize: int,
    gpu: str | None,
    tables: TunedTables | None = None,
) -> TileConfig | None:
    """The tiling for this product on this GPU, or None where bitsandbytes' path is faster.

    A GPU model with a tuned table (``tables``, by default the shipped one) gets what was
    measured fastest at the row bucket of ``rows``, which may be "bitsandbytes" (its one-row
    kernel, for one, may win); shapes or GPUs not measured get :func:`tile_config`'s rule
    of thumb for every call of few rows.
    """
    if rows > FUSED_MAX_ROWS:
        return None
    measured = (shipped_tables() if tables is None else tables).get(gpu or "", {})
    key = (out_features, in_features, blocksize, row_bucket(rows))
    if key in measured:
        return measured[key]
    return tile_config(rows, out_features, in_features, blocksize)


@functools.cache
def gpu_name(index: int) -> str:
    """The CUDA device's model name, as the tuned table keys it (asked once per device)."""
    import torch

    return str(torch.cuda.get_device_name(index))


@functools.cache
def _kernels() -> tuple[Any, Any]:
    """Compile-on-first-use Triton kernels (created lazily: importing Triton is slow, and
    ``TRITON_INTERPRET`` is read when a kernel is defined)."""
    import triton
    import triton.language as tl

    @triton.jit  # type: ignore[untyped-decorator]
    def nf4_matmul_kernel(  # type: ignore[no-untyped-def]
        x_ptr,
        w_ptr,
        absmax_ptr,
        nested_code_ptr,
        nested_absmax_ptr,
        nested_offset_ptr,
        code_ptr,
        bias_ptr,
        out_ptr,
        rows,
        out_features,
        in_features,
        packed_row,
        stride_x,
        stride_out,
        split_k,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        GROUPS: tl.constexpr,
        QBLOCK: tl.constexpr,
        NESTED: tl.constexpr,
        NESTED_BLOCK: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        PARTIAL: tl.constexpr,
    ) -> None:
        # Each inner step takes one quantisation block of the input dimension, so its scale
        # is one number per output feature and nothing needs reshaping: reshapes and
        # interleaves of the weight tile cost an earlier version all its registers (spills,
        # far slower than bitsandbytes). Two codes a byte, the high nibble first, in the
        # row-major order of the (out_features, in_features) weight (bitsandbytes' packing):
        # the high nibbles meet the even inputs and the low ones the odd, in two products.
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        pid_m = tl.program_id(2)
        HALF: tl.constexpr = QBLOCK // 2
        row = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        col = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = row < rows
        col_ok = col < out_features
        byte = tl.arange(0, HALF)
        blocks_per_row = in_features // QBLOCK
        w_tile = w_ptr + col[None, :].to(tl.int64) * packed_row + byte[:, None]
        x_tile = x_ptr + row[:, None] * stride_x + tl.arange(0, QBLOCK)[None, :]
        scale_at = col * blocks_per_row
        if NESTED:
            offset = tl.load(nested_offset_ptr)
        codes = tl.load(code_ptr + tl.arange(0, 16))
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for step in range(pid_k, blocks_per_row // GROUPS, split_k):
            for group in tl.static_range(GROUPS):
                block = step * GROUPS + group
                packed = tl.load(w_tile + block * HALF, mask=col_ok[None, :], other=0)
                if NESTED:  # 8-bit block scales in blocks of their own: dequantize_blockwise
                    quantised = tl.load(absmax_ptr + scale_at + block, mask=col_ok, other=0)
                    nested_at = (scale_at + block) // NESTED_BLOCK
                    scale = (
                        tl.load(nested_code_ptr + quantised.to(tl.int32))
                        * tl.load(nested_absmax_ptr + nested_at, mask=col_ok)
                        + offset
                    )
                else:
                    scale = tl.load(absmax_ptr + scale_at + block, mask=col_ok, other=0.0)
                # The 16 NF4 values scaled once for each feature, then looked up in
                # registers (tl.gather: warp shuffles); one load a code from the table in
                # memory measured slower at every shape (docs/benchmarks.md#decode-speed-gpu).
                table = (codes[:, None] * scale[None, :]).to(x_ptr.dtype.element_ty)
                high = tl.gather(table, (packed >> 4).to(tl.int32), 0)
                low = tl.gather(table, (packed & 15).to(tl.int32), 0)
                x = tl.load(x_tile + block * QBLOCK, mask=row_ok[:, None], other=0.0)
                x_even, x_odd = tl.split(tl.reshape(x, (BLOCK_M, HALF, 2)))
                acc += tl.dot(x_even, high.to(x_even.dtype))
                acc += tl.dot(x_odd, low.to(x_odd.dtype))
        out_mask = row_ok[:, None] & col_ok[None, :]
        if PARTIAL:  # this program's share of the input dimension, summed by reduce_kernel
            target = out_ptr + pid_k * rows * out_features
            tl.store(target + row[:, None] * out_features + col[None, :], acc, mask=out_mask)
        else:
            if HAS_BIAS:
                acc += tl.load(bias_ptr + col, mask=col_ok, other=0.0).to(tl.float32)[None, :]
            tl.store(
                out_ptr + row[:, None] * stride_out + col[None, :],
                acc.to(out_ptr.dtype.element_ty),
                mask=out_mask,
            )

    @triton.jit  # type: ignore[untyped-decorator]
    def reduce_kernel(  # type: ignore[no-untyped-def]
        partial_ptr,
        bias_ptr,
        out_ptr,
        size,
        out_features,
        SPLIT_K: tl.constexpr,
        HAS_BIAS: tl.constexpr,
        BLOCK: tl.constexpr,
    ) -> None:
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        ok = offsets < size
        total = tl.zeros((BLOCK,), dtype=tl.float32)
        for part in tl.static_range(SPLIT_K):  # a fixed order: the same sum on every call
            total += tl.load(partial_ptr + part * size + offsets, mask=ok, other=0.0)
        if HAS_BIAS:
            total += tl.load(bias_ptr + offsets % out_features, mask=ok, other=0.0).to(tl.float32)
        tl.store(out_ptr + offsets, total.to(out_ptr.dtype.element_ty), mask=ok)

    return nf4_matmul_kernel, reduce_kernel


def supports(weight: Any) -> bool:
    """Whether the kernel reads this ``Params4bit``'s layout (bitsandbytes' usual one)."""
    state = getattr(weight, "quant_state", None)
    if state is None or packed_for_cpu(weight):
        return False  # bitsandbytes' AVX512-BF16 CPU layout: its own kernel reads it
    if weight.dtype.itemsize != 1 or len(state.shape) != 2:
        return False
    blocksize = int(state.blocksize)
    return blocksize >= 32 and int(state.shape[1]) % blocksize == 0


def nf4_matmul(x: Any, weight: Any, bias: Any = None, config: TileConfig | None = None) -> Any:
    """``x @ dequantize(weight).T (+ bias)`` for a bitsandbytes NF4 (or FP4) ``weight``.

    ``x`` has the weight's input features last and any leading shape; the result has
    ``x``'s dtype. The block scales' dequantisation, the table lookup and the product all
    happen inside the kernel: nothing of the size of the weight is written.
    """
    import torch

    state = weight.quant_state
    out_features, in_features = (int(size) for size in state.shape)
    if x.shape[-1] != in_features:
        raise ValueError(f"input has {x.shape[-1]} features, the weight takes {in_features}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, in_features)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    rows = x2.shape[0]
    blocksize = int(state.blocksize)
    config = config or tile_config(rows, out_features, in_features, blocksize)
    matmul_kernel, reduce_kernel = _kernels()
    out = torch.empty((rows, out_features), dtype=x.dtype, device=x.device)
    nested = bool(state.nested)
    code = state.code.to(device=x.device, dtype=torch.float32)
    absmax = state.absmax
    nested_code = state.state2.code if nested else code
    nested_absmax = state.state2.absmax if nested else code
    nested_block = int(state.state2.blocksize) if nested else 1
    # A tensor, read inside the kernel: float() would wait for the GPU, which a CUDA graph
    # capture forbids.
    if nested and not torch.is_tensor(state.offset):
        state.offset = torch.tensor(float(state.offset), device=x.device)
    offset = state.offset if nested else code
    block_m = 16 if rows <= 16 else 32 if rows <= 32 else 64
    partial = config.split_k > 1
    target = (
        torch.empty((config.split_k, rows, out_features), dtype=torch.float32, device=x.device)
        if partial
        else out
    )
    grid = (
        -(-out_features // config.block_n),
        config.split_k,
        -(-rows // block_m),
    )
    has_bias = bias is not None
    bias_arg = bias if has_bias else out
    matmul_kernel[grid](
        x2,
        weight.data,
        absmax,
        nested_code,
        nested_absmax,
        offset,
        code,
        bias_arg,
        target,
        rows,
        out_features,
        in_features,
        in_features // 2,  # an argument of its own, so Triton sees its divisibility
        x2.stride(0),
        out.stride(0),
        config.split_k,
        BLOCK_M=block_m,
        BLOCK_N=config.block_n,
        GROUPS=config.groups,
        QBLOCK=blocksize,
        NESTED=nested,
        NESTED_BLOCK=nested_block,
        HAS_BIAS=has_bias,
        PARTIAL=partial,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    if partial:
        size = rows * out_features
        block = 1024
        reduce_kernel[(-(-size // block),)](
            target,
            bias_arg,
            out,
            size,
            out_features,
            SPLIT_K=config.split_k,
            HAS_BIAS=has_bias,
            BLOCK=block,
        )
    return out.reshape(*lead, out_features)


def _fused_forward(layer: Any, x: Any) -> Any | None:
    """The fused product for this call, or None where bitsandbytes' own path should run."""
    if not (x.is_cuda or interpreting()) or x.requires_grad:
        return None  # the kernel has no backward pass: training keeps bitsandbytes
    rows = x.numel() // max(1, x.shape[-1])
    if rows > FUSED_MAX_ROWS or not supports(layer.weight):
        return None
    state = layer.weight.quant_state
    out_features, in_features = (int(size) for size in state.shape)
    gpu = gpu_name(x.device.index or 0) if x.is_cuda else None
    config = choose_tiling(rows, out_features, in_features, int(state.blocksize), gpu)
    if config is None:
        return None
    compute = layer.compute_dtype or x.dtype
    bias = layer.bias
    if bias is not None and bias.dtype != compute:
        bias = bias.to(compute)
    return nf4_matmul(x.to(compute), layer.weight, bias, config).to(x.dtype)


def use_fused_nf4(model: Any) -> int:
    """Let every bitsandbytes 4-bit layer of ``model`` run :func:`nf4_matmul` for few rows.

    Each ``Linear4bit`` becomes a :class:`FusedNF4Linear` in place (same parameters, same
    state dict, still a ``Linear4bit`` for peft and transformers). Returns how many layers
    changed; 0 where Triton is missing, and nothing changes then.
    """
    if not triton_available():
        return 0
    from bitsandbytes.nn.modules import Linear4bit

    changed = 0
    for module in model.modules():
        if isinstance(module, Linear4bit) and not isinstance(module, FusedNF4Linear):
            module.__class__ = FusedNF4Linear
            changed += 1
    return changed


def _fused_class() -> Any:
    from bitsandbytes.nn.modules import Linear4bit

    class FusedNF4Linear(Linear4bit):
        """A ``Linear4bit`` whose calls of few rows run the fused kernel of this module."""

        def forward(self, x: Any) -> Any:
            fused = _fused_forward(self, x)
            return super().forward(x) if fused is None else fused

    return FusedNF4Linear


FusedNF4Linear = _fused_class()
