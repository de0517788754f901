"""bitsandbytes NF4 layers for the tests, and bitsandbytes' two CPU layouts of their weights.

On a CPU with AVX512-BF16, bitsandbytes repacks a layer's weight into a layout of its own at
the layer's first forward pass without gradients
(core.generation.local.quantization.packed_for_cpu).
Its kernel for that layout needs the CPU feature, but the repacking is plain torch:
:func:`repack_as_on_an_avx512_bf16_cpu` applies it on any machine, so a machine without the
feature still checks that our code reads either layout correctly.
"""

from __future__ import annotations

from typing import Any

import torch
from bitsandbytes.functional import _convert_weight_packed_for_cpu, dequantize_4bit, has_avx512bf16
from bitsandbytes.nn.modules import Linear4bit, Params4bit


def nf4_layer(
    in_features: int,
    out_features: int,
    *,
    nested: bool = True,
    bias: bool = False,
    dtype: Any = torch.float32,
    seed: int = 0,
) -> Any:
    """A bitsandbytes NF4 layer of random weights, quantised on the CPU as the loader does."""
    torch.manual_seed(seed)
    layer = Linear4bit(  # type: ignore[no-untyped-call]
        in_features,
        out_features,
        bias=bias,
        compute_dtype=dtype,
        compress_statistics=nested,
        quant_type="nf4",
        device="meta",
    )
    weight: Any = Params4bit(
        torch.randn(out_features, in_features),
        requires_grad=False,
        compress_statistics=nested,
        quant_type="nf4",
        module=layer,
    )
    layer.weight = weight.to("cpu")
    if bias:
        layer.bias = torch.nn.Parameter(torch.randn(out_features).to(dtype), requires_grad=False)
    return layer.eval()


def dense_weight(layer: Any) -> Any:
    """bitsandbytes' dequantisation of the layer's weight in fp32 (the usual layout only)."""
    return dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()


def repack_as_on_an_avx512_bf16_cpu(layer: Any) -> None:
    """What bitsandbytes' first eval-mode forward pass does to the weight on such a CPU."""
    weight = layer.weight
    weight.data, weight.quant_state = _convert_weight_packed_for_cpu(
        weight.data, weight.quant_state
    )
    layer.quant_state = weight.quant_state


def cpu_has_avx512_bf16() -> bool:
    """bitsandbytes' own test of this CPU, the one its layers decide by."""
    return bool(has_avx512bf16())  # type: ignore[no-untyped-call]
