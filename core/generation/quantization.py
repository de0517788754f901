"""Weight formats for serving: NF4 (bitsandbytes), int4 (torchao tinygemm) or none.

Why two 4-bit formats: both hold a 7B model in about 4 GB, so it fits a 16 GB GPU with room
for many conversations' KV cache, but they decode at very different speeds. bitsandbytes'
NF4 layers dequantise in separate kernels and, even compiled, decode a Mistral-7B at about
25 tokens/s on an H100 (docs/benchmarks.md); torchao's int4 weight-only layout runs
PyTorch's fused int4 matrix kernel (tinygemm) and compiles with a static KV cache into CUDA
graphs, several times faster. int4 needs a CUDA GPU of compute capability 8.0 or newer and
the ``torchao`` package (the ``gpu`` extra); NF4 runs wherever bitsandbytes does, CPUs
included.

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

Quantization = Literal["nf4", "int4", "none"]
QUANTIZATIONS: tuple[Quantization, ...] = ("nf4", "int4", "none")

INT4_GROUP_SIZE = 128
"""Weights per int4 scale/zero pair: tinygemm's usual choice (64 and 32 are finer, bigger)."""

INT4_MIN_CAPABILITY = (8, 0)
"""tinygemm (``torch.ops.aten._weight_int4pack_mm``) needs Ampere or newer."""

SKIP_MODULES = ("lm_head",)
"""Layers kept in full precision, as transformers' own 4-bit loading does."""


def torchao_available() -> bool:
    """True when the optional ``torchao`` package is importable (without importing it)."""
    return importlib.util.find_spec("torchao") is not None


def int4_unavailable_reason(device: str) -> str | None:
    """Why the int4 kernel cannot run here, or None when it can.

    Checked when the settings are resolved, so an impossible choice stops personabot at
    start-up with advice instead of failing inside torch at the first reply.
    """
    if device != "cuda":
        return (
            "PERSONABOT_QUANTIZATION=int4 needs a CUDA GPU (its tinygemm kernel has no CPU "
            "build here); use PERSONABOT_QUANTIZATION=nf4 or none on this machine."
        )
    import torch

    if not torch.cuda.is_available():
        return "PERSONABOT_QUANTIZATION=int4 needs a CUDA GPU and torch sees none."
    capability = torch.cuda.get_device_capability(0)
    if capability < INT4_MIN_CAPABILITY:
        return (
            f"PERSONABOT_QUANTIZATION=int4 needs a GPU of compute capability 8.0 or newer "
            f"(Ampere, Ada, Hopper); this one is {capability[0]}.{capability[1]}. Use "
            "PERSONABOT_QUANTIZATION=nf4."
        )
    if not torchao_available():
        return (
            "PERSONABOT_QUANTIZATION=int4 needs the torchao package: "
            "`.venv/bin/pip install -e '.[gpu]'` (torchao 0.18 needs torch >= 2.11), or use "
            "PERSONABOT_QUANTIZATION=nf4."
        )
    return None


def compute_dtype(device: str) -> Any:
    """bf16 where the GPU has it (and on CPUs, as bitsandbytes computes there), else fp16."""
    import torch

    if device == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


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

    NF4 with double quantisation and compute in :func:`compute_dtype`: the same layers that
    ``from_pretrained`` with a ``BitsAndBytesConfig`` builds. Each layer is quantised as it is
    moved, and its full-precision weight dropped. Returns how many layers were replaced.
    """
    import torch
    from bitsandbytes.nn.modules import Linear4bit, Params4bit

    dtype = compute_dtype(device)
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
