"""Local generation with Hugging Face transformers (optionally NF4 4-bit and a LoRA adapter).

All model work runs on one dedicated worker thread: it keeps the event loop free while the
model computes, and it serialises GPU work through a single queue so concurrent
conversations never fight over GPU memory. Requests from concurrent conversations are
decoded together in continuous batches by
:class:`core.generation.batching.batch_scheduler.BatchScheduler` (per-request sampling,
cancellation, a bounded queue), behind the same Generator port.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Any

from core.errors import GenerationError, ModelLoadError
from core.generation.batching.batch_scheduler import (
    BatchingConfig,
    BatchScheduler,
    BatchStats,
    ModelFacts,
)
from core.generation.batching.slot_batch import SlotBatch
from core.generation.chat_template import detect_system_role, prompt_ids, turn_token_ids
from core.generation.generator import Generation
from core.generation.local.adapters import AdapterSet
from core.generation.local.compiled_decoding import enable_compiled_decoding
from core.generation.local.profiles import ModelSpec
from core.generation.local.quantization import (
    compute_dtype,
    merge_adapter,
    quantize,
    select_nf4_kernel,
)
from core.types import ChatMessage, SamplingParams

log = logging.getLogger(__name__)


class TransformersGenerator:
    """A :class:`~core.generation.generator.Generator` over a local transformers model."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        spec: ModelSpec,
        system_role: bool,
        *,
        batching: BatchingConfig | None = None,
    ) -> None:
        self._model = model
        self._tokenizer = tokenizer
        self._spec = spec
        self._system_role = system_role
        self._closed = False
        # Per-persona LoRA adapters on this one base model (SamplingParams.adapter).
        peft = hasattr(model, "peft_config")
        self._adapters = AdapterSet(
            model, default=peft, merged=spec.adapter is not None and not peft
        )
        config = model.config
        self._context_window = int(getattr(config, "max_position_embeddings", 2048) or 2048)
        dtype = str(getattr(model, "dtype", "")).replace("torch.", "")
        quant = f", {spec.quantization}" if spec.quantization != "none" else ""
        merged = " (merged)" if spec.merge_adapter else ""
        adapter = f", adapter {spec.adapter.name}{merged}" if spec.adapter else ""
        batching = batching or BatchingConfig()
        facts = model_facts(model, tokenizer)
        batch = None
        graphs = ""
        if spec.compile:
            batch = _slot_batch(model, facts, batching, self._context_window)
            graphs = ", CUDA graphs" if spec.device == "cuda" else ", static KV cache"
        self._name = f"{spec.profile} ({spec.device}, {dtype}{quant}{adapter}{graphs})"
        self._scheduler = BatchScheduler(self._model_for, facts, batching, batch=batch)

    # -- Generator port ---------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def context_window(self) -> int:
        return self._context_window

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return len(self._encode(messages))

    async def generate(self, messages: Sequence[ChatMessage], params: SamplingParams) -> Generation:
        """Batched with other conversations' requests; raises GeneratorBusyError when the
        queue is full."""
        self._check_open()
        return await self._scheduler.generate(self._encode(messages), params)

    async def stream(
        self, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> AsyncGenerator[str, None]:
        """Pieces as decoded; leaving early frees the request's row at the next step."""
        self._check_open()
        stream = self._scheduler.stream(self._encode(messages), params)
        try:
            async for piece in stream:
                yield piece
        finally:
            await stream.aclose()

    async def aclose(self) -> None:
        self._closed = True
        await self._scheduler.aclose()
        self._model = None

    @property
    def batch_stats(self) -> BatchStats:
        """How the scheduler has batched requests so far (steps, mean and peak batch size)."""
        return self._scheduler.stats

    @property
    def adapters(self) -> AdapterSet:
        """The LoRA adapters on this generator's one base model, and which one is active."""
        return self._adapters

    def activate_adapter(self, adapter: str | None) -> None:
        """Run the next forward passes with ``adapter`` (a directory; None: the default).

        Worker thread only. Loads the adapter onto the base model on first use and raises a
        GenerationError the user can read when it cannot be loaded.
        """
        self._model = self._adapters.activate(adapter)

    def _model_for(self, adapter: str | None) -> Any:
        """The scheduler's hook before a batch starts: switch adapters, return the model."""
        self.activate_adapter(adapter)
        return self._model

    def _check_open(self) -> None:
        if self._closed:
            raise GenerationError("The generator has been shut down; restart personabot.")

    # -- prompts ----------------------------------------------------------------------------

    def _encode(self, messages: Sequence[ChatMessage]) -> list[int]:
        return prompt_ids(self._tokenizer, messages, system_role=self._system_role)


def model_facts(model: Any, tokenizer: Any) -> ModelFacts:
    """End-of-turn tokens (generation config, tokenizer, chat-turn markers), padding and
    vocabulary size."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos = set(configured if isinstance(configured, list) else [configured])
    eos.add(tokenizer.eos_token_id)
    eos.discard(None)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
    eos |= turn_token_ids(tokenizer)

    def decode(ids: Sequence[int]) -> str:
        return str(tokenizer.decode(ids, skip_special_tokens=True))

    return ModelFacts(frozenset(eos), int(pad), int(model.config.vocab_size), decode)


# -- loading ------------------------------------------------------------------------------


def _convert_gguf_once(spec: ModelSpec) -> Path:
    """Dequantise the GGUF into safetensors once; later starts load the converted copy."""
    assert spec.converted_dir is not None and spec.gguf_file is not None
    target = spec.converted_dir
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    # transformers shows the conversion's progress bars; the rest is for the log.
    log.info("Converting %s to safetensors once; cached at %s", spec.gguf_file, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f"{target.name}.partial-{threading.get_ident()}")
    shutil.rmtree(staging, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(spec.source, gguf_file=spec.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(
        spec.source,
        gguf_file=spec.gguf_file,
        quantization_config=GgufConfig(dequantize=True),
    )
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        staging.rename(target)
    except OSError:  # another process finished first; its copy is as good as ours
        shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_weights(spec: ModelSpec) -> str | Path:
    """The Hub id or directory to load: the spec's source, or its GGUF converted once."""
    if not spec.gguf_file:
        return spec.source
    try:
        return _convert_gguf_once(spec)
    except OSError as exc:
        raise ModelLoadError(
            f"Cannot convert {spec.gguf_file} into {spec.converted_dir}: {exc}. Check that "
            "PERSONABOT_DATA_DIR (or PERSONABOT_CACHE_DIR) is writable."
        ) from exc


def _slot_batch(
    model: Any, facts: ModelFacts, batching: BatchingConfig, context_window: int
) -> SlotBatch:
    """The static KV cache, allocated and its decode graphs captured now, at start-up.

    Allocating here turns "too little GPU memory for this many conversations" into a
    start-up error with advice, not a failure at the first busy moment; capturing here keeps
    the first replies from waiting for it.
    """
    import torch

    slots = batching.max_batch_size
    capacity = min(batching.conversation_tokens, context_window)
    batch = SlotBatch(
        slots,
        capacity,
        facts.vocab_size,
        facts.pad_id,
        graphs=True,
        padded_prefill_rows=batching.padded_prefill_rows,
    )
    try:
        with torch.inference_mode():
            batch.allocate_for(model)
            batch.prepare(model, None)
    except torch.OutOfMemoryError as exc:
        raise ModelLoadError(
            f"Not enough GPU memory for the KV cache of {slots} conversations of {capacity} "
            f"tokens each ({exc}). Lower PERSONABOT_MAX_BATCH_SIZE or "
            "PERSONABOT_MAX_PROMPT_TOKENS, or set PERSONABOT_COMPILE=false."
        ) from exc
    return batch


def load_transformers_generator(
    spec: ModelSpec, batching: BatchingConfig | None = None
) -> TransformersGenerator:
    """Load weights, quantisation and adapter; blocking, so call it off the event loop."""
    model, tokenizer, system_role = load_model(spec)
    return TransformersGenerator(model, tokenizer, spec, system_role, batching=batching)


def _from_pretrained_kwargs(spec: ModelSpec, in_memory: bool) -> dict[str, Any]:
    """``from_pretrained`` arguments: where the weights land and in which format."""
    import torch

    kwargs: dict[str, Any] = {}
    if in_memory:  # full precision on the CPU; quantised onto the device afterwards
        wide = spec.device == "cuda" or spec.quantization in ("int4", "gemlite")
        kwargs["dtype"] = torch.bfloat16 if wide else torch.float32
        return kwargs
    if spec.quantization == "nf4":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype(spec.device, cpu_dtype="bfloat16"),
        )
    if spec.device == "cuda":
        kwargs["device_map"] = {"": 0}
        if spec.quantization == "none":
            kwargs["dtype"] = torch.bfloat16
    else:
        kwargs["dtype"] = torch.float32
    return kwargs


def load_model(spec: ModelSpec) -> tuple[Any, Any, bool]:
    """The served model (adapter applied), its tokenizer, and whether it has a system role.

    Shared by the generator and ``personabot eval``, so evaluation scores exactly the model
    the bot serves.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_weights(spec)
    # NF4 without merging is quantised by from_pretrained itself; int4, gemlite, and NF4 with
    # the adapter merged, load full-precision weights on the CPU and quantise them layer by
    # layer onto the device (core/generation/local/quantization.py), merging the adapter first.
    in_memory = spec.quantization in ("int4", "gemlite") or (
        spec.quantization == "nf4" and spec.merge_adapter and spec.adapter is not None
    )
    kwargs = _from_pretrained_kwargs(spec, in_memory)
    try:
        tokenizer: Any = AutoTokenizer.from_pretrained(source)
        model: Any = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as exc:
        raise ModelLoadError(
            f"Cannot load model {source!s} for profile {spec.profile}: {exc}\n"
            "If this machine cannot reach the Hugging Face Hub, download the weights where it "
            f"can (`hf download {spec.source} --local-dir DIR`), copy DIR here and set "
            "PERSONABOT_MODEL_PATH=DIR; or use the offline profile "
            "PERSONABOT_MODEL_PROFILE=smollm2-135m."
        ) from exc
    if spec.adapter is not None and spec.merge_adapter:
        model = merge_adapter(model, spec.adapter)
    if in_memory:  # embeddings, norms and lm_head move to the device in full precision
        quantize(model, spec.quantization, spec.device, spec.nf4_kernel)
    elif spec.quantization == "nf4":  # quantised by from_pretrained
        select_nf4_kernel(model, spec.nf4_kernel, spec.device)
    if spec.adapter is not None and not spec.merge_adapter:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(spec.adapter))
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(
                f"Cannot apply LoRA adapter {spec.adapter} to {spec.source}: {exc}. Was it "
                "trained for this base model?"
            ) from exc
    if spec.compile and spec.quantization in ("int4", "none"):
        # generate() (personabot eval) with a static cache and torch.compile; bitsandbytes'
        # layers gain little from compiling (see docs/benchmarks.md#decode-speed-gpu) while
        # every batch size costs a long compilation (GemLite's layers were not tried).
        # The scheduler does not use this.
        enable_compiled_decoding(model)
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    system_role = detect_system_role(tokenizer) if spec.system_role is None else spec.system_role
    return model, tokenizer, system_role
