"""Persona replay and the persona-voice check: the data that keeps personas in character."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.personas import load_builtin_personas
from tests.test_sft_data import write_split
from tests.test_train_lm import personabot, smollm2_dir, tiny_config, tiny_model
from training.dailydialog import load_split
from training.persona_replay import (
    ReplayConfig,
    ReplayError,
    clean_reply,
    make_replay,
    replay_requests,
)
from training.persona_voice import has_voice_markers, in_voice
from training.sft_data import DEFAULT_SYSTEM_PROMPT, read_chat_examples
from training.train_lm import train_lm

__all__ = ["smollm2_dir", "tiny_model"]  # module fixtures shared with test_train_lm

PERSONAS = {p.name: p for p in load_builtin_personas()}


@pytest.mark.parametrize(
    ("persona", "text", "expected"),
    [
        ("pirate", "Arr, that be a fine plan, matey.", True),
        ("pirate", "Aye! Ye have the makings of a captain.", True),
        ("pirate", "Shiver me timbers, what a tale!", True),
        ("pirate", "Sure, I will see you tomorrow at the office.", False),
        ("pirate", "Yesterday the yellow bus was late.", False),  # "ye" inside words
        ("bard", "Prithee, good sir, tell me more.", True),
        ("bard", "\u2019Tis a fine morning for a walk.", True),  # curly apostrophe
        ("bard", "This is the thing I told you about.", False),
    ],
)
def test_voice_markers_judge_whole_words(persona: str, text: str, expected: bool) -> None:
    assert in_voice(persona, text) is expected


def test_only_stylised_personas_are_judged() -> None:
    judged = {name for name in PERSONAS if has_voice_markers(name)}
    assert judged == {"pirate", "bard"}
    with pytest.raises(KeyError):
        in_voice("friend", "Hello there.")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Sounds great! See you then.", "Sounds great! See you then."),
        ("Sure thing. I'll bring the map and the", "Sure thing."),
        ("Of course, matey.\nUser: and then what?", "Of course, matey."),
        ('  "Aye," said he.  ', '"Aye," said he.'),
        ("no sentence end at all", None),
        ("   ", None),
    ],
)
def test_replies_are_cut_to_whole_sentences_of_one_speaker(raw: str, expected: str | None) -> None:
    assert clean_reply(raw) == expected


def test_requests_cycle_the_personas_with_their_run_time_prompts(tmp_path: Path) -> None:
    dialogues = load_split(write_split(tmp_path, "train"), "train")
    chosen = [PERSONAS["pirate"], PERSONAS["friend"]]
    requests = replay_requests(dialogues, chosen, 4, seed=7)
    # Only 3 reply turns exist in the sample data (dialogue 2 is misaligned and skipped).
    assert len(requests) == 3
    assert [p.name for p, _ in requests] == ["pirate", "friend", "pirate"]
    for persona, example in requests:
        system = example.messages[0]
        assert system.role == "system" and system.content.startswith(persona.system_prompt)
        assert DEFAULT_SYSTEM_PROMPT not in system.content
        assert example.messages[-1].role == "assistant"
    assert [e.source for _, e in replay_requests(dialogues, chosen, 4, seed=7)] == [
        e.source for _, e in requests
    ]
    with pytest.raises(ReplayError):
        replay_requests(dialogues, [], 4)


def test_extra_chat_data_joins_the_training_examples(tmp_path: Path, tiny_model: Path) -> None:
    data = write_split(tmp_path / "dd", "train").parent
    write_split(tmp_path / "dd", "validation")
    extra = tmp_path / "replay.jsonl"
    record = {
        "messages": [
            {"role": "system", "content": PERSONAS["pirate"].system_prompt},
            {"role": "user", "content": "How was the trip?"},
            {"role": "assistant", "content": "Arr, rough seas all the way, matey."},
        ]
    }
    extra.write_text("\n".join(json.dumps(record) for _ in range(5)) + "\n")
    metrics = train_lm(
        tiny_config(
            data,
            tmp_path / "out",
            tiny_model,
            extra_data=[str(extra)],
            max_steps=2,
            eval_steps=0,
            save_steps=0,
        )
    )
    assert metrics["train_examples"] == 3 + 5 and metrics["eval_examples"] == 3
    assert metrics["config"]["extra_data"] == [str(extra)]


@pytest.mark.model
def test_replay_file_holds_in_character_replies_that_train_reads(
    tmp_path: Path, smollm2_dir: Path
) -> None:
    data = write_split(tmp_path / "dd", "train")
    output = tmp_path / "replay.jsonl"
    report = make_replay(
        ReplayConfig(
            data=str(data),
            output=str(output),
            examples=3,
            personas=["friend", "pirate"],
            base_model=str(smollm2_dir),
            device="cpu",
            batch_size=2,
            max_new_tokens=24,
            voice_tries=2,
            progress=False,
        )
    )
    assert report["requested"] == 3
    kept = report["kept"]
    assert kept + report["dropped_unusable"] + report["dropped_out_of_voice"] == 3
    assert sum(report["per_persona"].values()) == kept
    assert json.loads((tmp_path / "replay.jsonl.config.json").read_text())["kept"] == kept
    examples = read_chat_examples(output)
    assert len(examples) == kept
    for line, example in zip(output.read_text().splitlines(), examples, strict=True):
        persona = json.loads(line)["persona"]
        assert example.messages[0].content.startswith(PERSONAS[persona].system_prompt)
        assert clean_reply(example.reply) == example.reply
        if persona == "pirate":
            assert in_voice("pirate", example.reply)
    assert not (tmp_path / "replay.jsonl.partial").exists()


def test_persona_replay_command_explains_itself_and_rejects_bad_input(tmp_path: Path) -> None:
    done = personabot(["persona-replay", "--help"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "--extra-data" in done.stdout and "--examples" in done.stdout
    data = write_split(tmp_path / "dd", "train")
    done = personabot(
        [
            "persona-replay",
            "--data",
            str(data),
            "--output",
            str(tmp_path / "r.jsonl"),
            "--personas",
            "pirate,wizard",
        ],
        tmp_path,
    )
    assert done.returncode == 2 and "unknown persona(s) wizard" in done.stderr
    assert "Traceback" not in done.stderr
    done = personabot(
        ["persona-replay", "--data", str(tmp_path / "nowhere"), "--output", "x.jsonl"], tmp_path
    )
    assert done.returncode == 2 and "does not exist" in done.stderr
