"""bitsandbytes' two CPU layouts of NF4 weights, and what keeps training on the usual one.

On a CPU with AVX512-BF16, bitsandbytes repacks a 4-bit layer's weight at its first forward
pass without gradients. These tests apply that repacking on any machine (tests/nf4_layers.py),
so a developer's machine without the feature still catches a reader of the wrong layout.
"""

from __future__ import annotations

import pytest
import torch
from bitsandbytes.functional import dequantize_4bit

from core.generation.local.quantization import keep_standard_nf4_layout, packed_for_cpu
from tests.nf4_layers import dense_weight, nf4_layer, repack_as_on_an_avx512_bf16_cpu


@pytest.mark.parametrize("nested", [True, False])
def test_a_repacked_layer_returns_to_the_usual_layout_with_the_same_weights(nested: bool) -> None:
    layer = nf4_layer(256, 96, nested=nested)
    weight = dense_weight(layer)
    repack_as_on_an_avx512_bf16_cpu(layer)
    assert packed_for_cpu(layer.weight)
    misread = dequantize_4bit(layer.weight.data, layer.weight.quant_state).float()
    assert not torch.allclose(misread, weight, rtol=0.1, atol=0.1)  # why it matters

    assert keep_standard_nf4_layout(torch.nn.Sequential(layer)) == 1
    assert not packed_for_cpu(layer.weight) and layer.support_avx512bf16_for_cpu is False
    assert layer.weight.quant_state.nested == nested
    # The 4-bit codes come back exactly; the block scales went through bf16 (8 bits).
    torch.testing.assert_close(dense_weight(layer), weight, rtol=2**-7, atol=1e-6)
    assert keep_standard_nf4_layout(torch.nn.Sequential(layer)) == 0  # nothing left to undo


def test_a_layer_kept_on_the_usual_layout_is_not_repacked_by_its_forward_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """bitsandbytes' decision forced to "this CPU has AVX512-BF16", whatever the machine."""
    monkeypatch.setattr("bitsandbytes.nn.modules.has_avx512bf16", lambda: True)
    layer = nf4_layer(256, 64)
    assert layer.support_avx512bf16_for_cpu is True  # bitsandbytes would repack it
    weight = dense_weight(layer)
    keep_standard_nf4_layout(torch.nn.Sequential(layer))
    x = torch.randn(3, 256)
    with torch.no_grad():
        out = layer(x)
    assert not packed_for_cpu(layer.weight)
    torch.testing.assert_close(out, x @ weight.T, rtol=1e-4, atol=1e-4)
