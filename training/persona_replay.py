"""Persona replay: the base model's own in-character replies, mixed into fine-tuning.

Why: DailyDialog's replies are plain people talking. Trained on them alone, an adapter learns
that the system prompt's character does not matter (the target never sounds like a pirate),
and the shipped adapter duly lost the personas' voices. Replay keeps that skill: the base
model, which does follow persona prompts, answers a sample of DailyDialog contexts in the
voice of each built-in persona, with the same system prompt (persona, mood guidance,
requested emotion, length line) the engine sends at run time and each persona's own
sampling settings; those replies become extra training examples (``personabot train
--extra-data``). The adapter then learns DailyDialog's short, mood-following turns without
unlearning to stay in character. This is self-distillation, the usual cure for "fine-tuning
made the model forget its instructions" when no human persona data exists.

    personabot persona-replay --data ../shared/data/dailydialog --output replay.jsonl
    python -m training.persona_replay --data DD --output replay.jsonl --device cuda
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.personas import Persona, load_builtin_personas
from core.types import ChatMessage
from training.dailydialog import Dialogue, load_split
from training.persona_voice import has_voice_markers, in_voice
from training.sft_data import ChatExample, ChatFormatter, dialogue_example

log = logging.getLogger(__name__)

_SENTENCE = re.compile(r"^.*[.!?…](?:[\"')\]]*)", re.DOTALL)
_ROLE_LINE = re.compile(r"\n\s*(?:user|assistant|system|human|ai)\s*:", re.IGNORECASE)


class ReplayError(ValueError):
    """The replay cannot be made as asked; the message says what to change."""


@dataclass
class ReplayConfig:
    """What to generate; written beside the output (``<output>.config.json``)."""

    data: str
    output: str
    split: str = "train"
    examples: int = 12000
    """Replies to generate, spread evenly over the personas."""
    personas: list[str] | None = None
    """Persona names (default: every built-in persona)."""
    profile: str = "smollm2-135m"
    base_model: str | None = None
    device: str = "auto"
    batch_size: int = 64
    seq_len: int = 512
    max_new_tokens: int = 80
    min_words: int = 3
    voice_tries: int = 3
    """Samples per request for personas with voice markers (pirate, bard): the first reply
    in voice is kept and a request with none is dropped, so the replay never teaches the
    adapter to answer a pirate prompt like a plain person."""
    seed: int = 42
    cache_dir: str | None = None
    progress: bool = True


def clean_reply(text: str) -> str | None:
    """The generated reply as a training target, or None when it is unusable.

    Drops what the base model writes after its own turn (an invented "User:" line), and cuts
    a reply that ran out of tokens mid-sentence back to its last full sentence, so the
    adapter never learns to stop mid-thought.
    """
    text = text.strip()
    role = _ROLE_LINE.search(text)
    if role:
        text = text[: role.start()].rstrip()
    if text and text[-1] not in ".!?…\"')]*":
        whole = _SENTENCE.match(text)
        text = whole.group(0).rstrip() if whole else ""
    return text or None


def replay_requests(
    dialogues: Sequence[Dialogue],
    personas: Sequence[Persona],
    count: int,
    *,
    split: str = "train",
    seed: int = 42,
) -> list[tuple[Persona, ChatExample]]:
    """A seeded sample of reply turns, each asked of one persona (round robin).

    The examples are built exactly like the DailyDialog training examples, with the
    persona's system prompt in place of the neutral one; their gold reply is replaced later.
    """
    if not personas:
        raise ReplayError("no personas to replay")
    turns = [(d, t) for d in dialogues for t in range(1, len(d.turns))]
    if not turns:
        raise ReplayError("the data holds no reply turns")
    rng = random.Random(seed)
    chosen = rng.sample(range(len(turns)), min(count, len(turns)))
    return [
        (persona, dialogue_example(*turns[i], split=split, persona=persona))
        for persona, i in zip(
            (personas[k % len(personas)] for k in range(len(chosen))), chosen, strict=True
        )
    ]


def with_reply(example: ChatExample, reply: str, persona: Persona) -> ChatExample:
    """``example`` with its last message replaced by ``reply``."""
    return ChatExample(
        messages=(*example.messages[:-1], ChatMessage("assistant", reply)),
        source=f"persona-replay:{persona.name}:{example.source}",
        emotion=example.emotion,
        act=example.act,
        previous=example.previous,
    )


def write_chat_jsonl(rows: Sequence[tuple[Persona, ChatExample]], path: Path) -> None:
    """The examples as chat-format JSONL (what ``personabot train --extra-data`` reads),
    written to a temporary file first so an interrupted run leaves no half file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8") as out:
        for persona, example in rows:
            record = {
                "messages": [{"role": m.role, "content": m.content} for m in example.messages],
                "persona": persona.name,
                "source": example.source,
            }
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(partial, path)


def _personas(names: Sequence[str] | None) -> list[Persona]:
    builtin = {p.name: p for p in load_builtin_personas()}
    if not names:
        return list(builtin.values())
    unknown = [n for n in names if n not in builtin]
    if unknown:
        raise ReplayError(
            f"unknown persona(s) {', '.join(unknown)}; built-in: {', '.join(sorted(builtin))}"
        )
    return [builtin[n] for n in names]


def make_replay(config: ReplayConfig) -> dict[str, Any]:
    """Generate the replay file; returns (and writes beside it) what was made."""
    if config.examples < 1:
        raise ReplayError("--examples must be at least 1")
    if config.max_new_tokens < 8:
        raise ReplayError("--max-new-tokens must be at least 8")
    if config.voice_tries < 1:
        raise ReplayError("--voice-tries must be at least 1")
    personas = _personas(config.personas)
    dialogues = load_split(config.data, config.split)  # fails fast, before torch
    requests = replay_requests(
        dialogues, personas, config.examples, split=config.split, seed=config.seed
    )

    import torch
    from transformers import set_seed

    from training.eval_lm import generate_replies
    from training.train_lm import load_for_training, resolve_base_model, resolve_device

    started = time.perf_counter()
    set_seed(config.seed)
    device = resolve_device(config.device)
    source, base_name, system_role = resolve_base_model(
        config.profile, config.base_model, config.cache_dir
    )
    model, tokenizer = load_for_training(source, load_in_4bit=False, device=device)
    model.eval()
    formatter = ChatFormatter(tokenizer, system_role=system_role)
    kept: list[tuple[Persona, ChatExample]] = []
    dropped = out_of_voice = 0
    for persona in personas:
        pending = [example for p, example in requests if p is persona]
        judged = has_voice_markers(persona.name)

        def self_check(reply: str, name: str = persona.name, judged: bool = judged) -> bool:
            long_enough = len(reply.split()) >= config.min_words
            return long_enough and (not judged or in_voice(name, reply))

        for attempt in range(config.voice_tries if judged else 1):
            if not pending:
                break
            replies = generate_replies(
                model,
                tokenizer,
                formatter,
                pending,
                device=device,
                batch_size=config.batch_size,
                seq_len=config.seq_len,
                max_new_tokens=config.max_new_tokens,
                progress=config.progress,
                desc=f"replay ({persona.name}, try {attempt + 1})",
                sampling={
                    "temperature": persona.temperature,
                    "top_p": persona.top_p,
                    "top_k": persona.top_k,
                    "repetition_penalty": persona.repetition_penalty,
                },
            )
            retry: list[ChatExample] = []
            for example, reply in zip(pending, replies, strict=True):
                cleaned = clean_reply(reply)
                if cleaned is not None and self_check(cleaned):
                    kept.append((persona, with_reply(example, cleaned, persona)))
                else:
                    retry.append(example)
            pending = retry
        if judged:
            out_of_voice += len(pending)
        else:
            dropped += len(pending)
    if not kept:
        raise ReplayError("every generated reply was unusable; check the base model")
    output = Path(config.output)
    write_chat_jsonl(kept, output)
    report = {
        "output": str(output),
        "base_model": base_name,
        "device": device,
        "requested": len(requests),
        "kept": len(kept),
        "dropped_unusable": dropped,
        "dropped_out_of_voice": out_of_voice,
        "per_persona": {p.name: sum(1 for q, _ in kept if q is p) for p in personas},
        "seconds": round(time.perf_counter() - started, 1),
        "torch": torch.__version__,
        "config": asdict(config),
    }
    output.with_name(output.name + ".config.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m training.persona_replay``: ``personabot persona-replay`` where only the
    training dependencies are installed."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--data", required=True, help="DailyDialog folder or split .zip")
    parser.add_argument("--output", required=True, help="chat-format JSONL to write")
    parser.add_argument("--split", default="train")
    parser.add_argument("--examples", type=int, default=12000)
    parser.add_argument("--personas", default=None, help="comma-separated (default: all)")
    parser.add_argument("--profile", default="smollm2-135m")
    parser.add_argument("--base-model", default=None, help="local folder, Hub id or .gguf")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=80)
    parser.add_argument("--voice-tries", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    from core.errors import PersonabotError
    from training.dailydialog import DatasetError

    config = ReplayConfig(
        data=args.data,
        output=args.output,
        split=args.split,
        examples=args.examples,
        personas=[n.strip() for n in args.personas.split(",")] if args.personas else None,
        profile=args.profile,
        base_model=args.base_model,
        device=args.device,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        voice_tries=args.voice_tries,
        seed=args.seed,
        cache_dir=args.cache_dir,
        progress=not args.no_progress,
    )
    try:
        report = make_replay(config)
    except (ReplayError, DatasetError, PersonabotError) as exc:
        parser.exit(2, f"error: {exc}\n")
    print(json.dumps({k: v for k, v in report.items() if k != "config"}, indent=2))


if __name__ == "__main__":
    main()
