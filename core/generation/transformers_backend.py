"""Local generation with Hugging Face transformers (optionally NF4 4-bit and a LoRA adapter).

All model work runs on one dedicated worker thread: it keeps the event loop free while the
model computes, and it serialises GPU work through a single queue so concurrent
conversations never fight over GPU memory. Batching across conversations is a later step
that can replace the single worker without changing the Generator port.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from core.errors import GenerationError, ModelLoadError
from core.generation.base import Generation
from core.generation.profiles import ModelSpec
from core.prompting import fold_system_prompt
from core.types import ChatMessage, SamplingParams

log = logging.getLogger(__name__)

# Distinct stop-string sets kept (one per set of speaker names in a conversation).
_STOP_CRITERIA_CACHE = 64


def _as_dicts(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


class _CancelOnEvent:
    """A StoppingCriteria that ends decoding when the caller stops listening."""

    def __init__(self, event: threading.Event) -> None:
        self._event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
        return self._event.is_set()


class TransformersGenerator:
    """A :class:`~core.generation.base.Generator` over a local transformers model."""

    def __init__(self, model: Any, tokenizer: Any, spec: ModelSpec, system_role: bool) -> None:
        self._model = model
        self._tokenizer = tokenizer
        self._spec = spec
        self._system_role = system_role
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="personabot-gen")
        self._closed = False
        # Stop-string matchers by stop strings; see _stop_criterion. Worker thread only.
        self._stop_criteria: OrderedDict[tuple[str, ...], Any] = OrderedDict()
        config = model.config
        self._context_window = int(getattr(config, "max_position_embeddings", 2048) or 2048)
        dtype = str(getattr(model, "dtype", "")).replace("torch.", "")
        quant = ", nf4" if spec.load_in_4bit else ""
        adapter = f", adapter {spec.adapter.name}" if spec.adapter else ""
        self._name = f"{spec.profile} ({spec.device}, {dtype}{quant}{adapter})"

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
        self._check_open()
        cancel = threading.Event()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(
            self._executor, self._generate_sync, list(messages), params, cancel, None
        )
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            cancel.set()
            raise

    async def stream(
        self, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> AsyncGenerator[str, None]:
        from transformers import AsyncTextIteratorStreamer

        self._check_open()
        cancel = threading.Event()
        streamer = AsyncTextIteratorStreamer(
            self._tokenizer, skip_prompt=True, skip_special_tokens=True
        )
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(
            self._executor, self._generate_sync, list(messages), params, cancel, streamer
        )
        try:
            async for piece in streamer:
                if piece:
                    yield piece
            await future
        finally:
            if not future.done():
                cancel.set()
                # Let the worker notice the flag; it checks once per decoded token.
                await asyncio.wait([future], timeout=30)

    async def aclose(self) -> None:
        self._closed = True
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        self._model = None

    def _check_open(self) -> None:
        if self._closed:
            raise GenerationError("The generator has been shut down; restart personabot.")

    # -- worker thread ----------------------------------------------------------------------

    def _stop_criterion(self, stop: Sequence[str]) -> list[Any]:
        """A StopStringCriteria for these stop strings, built once and then reused.

        transformers caches the matcher keyed on the tokenizer's vocabulary as a tuple, but a
        fast tokenizer's ``get_vocab()`` comes back in a different order on every call, so
        that cache never hits and every reply would pay the build: about 2 s on a CPU for
        the engine's fifteen speaker stop strings, far more than a short reply takes.
        """
        from transformers import StopStringCriteria

        key = tuple(stop)
        if not key:
            return []
        criterion = self._stop_criteria.get(key)
        if criterion is None:
            criterion = StopStringCriteria(self._tokenizer, list(key))
            self._stop_criteria[key] = criterion
            if len(self._stop_criteria) > _STOP_CRITERIA_CACHE:
                self._stop_criteria.popitem(last=False)
        else:
            self._stop_criteria.move_to_end(key)
        return [criterion]

    def _render(self, messages: Sequence[ChatMessage]) -> str:
        if not self._system_role:
            messages = fold_system_prompt(messages)
        text = self._tokenizer.apply_chat_template(
            _as_dicts(messages), tokenize=False, add_generation_prompt=True
        )
        return str(text)

    def _encode(self, messages: Sequence[ChatMessage]) -> list[int]:
        # The chat template writes the BOS token itself; adding it again would double it.
        ids = self._tokenizer(self._render(messages), add_special_tokens=False)["input_ids"]
        return list(ids)

    def _generate_sync(
        self,
        messages: list[ChatMessage],
        params: SamplingParams,
        cancel: threading.Event,
        streamer: Any,
    ) -> Generation:
        import torch
        from transformers import StoppingCriteriaList

        try:
            ids = self._encode(messages)
            input_ids = torch.tensor([ids], device=self._model.device)
            kwargs: dict[str, Any] = {
                "input_ids": input_ids,
                "attention_mask": torch.ones_like(input_ids),
                "max_new_tokens": params.max_new_tokens,
                "repetition_penalty": params.repetition_penalty,
                "pad_token_id": self._tokenizer.pad_token_id or self._tokenizer.eos_token_id,
                "stopping_criteria": StoppingCriteriaList(
                    [_CancelOnEvent(cancel), *self._stop_criterion(params.stop)]
                ),
            }
            if params.temperature > 0:
                kwargs.update(
                    do_sample=True,
                    temperature=params.temperature,
                    top_p=params.top_p,
                    top_k=params.top_k,
                )
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            if streamer is not None:
                kwargs["streamer"] = streamer
            if params.seed is not None:
                torch.manual_seed(params.seed)
            started = time.perf_counter()
            with torch.inference_mode():
                output = self._model.generate(**kwargs)
            new_tokens = output[0][len(ids) :]
            text = self._tokenizer.decode(new_tokens, skip_special_tokens=True)
            log.debug(
                "generated %d tokens in %.2fs (prompt %d tokens)",
                len(new_tokens),
                time.perf_counter() - started,
                len(ids),
            )
            return Generation(
                text=str(text), prompt_tokens=len(ids), completion_tokens=len(new_tokens)
            )
        except GenerationError:
            raise
        except Exception as exc:  # the model's failures reach the user as one clear error
            if streamer is not None:
                streamer.end()
            kind = "out of memory" if "out of memory" in str(exc).lower() else "failed"
            if kind == "out of memory" and torch.cuda.is_available():
                torch.cuda.empty_cache()  # give the next request the memory this one held
            raise GenerationError(f"Generation {kind}: {type(exc).__name__}: {exc}") from exc


# -- loading ------------------------------------------------------------------------------


def _convert_gguf_once(spec: ModelSpec) -> Path:
    """Dequantise the GGUF into safetensors once; later starts load it in about a second."""
    assert spec.converted_dir is not None and spec.gguf_file is not None
    target = spec.converted_dir
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    log.warning(
        "Converting %s to safetensors once (about 20 s); cached at %s", spec.gguf_file, target
    )
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


def _detect_system_role(tokenizer: Any) -> bool:
    # A distinctive probe: a plain "s" would be found in "<s>" or "<|im_start|>" even when the
    # template silently drops the system message.
    probe = [{"role": "system", "content": "SYSTEM-PROBE"}, {"role": "user", "content": "u"}]
    try:
        rendered = tokenizer.apply_chat_template(probe, tokenize=False)
    except Exception:
        return False
    return "SYSTEM-PROBE" in str(rendered)


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


def load_transformers_generator(spec: ModelSpec) -> TransformersGenerator:
    """Load weights, quantisation and adapter; blocking, so call it off the event loop."""
    model, tokenizer, system_role = load_model(spec)
    return TransformersGenerator(model, tokenizer, spec, system_role)


def load_model(spec: ModelSpec) -> tuple[Any, Any, bool]:
    """The served model (adapter applied), its tokenizer, and whether it has a system role.

    Shared by the generator and ``personabot eval``, so evaluation scores exactly the model
    the bot serves.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_weights(spec)
    kwargs: dict[str, Any] = {}
    if spec.load_in_4bit:
        from transformers import BitsAndBytesConfig

        compute = (
            torch.bfloat16
            if spec.device != "cuda" or torch.cuda.is_bf16_supported()
            else torch.float16
        )
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
        )
    if spec.device == "cuda":
        kwargs["device_map"] = {"": 0}
        if not spec.load_in_4bit:
            kwargs["dtype"] = torch.bfloat16
    else:
        kwargs["dtype"] = torch.float32
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
    if spec.adapter is not None:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(spec.adapter))
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(
                f"Cannot apply LoRA adapter {spec.adapter} to {spec.source}: {exc}. Was it "
                "trained for this base model?"
            ) from exc
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    system_role = _detect_system_role(tokenizer) if spec.system_role is None else spec.system_role
    return model, tokenizer, system_role
