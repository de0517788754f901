"""The fused NF4 kernel against bitsandbytes' own dequantisation, in Triton's CPU interpreter.

On a GPU the kernel is compiled; here the same kernel source runs in Triton's interpreter
(``TRITON_INTERPRET=1``, which tests/conftest.py sets where there is no GPU) on CPU tensors,
in fp32 and fp16 (numpy has no bf16). On a GPU machine this module is skipped: there the
kernel is checked compiled, in bf16, by benchmarks/nf4_tiles.py (every tiling against
bitsandbytes) and by the CUDA tests of tests/test_slot_batch.py. The reference
is bitsandbytes' ``dequantize_4bit`` of the very same packed weights, so a wrong nibble
order, block-scale index, nested (double-quantised) scale or split-K sum shows up as a
wrong product. Speed is measured on the GPU (benchmarks/nf4_tiles.py, kernels_4bit.py).
"""

from __future__ import annotations

import os
from typing import Any

import pytest

pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton compiles for the GPU here; see the docstring", allow_module_level=True)

import torch
from bitsandbytes.nn.modules import Linear4bit

from benchmarks.decode_speed import TINY_DIMS
from benchmarks.random_models import random_mistral
from core.generation.local import nf4_triton
from core.generation.local.nf4_triton import (
    FUSED_MAX_ROWS,
    ROW_BUCKETS,
    FusedNF4Linear,
    TileConfig,
    choose_tiling,
    index_tables,
    nf4_matmul,
    shipped_tables,
    tile_config,
    use_fused_nf4,
)
from core.generation.local.quantization import (
    keep_standard_nf4_layout,
    packed_for_cpu,
    quantize_nf4,
)
from tests.nf4_layers import (
    cpu_has_avx512_bf16,
    dense_weight,
    nf4_layer,
    repack_as_on_an_avx512_bf16_cpu,
)


def reference(layer: Any, x: Any, weight: Any = None) -> Any:
    """bitsandbytes' dequantised weight (or ``weight``, taken earlier) times ``x`` in fp32."""
    weight = dense_weight(layer) if weight is None else weight
    out = x.float() @ weight.T
    return out if layer.bias is None else out + layer.bias.float()


@pytest.mark.parametrize(
    ("in_features", "out_features", "rows", "nested", "bias", "config"),
    [
        (256, 64, 3, True, False, None),  # the chosen tiling, double-quantised scales
        (512, 96, 17, False, True, None),  # plain fp32 scales, a bias, two row tiles of 16
        (256, 64, 5, True, False, TileConfig(block_n=32, groups=2, split_k=2)),
        (192, 40, 2, True, True, TileConfig(block_n=32, groups=1, split_k=3)),  # ragged
        (256, 64, 40, True, False, TileConfig(block_n=64, groups=4, split_k=1)),
        (512, 48, 1, True, True, TileConfig(block_n=32, groups=2, split_k=4)),
        (192, 40, 33, False, True, TileConfig(block_n=32, groups=1, split_k=1)),  # 3 row tiles
    ],
)
def test_the_fused_product_matches_bitsandbytes_dequantised_weights(
    in_features: int,
    out_features: int,
    rows: int,
    nested: bool,
    bias: bool,
    config: TileConfig | None,
) -> None:
    layer = nf4_layer(in_features, out_features, nested=nested, bias=bias)
    x = torch.randn(rows, in_features)
    out = nf4_matmul(x, layer.weight, layer.bias, config)
    assert out.shape == (rows, out_features) and out.dtype == torch.float32
    torch.testing.assert_close(out, reference(layer, x), rtol=1e-4, atol=1e-4)


def test_fp16_inputs_keep_their_dtype_and_leading_shape() -> None:
    layer = nf4_layer(256, 64, dtype=torch.float16)
    x = torch.randn(2, 3, 256).to(torch.float16)
    out = nf4_matmul(x, layer.weight)
    assert out.shape == (2, 3, 64) and out.dtype == torch.float16
    expected = reference(layer, x.reshape(6, 256)).reshape(2, 3, 64)
    torch.testing.assert_close(out.float(), expected, rtol=2e-3, atol=2e-2)


def test_a_mismatched_input_width_is_refused() -> None:
    layer = nf4_layer(256, 64)
    with pytest.raises(ValueError, match="input has 128 features, the weight takes 256"):
        nf4_matmul(torch.randn(2, 128), layer.weight)


BF16_RTOL = 1.6e-2
"""bitsandbytes' AVX512-BF16 CPU kernel computes in bf16 (8 significant bits) whatever the
layer's compute dtype: its products are checked to bf16's precision."""


@pytest.mark.parametrize("cpu_path", ["usual", "avx512-bf16"])
def test_layers_take_the_fused_path_for_few_rows_only(cpu_path: str) -> None:
    """Few rows take the fused kernel, many take bitsandbytes, on either of its CPU paths.

    The path is forced: the usual one on any machine, the AVX512-BF16 one (whose kernel needs
    the instructions) where the CPU has them.
    """
    packing = cpu_path == "avx512-bf16"
    if packing and not cpu_has_avx512_bf16():
        pytest.skip("bitsandbytes' AVX512-BF16 kernel needs a CPU with AVX512-BF16")
    layer = nf4_layer(256, 64, bias=True)
    layer.support_avx512bf16_for_cpu = packing
    weight = dense_weight(layer)  # before bitsandbytes' first pass may repack the weight
    assert use_fused_nf4(torch.nn.Sequential(layer)) == 1
    assert isinstance(layer, FusedNF4Linear) and isinstance(layer, Linear4bit)
    few = torch.randn(4, 256)
    fused = nf4_triton._fused_forward(layer, few)
    assert fused is not None
    torch.testing.assert_close(fused, reference(layer, few, weight), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(layer(few), fused)
    many = torch.randn(FUSED_MAX_ROWS + 1, 256)
    assert nf4_triton._fused_forward(layer, many) is None  # a prompt pass: bitsandbytes
    expected = reference(layer, many, weight)
    out = layer(many)
    assert packed_for_cpu(layer.weight) == packing
    if packing:
        atol = BF16_RTOL * float(expected.abs().max())
        torch.testing.assert_close(out, expected, rtol=BF16_RTOL, atol=atol)
        assert nf4_triton._fused_forward(layer, few) is None  # the packed layout: bitsandbytes
    else:
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    training = few.clone().requires_grad_()
    assert nf4_triton._fused_forward(layer, training) is None  # the kernel has no backward


@pytest.mark.parametrize("nested", [True, False])
def test_a_weight_in_the_avx512_bf16_cpu_layout_is_left_to_bitsandbytes(nested: bool) -> None:
    """The fused kernel reads only the usual layout; the packed one is bitsandbytes' own."""
    layer = nf4_layer(256, 64, nested=nested)
    assert nf4_triton.supports(layer.weight)
    use_fused_nf4(torch.nn.Sequential(layer))
    repack_as_on_an_avx512_bf16_cpu(layer)
    assert packed_for_cpu(layer.weight) and not nf4_triton.supports(layer.weight)
    assert nf4_triton._fused_forward(layer, torch.randn(4, 256)) is None


def test_a_model_on_the_fused_kernel_gives_bitsandbytes_logits_and_tokens() -> None:
    """A whole (tiny) Mistral: every NF4 layer on the fused kernel, decoding greedily."""

    def model() -> Any:
        torch.manual_seed(0)
        built = random_mistral(TINY_DIMS, "cpu", torch.float32, bos_token_id=1, eos_token_id=2)
        quantize_nf4(built, "cpu")
        for module in built.modules():
            if isinstance(module, Linear4bit):
                module.compute_dtype = torch.float32  # the interpreter has no bf16
        # bitsandbytes' usual path on every CPU, as on a GPU: its AVX512-BF16 one is bf16.
        keep_standard_nf4_layout(built)
        return built.eval()

    fused, plain = model(), model()
    assert use_fused_nf4(fused) == 7 * TINY_DIMS["num_hidden_layers"]
    prompt = torch.tensor([[1, 17, 230, 45, 901, 12]])
    with torch.inference_mode():
        fused_logits = fused(prompt).logits
        plain_logits = plain(prompt).logits
        torch.testing.assert_close(fused_logits, plain_logits, rtol=1e-4, atol=1e-4)
        kwargs: dict[str, Any] = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
        fused_tokens = fused.generate(prompt, **kwargs)
        plain_tokens = plain.generate(prompt, **kwargs)
    assert fused_tokens.tolist() == plain_tokens.tolist()


def test_the_rule_of_thumb_splits_the_input_where_the_outputs_give_few_programs() -> None:
    """The key/value projections of a 7B (1,024 features) get more split-K than the MLP."""
    assert tile_config(32, 1024, 4096, 64).split_k > tile_config(32, 14336, 4096, 64).split_k
    odd = tile_config(1, 40, 192, 64)  # 3 blocks a row: no group of 2 divides it
    assert odd.groups == 1 and 192 % (64 * odd.groups) == 0


def test_a_tuned_table_picks_per_gpu_and_row_bucket_and_may_pick_bitsandbytes() -> None:
    tuned = TileConfig(block_n=128, groups=1, split_k=8, num_warps=8, num_stages=3)
    entry = {"out_features": 1024, "in_features": 4096, "blocksize": 64}
    tables = index_tables(
        {
            "gpus": {
                "GPU A": [
                    {**entry, "rows": 1, "config": None},  # bitsandbytes' one-row kernel won
                    {**entry, "rows": 16, "config": tuned.as_dict()},
                ]
            }
        }
    )
    assert choose_tiling(1, 1024, 4096, 64, "GPU A", tables) is None
    assert choose_tiling(2, 1024, 4096, 64, "GPU A", tables) == tuned  # 2..16 rows: bucket 16
    assert choose_tiling(16, 1024, 4096, 64, "GPU A", tables) == tuned
    rule = tile_config(17, 1024, 4096, 64)
    assert choose_tiling(17, 1024, 4096, 64, "GPU A", tables) == rule  # bucket 32: not measured
    assert choose_tiling(16, 1024, 4096, 64, "GPU B", tables) == tile_config(16, 1024, 4096, 64)
    assert choose_tiling(16, 1024, 4096, 128, "GPU A", tables) == tile_config(16, 1024, 4096, 128)
    assert choose_tiling(FUSED_MAX_ROWS + 1, 1024, 4096, 64, "GPU A", tables) is None


def test_the_shipped_tuned_table_reads_and_every_tiling_in_it_builds() -> None:
    """Reading builds every entry's TileConfig, so a stale field fails here."""
    tables = shipped_tables()
    assert tables, "core/generation/local/nf4_tiles.json holds no GPU"
    for gpu, measured in tables.items():
        assert gpu and measured
        for (_, in_features, blocksize, rows), config in measured.items():
            assert rows in ROW_BUCKETS
            if config is not None:
                assert in_features % (blocksize * config.groups) == 0
