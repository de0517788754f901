"""NF4 matrix products for decode steps in one Triton kernel, on bitsandbytes' own weights.

Why: for more than one row, bitsandbytes dequantises every NF4 weight to bf16 in a kernel of
its own and then runs a bf16 matrix product, so a decode step of 32 rows reads the packed
weights, writes them out again in bf16 and reads that back: at Mistral-7B's shapes on an
H200 its linear layers take 11.4 ms a step against 4.5 ms for bf16 weights, which caps NF4
serving under load (docs/benchmarks.md). The kernel here reads the packed 4-bit codes and
their double-quantised block scales once, looks the codes up in the NF4 table, scales them
and multiplies in registers, so a step reads each weight's half byte and nothing more.

It keeps bitsandbytes' storage format (the same ``Params4bit`` data and ``QuantState``), so
memory use, adapters merged at load and pre-quantised checkpoints stay as they are; GemLite
and torchao's tinygemm, the libraries tried first, need formats of their own and did not
beat bitsandbytes at 32 rows. Layers switch kernels per call by row count
(:data:`FUSED_MAX_ROWS`): prompt passes of hundreds of rows keep bitsandbytes' path, where
one bf16 product of many rows pays for the dequantisation.

The kernel also runs in Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors, fp16 or
fp32: numpy has no bf16), which is how the tests check it against bitsandbytes on a CPU.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from typing import Any

FUSED_MAX_ROWS = 64
"""Rows up to which a layer runs this kernel; more rows (prompt passes) go to bitsandbytes."""


@dataclass(frozen=True)
class TileConfig:
    """How one product is cut into Triton programs.

    ``block_n`` output features per program, ``groups`` quantisation blocks of the input
    dimension per loop step, ``split_k`` programs sharing one output tile's input dimension
    (their partial sums are added by a second small kernel), plus Triton's warps and
    pipeline stages; ``even_odd`` multiplies the high and low nibbles by the even and odd
    inputs separately instead of interleaving them back into input order first.
    """

    block_n: int
    groups: int
    split_k: int
    num_warps: int = 4
    num_stages: int = 3
    even_odd: bool = False


def triton_available() -> bool:
    """Whether Triton is installed (it comes with CUDA builds of torch)."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (Triton's own switch)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def tile_config(rows: int, out_features: int, in_features: int, blocksize: int) -> TileConfig:
    """The tiling for a product of ``rows`` x ``in_features`` by an NF4 weight.

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
    while programs * split_k < 198 and split_k * 2 <= steps and split_k < 16:
        split_k *= 2
    del rows  # one tiling for every row count up to FUSED_MAX_ROWS, until measured otherwise
    return TileConfig(block_n=block_n, groups=groups, split_k=split_k)


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
        EVEN_ODD: tl.constexpr,
    ) -> None:
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        pid_m = tl.program_id(2)
        STEP: tl.constexpr = GROUPS * QBLOCK
        row = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        col = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = row < rows
        col_ok = col < out_features
        byte = tl.arange(0, STEP // 2)
        k = tl.arange(0, STEP)
        group = tl.arange(0, GROUPS)
        blocks_per_row = in_features // QBLOCK
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for step in range(pid_k, in_features // STEP, split_k):
            # Two codes a byte, the high nibble first, in the row-major order of the
            # (out_features, in_features) weight: bitsandbytes' packing.
            packed = tl.load(
                w_ptr + col[:, None] * (in_features // 2) + step * (STEP // 2) + byte[None, :],
                mask=col_ok[:, None],
                other=0,
            )
            high = tl.load(code_ptr + (packed >> 4).to(tl.int32))  # (BLOCK_N, STEP // 2)
            low = tl.load(code_ptr + (packed & 15).to(tl.int32))
            block = col[:, None] * blocks_per_row + step * GROUPS + group[None, :]
            if NESTED:  # the block scales are themselves 8-bit, in blocks of NESTED_BLOCK
                quantised = tl.load(absmax_ptr + block, mask=col_ok[:, None], other=0)
                scale = tl.load(nested_code_ptr + quantised.to(tl.int32)) * tl.load(
                    nested_absmax_ptr + block // NESTED_BLOCK, mask=col_ok[:, None]
                ) + tl.load(
                    nested_offset_ptr
                )  # bitsandbytes' dequantize_blockwise, then its offset
            else:
                scale = tl.load(absmax_ptr + block, mask=col_ok[:, None], other=0.0)
            x_row = x_ptr + row[:, None] * stride_x + step * STEP
            if EVEN_ODD:  # high nibbles meet the even inputs, low ones the odd: no shuffle
                half: tl.constexpr = QBLOCK // 2
                high = tl.reshape(
                    tl.reshape(high, (BLOCK_N, GROUPS, half)) * scale[:, :, None],
                    (BLOCK_N, STEP // 2),
                )
                low = tl.reshape(
                    tl.reshape(low, (BLOCK_N, GROUPS, half)) * scale[:, :, None],
                    (BLOCK_N, STEP // 2),
                )
                x_even = tl.load(x_row + 2 * byte[None, :], mask=row_ok[:, None], other=0.0)
                x_odd = tl.load(x_row + 2 * byte[None, :] + 1, mask=row_ok[:, None], other=0.0)
                acc += tl.dot(x_even, tl.trans(high.to(x_even.dtype)))
                acc += tl.dot(x_odd, tl.trans(low.to(x_odd.dtype)))
            else:  # interleave back into input order, then one product
                weight = tl.reshape(
                    tl.reshape(tl.interleave(high, low), (BLOCK_N, GROUPS, QBLOCK))
                    * scale[:, :, None],
                    (BLOCK_N, STEP),
                )
                x = tl.load(x_row + k[None, :], mask=row_ok[:, None], other=0.0)
                acc += tl.dot(x, tl.trans(weight.to(x.dtype)))
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
    if state is None or getattr(state, "packing_format_for_cpu", False):
        return False  # bitsandbytes repacks weights for AVX-512 CPUs in a layout of its own
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
        EVEN_ODD=config.even_odd,
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
    if not (x.is_cuda or interpreting()) or layer.training:
        return None
    if x.numel() // max(1, x.shape[-1]) > FUSED_MAX_ROWS or x.requires_grad:
        return None  # prompt passes, and training (the kernel has no backward pass)
    if not supports(layer.weight):
        return None
    compute = layer.compute_dtype or x.dtype
    bias = layer.bias
    if bias is not None and bias.dtype != compute:
        bias = bias.to(compute)
    return nf4_matmul(x.to(compute), layer.weight, bias).to(x.dtype)


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
