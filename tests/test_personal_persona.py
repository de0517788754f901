"""A personal persona end to end on the CPU: export -> dataset -> adapter -> persona -> replies.

The commands run as a user runs them (subprocesses); the engine then serves the new persona
from the same base model as the built-in ones, switching LoRA adapters per request. That the
requests really ran with different adapters is checked against generators that each have
only one of the adapters: greedy decoding must give exactly what each adapter alone gives.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from core.bootstrap import build_engine
from core.errors import GenerationError
from core.generation.local.adapters import ADAPTER_UNAVAILABLE, DEFAULT_ADAPTER, adapter_name
from core.generation.local.profiles import build_model_spec
from core.generation.local.transformers_generator import (
    TransformersGenerator,
    load_transformers_generator,
)
from core.personas import Persona
from core.settings import Settings
from core.types import Author, ChatMessage, ConversationRef, LengthPreset, SamplingParams
from tests.test_cli import personabot

EXPORT = Path(__file__).parent / "data" / "chat_exports" / "whatsapp_android_24h.txt"

# Seconds, not minutes: one optimizer step on two short examples, a small LoRA on two
# projections, and a learning rate high enough that the adapter visibly changes the model.
TRAIN_ONE_STEP = [
    "--no-4bit",
    "--max-steps", "1",
    "--batch-size", "2",
    "--max-train-examples", "2",
    "--seq-len", "128",
    "--lr", "0.05",
    "--lora-r", "4",
    "--lora-alpha", "8",
    "--lora-targets", "q_proj,v_proj",
    "--eval-steps", "0",
    "--save-steps", "0",
    "--no-gradient-checkpointing",
]  # fmt: skip

GREEDY = SamplingParams(temperature=0, max_new_tokens=24, repetition_penalty=1.0)
PROBE = [ChatMessage("user", "Are you coming to the party on Saturday?")]


async def greedy(generator: TransformersGenerator, adapter: str | None = None) -> str:
    return (await generator.generate(PROBE, dataclasses.replace(GREEDY, adapter=adapter))).text


@pytest.mark.model
def test_chat_export_becomes_a_persona_served_beside_the_dailydialog_one(
    tmp_path: Path, model_cache_dir: Path
) -> None:
    dataset = tmp_path / "sam.jsonl"
    adapter = tmp_path / "sam-adapter"
    steps = [
        ["import-chat", str(EXPORT), "--speaker", "Sam", "--output", str(dataset)],
        ["train", "--data", str(dataset), "--output", str(adapter), *TRAIN_ONE_STEP],
        ["persona", "add-adapter", "sam", str(adapter), "--description", "Talks like Sam"],
    ]
    for args in steps:
        done = personabot(args, tmp_path, model_cache_dir, PERSONABOT_DEVICE="cpu")
        assert done.returncode == 0, f"{args[0]}: {done.stderr[-2000:]}"
    assert "Registered persona 'sam'" in done.stdout
    trained = json.loads((adapter / "adapter_config.json").read_text())
    assert trained["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"

    settings = Settings(
        data_dir=tmp_path / "data",
        cache_dir=model_cache_dir,
        model_profile="smollm2-135m",
        device="cpu",
        seed=1234,
        max_prompt_tokens=1024,
    )
    asyncio.run(_serve_both(settings, adapter.resolve()))


async def _serve_both(settings: Settings, adapter: Path) -> None:
    spec = build_model_spec(settings, persona_adapters=True)
    assert spec.adapter is not None and spec.adapter.name == "smollm2-135m-dailydialog"
    generator = await asyncio.to_thread(load_transformers_generator, spec)
    engine = await build_engine(settings, generator=generator)
    try:
        sam = engine.persona_named("sam")
        assert sam.adapter == str(adapter)
        served = generator.adapters.model
        base = served.get_base_model()
        embedding = base.get_input_embeddings().weight.data_ptr()

        sam_chat = ConversationRef("test", "sam-chat")
        friend_chat = ConversationRef("test", "friend-chat")
        await engine.set_persona(sam_chat, "sam")
        for chat in (sam_chat, friend_chat):  # short replies keep the test fast
            await engine.set_length(chat, LengthPreset.SHORT)
        for chat, persona, expected in (
            (sam_chat, "sam", sam.adapter),
            (friend_chat, "friend", None),
            (sam_chat, "sam", sam.adapter),
        ):
            reply = await engine.reply(chat, Author("u1", "Priya"), "coffee later?")
            assert reply.persona == persona and reply.text.strip()
            assert generator.adapters.active == expected  # the adapter this reply ran with

        # Both personas ran on the one base model: loaded once, one adapter added to it.
        assert generator.adapters.model is served
        assert served.get_base_model() is base
        assert base.get_input_embeddings().weight.data_ptr() == embedding
        assert set(served.peft_config) == {DEFAULT_ADAPTER, adapter_name(sam.adapter)}
        assert list(generator.adapters.loaded) == [sam.adapter]

        # What each persona's requests produce is what its adapter alone produces.
        personal_text = await greedy(generator, sam.adapter)
        default_text = await greedy(generator)
        assert personal_text != default_text
        alone = await asyncio.to_thread(
            load_transformers_generator, dataclasses.replace(spec, adapter=adapter)
        )
        try:
            assert await greedy(alone) == personal_text
        finally:
            await alone.aclose()
        assert await greedy(generator) == default_text  # switching back is exact too

        # A persona whose adapter has gone away gets a clear error; the others carry on.
        missing = adapter.parent / "gone"
        shutil.copytree(adapter, missing)
        await engine.create_persona(
            Persona(name="ghost", system_prompt="You are a ghost.", adapter=str(missing))
        )
        shutil.rmtree(missing)
        ghost_chat = ConversationRef("test", "ghost-chat")
        await engine.set_persona(ghost_chat, "ghost")
        with pytest.raises(GenerationError) as caught:
            await engine.reply(ghost_chat, Author("u1", "Priya"), "hello?")
        assert str(caught.value) == ADAPTER_UNAVAILABLE
        after = await engine.reply(friend_chat, Author("u1", "Priya"), "still there?")
        assert after.text.strip() and generator.adapters.active is None
        assert set(served.peft_config) == {DEFAULT_ADAPTER, adapter_name(sam.adapter)}
    finally:
        await engine.aclose()


@pytest.mark.model
def test_add_adapter_refuses_an_adapter_for_another_base_model(
    tmp_path: Path, model_cache_dir: Path
) -> None:
    adapter = tmp_path / "other"
    shutil.copytree(
        Path(__file__).parent.parent / "core" / "adapters" / "smollm2-135m-dailydialog", adapter
    )
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "mistralai/Mistral-7B-Instruct-v0.2"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    done = personabot(
        ["persona", "add-adapter", "other", str(adapter)],
        tmp_path,
        model_cache_dir,
        PERSONABOT_DEVICE="cpu",
    )
    assert done.returncode == 2
    assert "trained on 'mistralai/Mistral-7B-Instruct-v0.2'" in done.stderr
    assert "'HuggingFaceTB/SmolLM2-135M-Instruct'" in done.stderr
    not_adapter = personabot(
        ["persona", "add-adapter", "other", str(tmp_path)],
        tmp_path,
        model_cache_dir,
        PERSONABOT_DEVICE="cpu",
    )
    assert not_adapter.returncode == 2 and "no adapter_config.json" in not_adapter.stderr
    listed = personabot(["persona", "list"], tmp_path, model_cache_dir, PERSONABOT_DEVICE="cpu")
    assert listed.returncode == 0 and "other" not in listed.stdout


def test_adapters_switch_on_a_model_loaded_without_one(tmp_path: Path) -> None:
    """No default adapter: the first persona adapter wraps the model, and requests without
    one run with the adapter layers off, which is exactly the bare model again."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from core.generation.local.adapters import AdapterSet

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path / "base")

    def fresh() -> Any:
        model: Any = LlamaForCausalLM.from_pretrained(tmp_path / "base")
        return model.eval()

    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )  # random, so the adapter changes the outputs
    get_peft_model(fresh(), lora).save_pretrained(str(tmp_path / "persona"))
    persona = str(tmp_path / "persona")
    ids = torch.tensor([[1, 5, 9, 13, 17]])

    def logits(model: object) -> torch.Tensor:
        with torch.inference_mode():
            return model(input_ids=ids).logits  # type: ignore[operator, no-any-return]

    bare = logits(fresh())
    alone = logits(PeftModel.from_pretrained(fresh(), persona))
    adapters = AdapterSet(fresh(), default=False)
    assert torch.equal(logits(adapters.activate(None)), bare)
    assert torch.allclose(logits(adapters.activate(persona)), alone)
    assert not torch.allclose(alone, bare)
    assert torch.equal(logits(adapters.activate(None)), bare)
    assert adapters.active is None and list(adapters.loaded) == [persona]
    with pytest.raises(GenerationError, match="could not be loaded"):
        adapters.activate(str(tmp_path / "missing"))
    assert torch.allclose(logits(adapters.activate(persona)), alone)  # still served
    same = str(tmp_path / "base" / ".." / "persona")  # one folder, two spellings: loaded once
    assert torch.allclose(logits(adapters.activate(same)), alone)
    assert set(adapters.loaded.values()) == {adapter_name(persona)}
    assert set(adapters.model.peft_config) == {adapter_name(persona)}
