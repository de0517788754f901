"""Supervised chat examples: DailyDialog loading, example building, label masking, Alpaca files."""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path
from typing import Any

import pytest

from core.generation.local.profiles import build_model_spec
from core.generation.local.transformers_generator import resolve_weights
from core.personas import LENGTH_INSTRUCTIONS, load_builtin_personas
from core.types import ChatMessage, LengthPreset, Mood
from tests.conftest import DAILYDIALOG
from training.dailydialog import DatasetError, load_split
from training.sft_data import (
    DEFAULT_SYSTEM_PROMPT,
    IGNORE_INDEX,
    REPLY_ACTS,
    REPLY_EMOTIONS,
    ChatExample,
    ChatFormatter,
    dialogue_examples,
    instruction_examples,
    length_preset_for,
    load_examples,
    pad_batch,
    read_instructions,
)

# Mistral-7B-Instruct-v0.2's chat template (no system role; strict alternation).
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}{% endfor %}"
)

# Three dialogues; the second has three utterances but only two labels (like dialogue 7851 of
# the official training split).
DIALOGUES = [
    "Say , Jim , how about going for a few beers after dinner ? __eou__ "
    "You know that is tempting but is really not good for our fitness . __eou__ "
    "What do you mean ? It will help us to relax . __eou__",
    "Hello . __eou__ Hi ! __eou__ How are you ? __eou__",
    "I lost my job today . __eou__ Oh no , I'm so sorry ! __eou__",
]
EMOTIONS = ["0 0 4", "0 0", "5 5"]
ACTS = ["3 4 2", "1 1", "1 4"]


def write_split(folder: Path, split: str = "test", *, as_zip: bool = True) -> Path:
    """A DailyDialog split in the official layout, as a zip or extracted files."""
    files = {
        f"{split}/dialogues_{split}.txt": "\n".join(DIALOGUES) + "\n",
        f"{split}/dialogues_emotion_{split}.txt": "\n".join(EMOTIONS) + "\n",
        f"{split}/dialogues_act_{split}.txt": "\n".join(ACTS) + "\n",
    }
    folder.mkdir(parents=True, exist_ok=True)
    if as_zip:
        archive = folder / f"{split}.zip"
        with zipfile.ZipFile(archive, "w") as bundle:
            for name, text in files.items():
                bundle.writestr(name, text)
        return archive
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The offline model's own tokenizer and chat template (converted once, cached)."""
    from transformers import AutoTokenizer

    from core.settings import Settings
    from tests.conftest import REPO

    cache = REPO / ".pytest_cache" / "models"
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("data"),
        cache_dir=cache,
        model_profile="smollm2-135m",
        device="cpu",
        adapter_path=Path("none"),
    )
    return AutoTokenizer.from_pretrained(resolve_weights(build_model_spec(settings)))


# -- loading --------------------------------------------------------------------------------


@pytest.mark.parametrize("as_zip", [True, False], ids=["zip", "folder"])
def test_unseen_split_loads_and_misaligned_dialogue_is_skipped(
    tmp_path: Path, as_zip: bool, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_split(tmp_path, "test", as_zip=as_zip)
    with caplog.at_level(logging.WARNING):
        dialogues = load_split(path, "test")
    assert [d.index for d in dialogues] == [0, 2]
    assert "dialogue 1" in caplog.text and "skipped" in caplog.text
    first = dialogues[0].turns
    assert first[0].text == "Say, Jim, how about going for a few beers after dinner?"
    assert first[2].emotion is Mood.HAPPINESS and first[2].act == "question"
    # The directory holding test.zip works too.
    assert len(load_split(tmp_path, "test")) == 2


def test_missing_split_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"test\.zip"):
        load_split(tmp_path, "test")
    with pytest.raises(DatasetError, match="does not exist"):
        load_examples(tmp_path / "nowhere.zip", "test")


@pytest.mark.skipif(not (DAILYDIALOG / "train.zip").is_file(), reason="DailyDialog not present")
def test_official_training_split_skips_its_misaligned_dialogue() -> None:
    dialogues = load_split(DAILYDIALOG / "train.zip", "train")
    assert len(dialogues) == 11_117
    assert 7851 not in {d.index for d in dialogues}
    examples = dialogue_examples(dialogues, split="train")
    assert len(examples) == sum(len(d.turns) - 1 for d in dialogues)
    assert not any(e.source.startswith("dailydialog:train:7851:") for e in examples)


# -- examples -------------------------------------------------------------------------------


def test_each_turn_after_the_first_is_a_reply_to_the_turns_before(tmp_path: Path) -> None:
    examples = load_examples(write_split(tmp_path), "test")
    assert len(examples) == 2 + 1  # turns 1-2 of dialogue 0, turn 1 of dialogue 2
    third = examples[1]  # dialogue 0, turn 2: a happy question
    # Roles alternate backwards from the reply, so the dialogue's opener is the assistant's.
    assert [m.role for m in third.messages] == ["system", "assistant", "user", "assistant"]
    assert third.reply == "What do you mean? It will help us to relax."
    assert third.previous == "You know that is tempting but is really not good for our fitness."
    assert third.emotion is Mood.HAPPINESS and third.act == "question"
    system = third.messages[0].content
    assert system.startswith(DEFAULT_SYSTEM_PROMPT)
    assert REPLY_EMOTIONS[Mood.HAPPINESS] in system and "happy" in system
    assert REPLY_ACTS["question"] in system
    assert LENGTH_INSTRUCTIONS[LengthPreset.SHORT] in system
    assert "seems to feel" not in system  # the previous turn has no emotion

    sad = examples[2]  # "Oh no, I'm so sorry!" answering a sad message
    assert [m.role for m in sad.messages] == ["system", "user", "assistant"]
    assert "The user seems to feel sadness right now." in sad.messages[0].content
    assert REPLY_EMOTIONS[Mood.SADNESS] in sad.messages[0].content

    with_first = load_examples(write_split(tmp_path), "test", include_first=True)
    assert len(with_first) == 3 + 2
    assert [m.role for m in with_first[0].messages] == ["system", "assistant"]


def test_persona_prompt_and_mood_guidance_match_the_run_time_wording(tmp_path: Path) -> None:
    friend = next(p for p in load_builtin_personas() if p.name == "friend")
    examples = load_examples(write_split(tmp_path), "test", persona=friend)
    system = examples[2].messages[0].content
    assert system.startswith(friend.system_prompt.strip())
    guidance = friend.mood_guidance(Mood.SADNESS)
    assert guidance is not None
    assert f"The user seems to feel sadness right now. {guidance}" in system


def test_length_instruction_follows_the_reply() -> None:
    assert length_preset_for("Sure.") is LengthPreset.SHORT
    assert length_preset_for("One. Two. Three.") is LengthPreset.MEDIUM
    assert length_preset_for(" ".join(["Yes."] * 8)) is LengthPreset.LONG


# -- tokenisation and masking ----------------------------------------------------------------


def _unmasked(encoded: Any) -> list[int]:
    return [t for t, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != -100]


def test_labels_cover_only_the_reply_and_end_of_turn(tmp_path: Path, tokenizer: Any) -> None:
    formatter = ChatFormatter(tokenizer)
    assert formatter.system_role  # SmolLM2's ChatML template has one
    assert formatter.end_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    for example in load_examples(write_split(tmp_path), "test"):
        encoded = formatter.encode(example, max_length=512)
        labelled = _unmasked(encoded)
        assert tokenizer.decode(labelled) == example.reply + "<|im_end|>"
        # Everything before the reply is exactly the prompt the generator would send.
        prompt = encoded.input_ids[: len(encoded.input_ids) - len(labelled)]
        assert prompt == formatter.prompt_ids(example.messages[:-1])
        assert tokenizer.decode(prompt).endswith("<|im_start|>assistant\n")
        assert example.messages[0].content in tokenizer.decode(prompt)
        # Batched encoding gives the same result.
        assert formatter.encode_all([example], 512)[0] == encoded


def test_parallel_rendering_gives_the_same_encoding(tmp_path: Path, tokenizer: Any) -> None:
    formatter = ChatFormatter(tokenizer)
    examples = load_examples(write_split(tmp_path), "test", include_first=True) * 240
    serial = formatter.encode_all(examples, 512, workers=1)
    assert formatter.encode_all(examples, 512, workers=2) == serial
    assert len(serial) == 1200


def test_template_without_system_role_folds_it_into_the_first_user_turn(
    tmp_path: Path, tokenizer: Any
) -> None:
    import copy

    mistral = copy.deepcopy(tokenizer)
    mistral.chat_template = MISTRAL_TEMPLATE
    formatter = ChatFormatter(mistral)
    assert not formatter.system_role
    examples = load_examples(write_split(tmp_path), "test", include_first=True)
    for example in examples:  # includes an opening turn and one starting with the assistant
        encoded = formatter.encode(example, max_length=512)
        assert mistral.decode(_unmasked(encoded)) == example.reply + mistral.eos_token
        text = mistral.decode(encoded.input_ids)
        assert text.startswith(f"{mistral.bos_token}[INST] {example.messages[0].content}")
        assert "system" not in text


def sentencepiece_style_tokenizer() -> Any:
    """A toy tokenizer that marks word starts like Llama's and Mistral's (``▁Hello``)."""
    from tokenizers import Tokenizer, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.normalizer = normalizers.Sequence(
        [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]
    )
    corpus = ["Hello there, how are you? [INST] [/INST] Be nice.", "Fine, thank you."] * 50
    core.train_from_iterator(
        corpus, trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"])
    )
    fast: Any = PreTrainedTokenizerFast  # transformers' constructor is unannotated
    tokenizer = fast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    # Later Mistral templates put a space between "[/INST]" and the reply.
    tokenizer.chat_template = MISTRAL_TEMPLATE.replace(
        "{{ message['content'] + eos_token }}", "{{ ' ' + message['content'] + eos_token }}"
    )
    return tokenizer


def test_reply_tokens_have_no_stray_word_mark_with_sentencepiece_tokenizers() -> None:
    tokenizer = sentencepiece_style_tokenizer()
    formatter = ChatFormatter(tokenizer)
    assert formatter.dummy_prefix and not formatter.system_role
    example = ChatExample(
        messages=(
            ChatMessage("system", "Be nice."),
            ChatMessage("user", "Hello"),
            ChatMessage("assistant", "Fine, thank you."),
        ),
        source="test",
    )
    labelled = _unmasked(formatter.encode(example, 128))
    alone = tokenizer("Fine, thank you.", add_special_tokens=False)["input_ids"]
    assert labelled == [*alone, tokenizer.eos_token_id]
    assert tokenizer.convert_ids_to_tokens(labelled[:1])[0] != "\u2581"


def test_long_examples_drop_the_oldest_turns_then_keep_the_end(tokenizer: Any) -> None:
    formatter = ChatFormatter(tokenizer)
    turns = [ChatMessage("user" if i % 2 else "assistant", f"turn {i} " * 20) for i in range(9)]
    example = ChatExample(
        messages=(ChatMessage("system", "Be nice."), *turns, ChatMessage("assistant", "The end.")),
        source="test",
    )
    full = formatter.encode(example, 4096)
    short = formatter.encode(example, 200)
    assert len(full) > 200 >= len(short)
    text = tokenizer.decode(short.input_ids)
    assert text.startswith("<|im_start|>system\nBe nice.")  # the instruction survives
    assert "turn 8" in text and "turn 0" not in text  # the newest history survives
    assert tokenizer.decode(_unmasked(short)) == "The end.<|im_end|>"
    tiny = formatter.encode(example, 8)  # not even the instruction fits: keep the end
    assert len(tiny) == 8 and tiny.input_ids[-1] == formatter.end_id


def test_padding_masks_labels_on_either_side() -> None:
    from training.sft_data import TokenizedExample

    batch = [TokenizedExample([5, 6, 7], [-100, 6, 7]), TokenizedExample([8], [8])]
    right = pad_batch(batch, pad_id=0)
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert right["labels"].tolist() == [[-100, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    left = pad_batch(batch, pad_id=0, left=True)
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


# -- Alpaca-style data ----------------------------------------------------------------------


RECORDS = [
    {"instruction": "What is the capital of France?", "input": "", "output": "Paris."},
    {"instruction": "Translate to German.", "input": "Good morning", "output": "Guten Morgen"},
]


def test_alpaca_json_and_jsonl_give_the_same_examples(tmp_path: Path, tokenizer: Any) -> None:
    as_json = tmp_path / "qa.json"
    as_json.write_text(json.dumps(RECORDS))
    as_jsonl = tmp_path / "qa.jsonl"
    as_jsonl.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n\n")
    from_json = load_examples(as_json, "ignored")
    from_jsonl = load_examples(as_jsonl, "ignored")
    assert [e.messages for e in from_json] == [e.messages for e in from_jsonl]
    second = from_json[1].messages
    assert [m.role for m in second] == ["user", "assistant"]
    assert second[0].content == "Translate to German.\n\nGood morning"
    assert from_jsonl[1].source.endswith("qa.jsonl, line 2")
    encoded = ChatFormatter(tokenizer).encode(from_json[0], 256)
    assert tokenizer.decode(_unmasked(encoded)) == "Paris.<|im_end|>"
    mentor = next(p for p in load_builtin_personas() if p.name == "mentor")
    with_persona = instruction_examples(read_instructions(as_json), persona=mentor)
    assert with_persona[0].messages[0] == ChatMessage("system", mentor.system_prompt.strip())


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            '{"instruction": "a", "output": "b"}\n{"instruction": "c"\n',
            r"qa\.jsonl, line 2: invalid",
        ),
        ('{"instruction": "a", "output": "b"}\n\n{"instruction": "c"}\n', r"line 3: 'output'"),
        ('{"instruction": "a", "output": "b"}\n["not", "an", "object"]\n', r"line 2: expected"),
        ('{"instruction": 3, "output": "b"}\n', r"line 1: 'instruction' must be a string"),
        ("\n\n", "holds no records"),
    ],
)
def test_bad_jsonl_lines_are_named(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_text(content)
    with pytest.raises(DatasetError, match=expected):
        read_instructions(path)


def test_bad_json_names_the_item_or_line(tmp_path: Path) -> None:
    path = tmp_path / "qa.json"
    path.write_text(json.dumps([RECORDS[0], {"instruction": "x", "output": ""}]))
    with pytest.raises(DatasetError, match=r"qa\.json, item 1: 'output' is missing or empty"):
        read_instructions(path)
    path.write_text('[\n  {"instruction": "x",\n  "output": }\n]')
    with pytest.raises(DatasetError, match=r"qa\.json, line 3: invalid JSON"):
        read_instructions(path)
    path.write_text('{"instruction": "x", "output": "y"}')
    with pytest.raises(DatasetError, match="JSON array"):
        read_instructions(path)
