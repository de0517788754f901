"""Does an adapter help? Perplexity on reply turns and emotion-following, base vs adapter.

Why these two numbers: perplexity on the assistant turns of a held-out DailyDialog split
measures how much better the adapted model predicts human replies in the exact prompt format
the bot uses (system instruction, history, chat template); ``emotion_match_rate`` measures
whether it actually *follows* the mood guidance: replies are generated for contexts whose
gold reply carries an emotion, with that emotion requested in the system prompt, and the
mood classifier (the same one that judges user messages) reads each reply with the turn it
answers as context. Both are computed for the base model too, from one loaded model, by
switching the adapter off (peft's ``disable_adapter``) rather than loading the weights twice.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.generation.chat_template import turn_token_ids
from core.mood import MoodDetector
from core.personas import Persona
from core.settings import Settings
from core.types import ChatMessage, Mood
from training.dailydialog import Dialogue, load_split
from training.persona_voice import has_voice_markers, in_voice
from training.sft_data import (
    ChatExample,
    ChatFormatter,
    TokenizedExample,
    detect_format,
    dialogue_example,
    load_examples,
    pad_batch,
)
from training.train_lm import evaluate_loss

log = logging.getLogger(__name__)


@dataclass
class LMEvalConfig:
    """What to evaluate and how much of it."""

    data: str
    split: str = "validation"
    data_format: str = "auto"
    max_examples: int | None = 1000
    """Reply turns scored for perplexity (a seeded sample); None: all."""
    max_generate: int = 100
    """Replies generated (per model) for the emotion match; 0 skips generation."""
    batch_size: int = 16
    seq_len: int = 512
    max_new_tokens: int = 48
    judge: str = "classifier"
    max_voice: int = 50
    """Replies generated (per model and per stylised persona) for persona_voice_rate; 0 skips."""
    include_first_turn: bool = False
    seed: int = 42


def _sample(n: int, limit: int | None, seed: int) -> list[int]:
    if limit is None or limit >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), limit))


def _fit_prompt(formatter: ChatFormatter, example: ChatExample, budget: int) -> list[int]:
    """The generation prompt for an example, oldest history dropped until it fits."""
    messages = list(example.messages[:-1])
    while True:
        ids = formatter.prompt_ids(messages)
        first = 1 if messages and messages[0].role == "system" else 0
        if len(ids) <= budget or len(messages) - first <= 1:
            return ids[-budget:]
        del messages[first]


def generate_replies(
    model: Any,
    tokenizer: Any,
    formatter: ChatFormatter,
    examples: Sequence[ChatExample],
    *,
    device: str,
    batch_size: int,
    seq_len: int,
    max_new_tokens: int,
    progress: bool = True,
    desc: str = "generating",
    sampling: dict[str, float] | None = None,
) -> list[str]:
    """Greedy replies (repetition penalty 1.1, like the personas' defaults), batched.

    Greedy decoding makes the rate reproducible and the base/adapter comparison paired.
    ``sampling`` (temperature, top_p, top_k, repetition_penalty) samples instead, as a
    persona does at run time; the caller seeds torch.
    """
    import torch
    from tqdm import tqdm

    pad_id = int(tokenizer.pad_token_id)
    # Every chat-turn marker ends a reply, as in serving (core.generation.chat_template):
    # a model that opens the next turn instead of closing its own is judged on what users see.
    stops = sorted({formatter.end_id, int(tokenizer.eos_token_id), *turn_token_ids(tokenizer)})
    prompts = [_fit_prompt(formatter, ex, max(16, seq_len - max_new_tokens)) for ex in examples]
    decoding: dict[str, Any] = (
        {"do_sample": True, **sampling}
        if sampling
        else {
            "do_sample": False,
            "temperature": None,
            "top_p": None,
            "top_k": None,
            "repetition_penalty": 1.1,
        }
    )
    replies: list[str] = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", disable=not progress, leave=False):
        chunk = [TokenizedExample(p, p) for p in prompts[start : start + batch_size]]
        batch = pad_batch(chunk, pad_id, left=True)
        with torch.inference_mode():
            output = model.generate(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                max_new_tokens=max_new_tokens,
                **decoding,
                pad_token_id=pad_id,
                eos_token_id=stops,
            )
        width = batch["input_ids"].shape[1]
        for row in output:
            text = tokenizer.decode(row[width:], skip_special_tokens=True)
            replies.append(str(text).strip())
    return replies


def paired_replies(
    model: Any,
    tokenizer: Any,
    formatter: ChatFormatter,
    requests: Sequence[ChatExample],
    *,
    config: LMEvalConfig,
    device: str,
    progress: bool,
    desc: str,
) -> tuple[list[str], list[str]]:
    """Greedy replies to ``requests`` with the adapter, then with it switched off (base)."""

    def generate(which: str) -> list[str]:
        return generate_replies(
            model,
            tokenizer,
            formatter,
            requests,
            device=device,
            batch_size=config.batch_size,
            seq_len=config.seq_len,
            max_new_tokens=config.max_new_tokens,
            progress=progress,
            desc=f"{desc} ({which})",
        )

    adapted = generate("adapter")
    with model.disable_adapter():
        return adapted, generate("base")


async def _judge(detector: MoodDetector, pairs: Sequence[tuple[str, str | None]]) -> list[Mood]:
    moods: list[Mood] = []
    for text, previous in pairs:
        result = await detector.detect(text, previous) if text else None
        moods.append(result.mood if result else Mood.NO_EMOTION)
    return moods


def emotion_requests(
    dialogues: Sequence[Dialogue], split: str, limit: int, seed: int
) -> list[ChatExample]:
    """A seeded sample of reply turns whose gold reply carries an emotion, asking for it.

    Asking for the emotion the human reply had keeps each request natural in its context
    (a sad reply where the talk is sad), so a miss is the model's, not an odd request's.
    """
    candidates = [
        (dialogue, turn)
        for dialogue in dialogues
        for turn in range(1, len(dialogue.turns))
        if dialogue.turns[turn].emotion is not Mood.NO_EMOTION
    ]
    chosen = _sample(len(candidates), limit, seed)
    return [dialogue_example(*candidates[i], split=split) for i in chosen]


def load_eval_data(
    config: LMEvalConfig, persona: Any = None
) -> tuple[list[ChatExample], list[Dialogue] | None]:
    """The examples to score and, for DailyDialog, the dialogues to draw requests from.

    Loaded before any model, so a wrong path fails in a second, not after a minute of loading.
    """
    kind = detect_format(config.data, config.data_format)
    examples = load_examples(
        config.data,
        config.split,
        data_format=kind,
        include_first=config.include_first_turn,
        persona=persona,
    )
    dialogues = load_split(config.data, config.split) if kind == "dailydialog" else None
    return examples, dialogues


def evaluate_adapter(
    model: Any,
    tokenizer: Any,
    *,
    system_role: bool,
    config: LMEvalConfig,
    examples: Sequence[ChatExample],
    dialogues: Sequence[Dialogue] | None,
    device: str,
    detector: MoodDetector | None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score ``model`` (a PeftModel) with and without its adapter; one flat dict of results."""
    started = time.perf_counter()
    formatter = ChatFormatter(tokenizer, system_role=system_role)
    chosen = [examples[i] for i in _sample(len(examples), config.max_examples, config.seed)]
    encoded = formatter.encode_all(chosen, config.seq_len)
    pad_id = int(tokenizer.pad_token_id)

    def perplexity(desc: str) -> dict[str, float]:
        return evaluate_loss(
            model,
            encoded,
            batch_size=config.batch_size,
            pad_id=pad_id,
            device=device,
            progress=progress,
            desc=desc,
        )

    adapted = perplexity("perplexity (adapter)")
    with model.disable_adapter():
        base = perplexity("perplexity (base)")
    report: dict[str, Any] = {
        "data": config.data,
        "split": config.split,
        "examples": len(encoded),
        "target_tokens": int(adapted["tokens"]),
        "loss_base": base["loss"],
        "loss_adapter": adapted["loss"],
        "perplexity_base": base["perplexity"],
        "perplexity_adapter": adapted["perplexity"],
        "perplexity_reduction": 1 - adapted["perplexity"] / base["perplexity"],
        "emotion_match_rate": None,
        "emotion_match_rate_base": None,
        "generated": 0,
    }
    if dialogues is not None and config.max_generate > 0 and detector is not None:
        requests = emotion_requests(dialogues, config.split, config.max_generate, config.seed)

        replies, base_replies = paired_replies(
            model,
            tokenizer,
            formatter,
            requests,
            config=config,
            device=device,
            progress=progress,
            desc="generating",
        )
        previous = [q.previous for q in requests]
        judged = asyncio.run(_judge(detector, list(zip(replies, previous, strict=True))))
        judged_base = asyncio.run(_judge(detector, list(zip(base_replies, previous, strict=True))))
        wanted = [q.emotion for q in requests]
        hits = [w is j for w, j in zip(wanted, judged, strict=True)]
        hits_base = [w is j for w, j in zip(wanted, judged_base, strict=True)]
        per_emotion: dict[str, dict[str, float]] = {}
        for mood in sorted({w for w in wanted if w is not None}, key=list(Mood).index):
            rows = [i for i, w in enumerate(wanted) if w is mood]
            per_emotion[mood.value] = {
                "requests": len(rows),
                "match_rate": sum(hits[i] for i in rows) / len(rows),
                "match_rate_base": sum(hits_base[i] for i in rows) / len(rows),
            }
        report.update(
            emotion_match_rate=sum(hits) / len(hits) if hits else None,
            emotion_match_rate_base=sum(hits_base) / len(hits_base) if hits_base else None,
            generated=len(replies),
            judge=getattr(detector, "name", type(detector).__name__),
            per_emotion=per_emotion,
            samples=[
                {
                    "context": _last_user(q.messages),
                    "requested": q.emotion.value if q.emotion else None,
                    "adapter": r,
                    "adapter_judged": j.value,
                    "base": b,
                    "base_judged": jb.value,
                }
                for q, r, j, b, jb in list(
                    zip(requests, replies, judged, base_replies, judged_base, strict=True)
                )[:5]
            ],
        )
    if dialogues is not None and config.max_voice > 0:
        report.update(
            voice_report(
                model,
                tokenizer,
                formatter,
                dialogues,
                config=config,
                device=device,
                progress=progress,
            )
        )
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def voice_requests(
    dialogues: Sequence[Dialogue], persona: Persona, split: str, limit: int, seed: int
) -> list[ChatExample]:
    """A seeded sample of reply turns asked of ``persona``, with its run-time system prompt."""
    turns = [(d, t) for d in dialogues for t in range(1, len(d.turns))]
    return [
        dialogue_example(*turns[i], split=split, persona=persona)
        for i in _sample(len(turns), limit, seed)
    ]


def voice_report(
    model: Any,
    tokenizer: Any,
    formatter: ChatFormatter,
    dialogues: Sequence[Dialogue],
    *,
    config: LMEvalConfig,
    device: str,
    progress: bool = True,
) -> dict[str, Any]:
    """How often greedy replies to persona prompts are in the persona's voice, adapter vs base.

    This is the "persona prompts are still obeyed" check: fine-tuning on plain human replies
    can teach a model to ignore the character it is given. Only personas whose voice shows in
    their words are judged (:mod:`training.persona_voice`).
    """
    from core.personas import load_builtin_personas

    rates: dict[str, dict[str, float]] = {}
    samples: dict[str, list[dict[str, str]]] = {}
    for persona in load_builtin_personas():
        if not has_voice_markers(persona.name):
            continue
        requests = voice_requests(dialogues, persona, config.split, config.max_voice, config.seed)

        replies, base_replies = paired_replies(
            model,
            tokenizer,
            formatter,
            requests,
            config=config,
            device=device,
            progress=progress,
            desc=f"voice of {persona.name}",
        )
        rates[persona.name] = {
            "requests": len(requests),
            "rate": sum(in_voice(persona.name, r) for r in replies) / len(replies),
            "rate_base": sum(in_voice(persona.name, r) for r in base_replies) / len(replies),
        }
        samples[persona.name] = [
            {"context": _last_user(q.messages), "adapter": r, "base": b}
            for q, r, b in list(zip(requests, replies, base_replies, strict=True))[:3]
        ]
    if not rates:
        return {}
    return {
        "persona_voice_rate": sum(r["rate"] for r in rates.values()) / len(rates),
        "persona_voice_rate_base": sum(r["rate_base"] for r in rates.values()) / len(rates),
        "per_persona_voice": rates,
        "voice_samples": samples,
    }


def _last_user(messages: Sequence[ChatMessage]) -> str:
    users = [m.content for m in messages[:-1] if m.role == "user"]
    return users[-1] if users else ""


def run_evaluation(
    config: LMEvalConfig, settings: Settings, *, base_model: str | None = None
) -> dict[str, Any]:
    """``personabot eval``: load the served model with its adapter, score it, return the JSON.

    The data is read (and checked) first, then the judge, then the model, so the cheap
    mistakes fail before the expensive load. ``settings`` carry the profile, device, model
    path and adapter exactly as the bot would use them.
    """
    from dataclasses import replace

    from core.generation.local.profiles import (
        build_model_spec,
        default_adapter_dir,
        resolve_profile_name,
    )
    from core.generation.local.transformers_generator import load_model
    from core.mood import create_mood_detector
    from training.train_lm import TrainingError, is_gguf, with_gguf

    examples, dialogues = load_eval_data(config)
    # Unmerged: the base model's figure comes from switching the adapter off.
    spec = replace(build_model_spec(settings), merge_adapter=False)
    if base_model and is_gguf(base_model):
        spec = with_gguf(spec, base_model, settings.resolved_cache_dir)
    if spec.adapter is None:
        folder = default_adapter_dir(settings, resolve_profile_name(settings))
        raise TrainingError(
            "no adapter to evaluate: pass --adapter PATH, or train one with `personabot train` "
            f"(it lands in {folder})."
        )
    wants_judge = dialogues is not None and config.max_generate > 0
    detector = (
        create_mood_detector(config.judge, cache_dir=settings.resolved_cache_dir)
        if wants_judge
        else None
    )
    model, tokenizer, system_role = load_model(spec)
    result = evaluate_adapter(
        model,
        tokenizer,
        system_role=system_role,
        config=config,
        examples=examples,
        dialogues=dialogues,
        device=spec.device,
        detector=detector,
    )
    return {"adapter": str(spec.adapter), "model": spec.source, "profile": spec.profile, **result}


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m training.eval_lm``: ``personabot eval`` without the CLI's frontends, for a
    machine that has only the training dependencies. Settings come from PERSONABOT_* too."""
    import argparse
    import json
    from pathlib import Path

    from core.settings import load_settings

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--profile", default=None)
    parser.add_argument("--base-model", default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--output", type=Path, default=None)
    defaults = LMEvalConfig(data="")
    for name in ("split", "data_format", "judge"):
        parser.add_argument(f"--{name.replace('_', '-')}", default=getattr(defaults, name))
    for name in (
        "max_examples",
        "max_generate",
        "max_voice",
        "batch_size",
        "seq_len",
        "max_new_tokens",
        "seed",
    ):
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name)
        )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from core.errors import PersonabotError
    from training.dailydialog import DatasetError
    from training.train_lm import TrainingError

    overrides = {
        "model_profile": args.profile,
        "model_path": args.base_model,
        "adapter_path": args.adapter,
        "device": args.device,
    }
    config = LMEvalConfig(
        data=args.data,
        split=args.split,
        data_format=args.data_format,
        max_examples=args.max_examples,
        max_generate=args.max_generate,
        max_voice=args.max_voice,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        max_new_tokens=args.max_new_tokens,
        judge=args.judge,
        seed=args.seed,
    )
    try:
        result = run_evaluation(config, load_settings(overrides), base_model=args.base_model)
    except (DatasetError, TrainingError, PersonabotError) as exc:
        parser.exit(2, f"error: {exc}\n")
    if args.output is not None:
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
