"""Weight formats for serving: NF4 (bitsandbytes), int4 (torchao tinygemm), gemlite or none.

Why three 4-bit formats: each holds a 7B model in about 4 GB, so it fits a 16 GB GPU with
room for many conversations' KV cache, but they decode at very different speeds, and which is
fastest depends on how many rows a step multiplies (docs/benchmarks.md):

- bitsandbytes' NF4 dequantises every weight to bf16 in a kernel of its own and then runs a
  bf16 matrix product, so each step reads the weights three times over; it runs wherever
  bitsandbytes does, CPUs included.
- torchao's int4 weight-only layout runs PyTorch's fused int4 kernel (tinygemm): fast for one
  row, slow for many rows and for prompts.
- ``gemlite``: asymmetric 4-bit weights (HQQ-calibrated groups of
  :data:`GEMLITE_GROUP_SIZE`) multiplied by GemLite's fused Triton kernels, which unpack the
  weights inside the matrix product and pick a kernel by row count (GEMV, split-K, GEMM), so a
  step reads 4-bit weights once whether it carries 1 row or 32.

int4 and gemlite need a CUDA GPU of compute capability 8.0 or newer and the ``gpu`` extra
(``torchao``, ``gemlite``).

Both in-memory quantisers here take a model whose weights are still in bf16 (or fp32), which
is what makes merging a LoRA adapter into the weights exact: the adapter is folded into the
full-precision weights first (:func:`merge_adapter`), and only then is the sum quantised.
Each linear layer is moved to the target device and quantised on its own, so a 7B model
never needs its 14 GB of bf16 weights on the GPU at once.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from core.errors import ModelLoadError

log = logging.getLogger(__name__)

Quantization = Literal["nf4", "int4", "gemlite", "none"]
QUANTIZATIONS: tuple[Quantization, ...] = ("nf4", "int4", "gemlite", "none")

NF4Kernel = Literal["triton", "bitsandbytes"]
NF4_KERNELS: tuple[NF4Kernel, ...] = ("triton", "bitsandbytes")
"""Which kernel multiplies NF4 weights by the few rows of a decode step on a GPU:
``triton`` (core/generation/local/nf4_triton.py, bitsandbytes' own weights unpacked inside one
kernel) or ``bitsandbytes`` (dequantise, then a bf16 product). Prompts always take
bitsandbytes' path."""

INT4_GROUP_SIZE = 128
"""Weights per int4 scale/zero pair: tinygemm's usual choice (64 and 32 are finer, bigger)."""

INT4_MIN_CAPABILITY = (8, 0)
"""tinygemm (``torch.ops.aten._weight_int4pack_mm``) and GemLite's bf16 kernels need Ampere
or newer."""

GEMLITE_GROUP_SIZE = 64
"""Weights per scale/zero pair for ``gemlite``: HQQ's usual 4-bit choice (4.5 bits a weight
with the bf16 scale and zero, against NF4's 4.13)."""

SKIP_MODULES = ("lm_head",)
"""Layers kept in full precision, as transformers' own 4-bit loading does."""


def int4_unavailable_reason(device: str) -> str | None:
    """Why the int4 kernel cannot run here, or None when it can.

    Checked when the settings are resolved, so an impossible choice stops personabot at
    start-up with advice instead of failing inside torch at the first reply.
    """
    return _gpu_format_unavailable_reason("int4", "its tinygemm kernel", "torchao", device)


def gemlite_unavailable_reason(device: str) -> str | None:
    """Why GemLite's kernels cannot run here, or None when they can (checked at start-up)."""
    return _gpu_format_unavailable_reason("gemlite", "its Triton kernels", "gemlite", device)


def _gpu_format_unavailable_reason(
    setting: str, kernel: str, package: str, device: str
) -> str | None:
    if device != "cuda":
        return (
            f"PERSONABOT_QUANTIZATION={setting} needs a CUDA GPU ({kernel} has no CPU build "
            "here); use PERSONABOT_QUANTIZATION=nf4 or none on this machine."
        )
    import torch

    if not torch.cuda.is_available():
        return f"PERSONABOT_QUANTIZATION={setting} needs a CUDA GPU and torch sees none."
    capability = torch.cuda.get_device_capability(0)
    if capability < INT4_MIN_CAPABILITY:
        return (
            f"PERSONABOT_QUANTIZATION={setting} needs a GPU of compute capability 8.0 or "
            f"newer (Ampere, Ada, Hopper); this one is {capability[0]}.{capability[1]}. Use "
            "PERSONABOT_QUANTIZATION=nf4."
        )
    missing = [name for name in ("torchao", package) if importlib.util.find_spec(name) is None]
    if missing:
        return (
            f"PERSONABOT_QUANTIZATION={setting} needs the {' and '.join(dict.fromkeys(missing))} "
            "package: `.venv/bin/pip install -e '.[gpu]'` (torchao 0.18 needs torch >= 2.11), "
            "or use PERSONABOT_QUANTIZATION=nf4."
        )
    return None


def compute_dtype(device: str, *, cpu_dtype: Literal["float32", "bfloat16"] = "float32") -> Any:
    """The dtype to compute in: on a GPU bf16 where it has it, else fp16; on a CPU ``cpu_dtype``.

    Why the CPU answer is the caller's: serving's 4-bit layers ask for bf16 there, because
    bitsandbytes computes in bf16 on a CPU, while training on a CPU loads the base model and
    trains its LoRA weights in fp32 without autocast, so training (the default) keeps fp32.
    """
    import torch

    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, cpu_dtype)


def merge_adapter(model: Any, adapter: Path) -> Any:
    """Fold a LoRA adapter into the (unquantised) weights and return the plain model.

    One adapter serving every persona costs nothing at decode time once merged: no extra
    LoRA matrix products per layer, and a plain model compiles into fewer kernels.
    """
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter))
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(
            f"Cannot apply LoRA adapter {adapter}: {exc}. Was it trained for this base model?"
        ) from exc
    return peft_model.merge_and_unload()


def _linear_layers(model: Any, skip: Sequence[str]) -> list[tuple[Any, str, Any]]:
    import torch

    found = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear and name not in skip:
                found.append((parent, name, child))
    return found


def quantize_nf4(model: Any, device: str, skip: Sequence[str] = SKIP_MODULES) -> int:
    """Replace each ``nn.Linear`` but ``skip`` with a bitsandbytes NF4 layer on ``device``.

    NF4 with double quantisation and compute in :func:`compute_dtype` (bf16 on a CPU, as
    bitsandbytes computes there): the same layers that ``from_pretrained`` with a
    ``BitsAndBytesConfig`` builds. Each layer is quantised as it is moved, and its
    full-precision weight dropped; the rest of the model follows it to ``device``. Returns how
    many layers were replaced.
    """
    import torch
    from bitsandbytes.nn.modules import Linear4bit, Params4bit

    dtype = compute_dtype(device, cpu_dtype="bfloat16")
    replaced = 0
    for parent, name, child in _linear_layers(model, skip):
        layer = Linear4bit(
            child.in_features,
            child.out_features,
            bias=child.bias is not None,
            compute_dtype=dtype,
            compress_statistics=True,
            quant_type="nf4",
            device="meta",
        )
        weight: Any = Params4bit(
            child.weight.data.to(dtype),
            requires_grad=False,
            compress_statistics=True,
            quant_type="nf4",
            module=layer,
        )
        layer.weight = weight.to(device)  # bitsandbytes quantises on this move
        if child.bias is not None:
            layer.bias = torch.nn.Parameter(child.bias.data.to(device), requires_grad=False)
        setattr(parent, name, layer)
        replaced += 1
    model.is_loaded_in_4bit = True  # how peft and transformers recognise a 4-bit model
    _move_rest(model, device)  # embeddings, norms, lm_head, rotary buffers
    return replaced


def quantize_int4(
    model: Any,
    device: str,
    group_size: int = INT4_GROUP_SIZE,
    skip: Sequence[str] = SKIP_MODULES,
) -> int:
    """Quantise each ``nn.Linear`` but ``skip`` to torchao's int4 weight-only format.

    The "tile_packed_to_4d" layout is the one PyTorch's own tinygemm kernel reads, so no
    compiled extension beyond torch is needed at run time. Returns the layers quantised.
    """
    reason = int4_unavailable_reason(device)
    if reason is not None:
        raise ModelLoadError(reason)
    import torch
    from torchao.quantization import Int4WeightOnlyConfig, quantize_

    if model.dtype != torch.bfloat16:
        raise ModelLoadError(f"int4 quantisation takes a bf16 model, not {model.dtype}.")
    targets = {id(child) for _, _, child in _linear_layers(model, skip)}
    config = Int4WeightOnlyConfig(
        group_size=group_size,
        int4_packing_format="tile_packed_to_4d",
        set_inductor_config=False,  # leave torch.compile's global settings alone
    )
    # device=: each selected layer is moved to the GPU just before it is quantised.
    quantize_(model, config, filter_fn=lambda module, _fqn: id(module) in targets, device=device)
    _move_rest(model, device)  # embeddings, norms, lm_head, rotary buffers
    return len(targets)


def quantize_gemlite(
    model: Any,
    device: str,
    group_size: int = GEMLITE_GROUP_SIZE,
    skip: Sequence[str] = SKIP_MODULES,
) -> int:
    """Replace each ``nn.Linear`` but ``skip`` with a GemLite 4-bit layer on ``device``.

    HQQ picks each group's scale and zero (a few proximal steps on the GPU, closer to the
    bf16 weights than rounding to the nearest level); GemLite packs the 4-bit values and
    serves the layer. Each layer is moved and quantised on its own, as in
    :func:`quantize_nf4`. GemLite tunes its kernels for each new row count on first use,
    so the slot batch's warm-up passes before each CUDA-graph capture do that tuning, at
    start-up. Returns the layers replaced.
    """
    reason = gemlite_unavailable_reason(device)
    if reason is not None:
        raise ModelLoadError(reason)
    import torch
    from gemlite.helper import A16Wn

    # torchao's HQQ solver, the one its own GemLite workflow uses; torchao is pinned (the
    # gpu extra), and that workflow's packing step does not match gemlite 0.6's API.
    from torchao.quantization.quant_primitives import (
        _choose_qparams_and_quantize_affine_hqq as choose_and_quantize_hqq,
    )

    if model.dtype != torch.bfloat16:
        raise ModelLoadError(f"gemlite quantisation takes a bf16 model, not {model.dtype}.")
    packer = A16Wn(device=device, dtype=torch.bfloat16)
    replaced = 0
    for parent, name, child in _linear_layers(model, skip):
        values, scales, zeros, _shape = choose_and_quantize_hqq(
            child.weight.data,
            nbits=4,
            group_size=group_size,
            compute_dtype=torch.bfloat16,
            device=device,
            raw_output=True,
        )
        bias = None if child.bias is None else child.bias.data
        layer = packer.from_weights(values, scales, zeros, 4, group_size, bias=bias)
        setattr(parent, name, layer)
        replaced += 1
    _move_rest(model, device)
    return replaced


def packed_for_cpu(weight: Any) -> bool:
    """Whether bitsandbytes has repacked this 4-bit weight into its AVX512-BF16 CPU layout.

    On a CPU with AVX512-BF16, bitsandbytes repacks a ``Linear4bit``'s weight in place at the
    layer's first forward pass without gradients, and from then on computes that layer in
    bf16 whatever its compute dtype. The packed bytes are no longer bitsandbytes' usual NF4
    layout: ``dequantize_4bit``, peft's merge and the fused kernel would read them as garbage.
    """
    state = getattr(weight, "quant_state", None)
    return bool(getattr(state, "packing_format_for_cpu", False))


def keep_standard_nf4_layout(model: Any) -> int:
    """Keep ``model``'s bitsandbytes 4-bit layers in bitsandbytes' usual layout on CPUs.

    Training needs it: the AVX512-BF16 kernel (:func:`packed_for_cpu`) has no backward pass,
    so gradients would stop flowing through a repacked layer, and anything that reads the
    weights (evaluation, merging, saving) expects the usual layout. Each layer is told not to
    repack, and one repacked already is converted back by bitsandbytes' own inverse (exact
    for the 4-bit codes; the block scales come back from bf16). Returns the layers converted
    back. Serving leaves bitsandbytes its faster CPU path.
    """
    converted = 0
    for module in model.modules():
        if not hasattr(module, "support_avx512bf16_for_cpu"):
            continue
        module.support_avx512bf16_for_cpu = False
        weight = module.weight
        if packed_for_cpu(weight):
            from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

            state = weight.quant_state
            nested = bool(state.original_nested)
            weight.data, state = _convert_weight_packed_for_cpu_inverse(weight.data, state)
            if not nested:
                # The inverse restores nested scales only (bitsandbytes 0.50); plain ones stay
                # transposed to [blocks per row, rows] in bf16.
                state.absmax = state.absmax.T.reshape(-1).float().contiguous()
            weight.quant_state = module.quant_state = state
            converted += 1
    return converted


def select_nf4_kernel(model: Any, kernel: NF4Kernel, device: str) -> int:
    """Let ``model``'s NF4 layers run the fused Triton kernel for decode steps, if asked.

    Only on CUDA (the kernel's only compiled target) and where Triton is installed (CUDA
    builds of torch bring it); elsewhere the layers stay bitsandbytes' own, with a warning
    when ``triton`` was asked for on a GPU. Returns the layers switched.
    """
    if kernel != "triton" or device != "cuda":
        return 0
    from core.generation.local.nf4_triton import triton_available, use_fused_nf4

    if not triton_available():
        log.warning(
            "PERSONABOT_NF4_KERNEL=triton but Triton is not installed; NF4 decode steps use "
            "bitsandbytes' slower kernels. Install a CUDA build of torch (it brings Triton)."
        )
        return 0
    switched = use_fused_nf4(model)
    log.info("NF4: %d layers run decode steps on the fused Triton kernel", switched)
    return switched


def quantize(
    model: Any, quantization: Quantization, device: str, nf4_kernel: NF4Kernel = "triton"
) -> int:
    """Quantise a bf16 (or fp32) ``model`` in memory to ``quantization`` on ``device``.

    The one dispatch the loader and the benchmarks share; ``none`` leaves the weights alone.
    ``nf4_kernel`` picks NF4's decode kernel (:func:`select_nf4_kernel`). Returns the layers
    quantised.
    """
    if quantization == "nf4":
        replaced = quantize_nf4(model, device)
        select_nf4_kernel(model, nf4_kernel, device)
        return replaced
    if quantization == "int4":
        return quantize_int4(model, device)
    if quantization == "gemlite":
        return quantize_gemlite(model, device)
    return 0


def _move_rest(model: Any, device: str) -> None:
    """Move the parameters and buffers not yet on ``device`` there, and only those.

    ``model.to()`` would also pass the packed int4 weights through ``.to()``; leaving them
    alone is cheaper and safer. Shared (tied) parameters stay shared.
    """
    import torch

    target = torch.device(device).type
    moved: dict[int, Any] = {}
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if param.device.type == target:
                continue
            if id(param) not in moved:
                moved[id(param)] = torch.nn.Parameter(param.data.to(device), requires_grad=False)
            module._parameters[name] = moved[id(param)]
        for name, buffer in list(module.named_buffers(recurse=False)):
            if buffer.device.type != target:
                module._buffers[name] = buffer.to(device)


def weight_bytes(model: Any) -> int:
    """Bytes the model's parameters and buffers take, quantised layouts included."""
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        total += _tensor_bytes(tensor)
    return total


def _tensor_bytes(tensor: Any) -> int:
    # torchao's int4 tensors and bitsandbytes' Params4bit hold their packed data in
    # attributes; a subclass's numel() reports the logical shape, not what is stored.
    inner = getattr(tensor, "__tensor_flatten__", None)
    if inner is not None:
        names, _ = inner()
        return sum(_tensor_bytes(getattr(tensor, name)) for name in names)
    size = int(tensor.numel()) * int(tensor.element_size())
    state = getattr(tensor, "quant_state", None)
    if state is not None:
        for part in (state.absmax, getattr(state, "state2", None) and state.state2.absmax):
            if part is not None and hasattr(part, "numel"):
                size += int(part.numel()) * int(part.element_size())
    return size
