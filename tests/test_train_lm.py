"""Fine-tuning end to end on the CPU: a tiny model learns, resumes, and its adapter serves.

The loss test uses a tiny random Llama with the offline model's tokenizer and chat template
(seconds per run); the engine and CLI tests train one step of the real offline model, because
only a real model gives the engine a meaningful reply to check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from core.bootstrap import build_engine
from core.generation.local.profiles import build_model_spec
from core.generation.local.transformers_generator import resolve_weights
from core.settings import Settings
from core.types import Author, ConversationRef
from tests.conftest import DAILYDIALOG, REPO, SettingsFactory
from tests.test_sft_data import write_split
from training.train_lm import LMTrainConfig, TrainingError, train_lm

TINY_BENCHMARK = "--tiny --steps 2 --warmup 1 --seq-len 32 --batch-size 2 --quiet"
ONE_STEP = (
    "--no-4bit --max-steps 1 --batch-size 1 --max-train-examples 2 --max-eval-examples 2 "
    "--seq-len 128"
)
SMALL_EVAL = (
    "--split validation --max-examples 4 --max-generate 2 --max-voice 2 --max-new-tokens 12 "
    "--judge lexicon"
)

needs_dailydialog = pytest.mark.skipif(
    not (DAILYDIALOG / "train.zip").is_file(), reason="DailyDialog not present"
)


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The offline model converted to a plain transformers folder (cached across sessions)."""
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("data"),
        cache_dir=REPO / ".pytest_cache" / "models",
        model_profile="smollm2-135m",
        device="cpu",
        adapter_path=Path("none"),
    )
    return Path(resolve_weights(build_model_spec(settings)))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    """A 2-layer random Llama with SmolLM2's tokenizer: trains in milliseconds per step.

    A larger initialiser range than usual gives its logits enough scale for a LoRA to move
    the loss within a few dozen steps.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        initializer_range=0.3,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_config(data: Path, output: Path, model: Path, **overrides: Any) -> LMTrainConfig:
    values: dict[str, Any] = {
        "data": str(data),
        "output": str(output),
        "base_model": str(model),
        "device": "cpu",
        "max_train_examples": 8,
        "max_eval_examples": 8,
        "max_steps": 30,
        "batch_size": 4,
        "lr": 1e-2,
        "eval_steps": 15,
        "log_steps": 5,
        "seq_len": 256,
        "progress": False,
    }
    values.update(overrides)
    return LMTrainConfig(**values)


def test_qlora_loss_goes_down_and_the_run_resumes(tmp_path: Path, tiny_model: Path) -> None:
    data = write_split(tmp_path / "dd", "train").parent
    write_split(tmp_path / "dd", "validation")
    output = tmp_path / "adapter"
    config = tiny_config(data, output, tiny_model, eval_data=None)
    metrics = train_lm(config)

    losses = [record["loss"] for record in metrics["train_loss"]]
    assert len(losses) == 6
    assert losses[-1] < losses[0] * 0.6, losses  # 3 examples seen 40 times: memorised
    assert metrics["load_in_4bit"] and metrics["optimizer"] == "adamw"
    assert [e["step"] for e in metrics["eval"]] == [0, 15, 30]
    assert metrics["base_eval_perplexity"] == pytest.approx(metrics["eval"][0]["perplexity"])
    assert metrics["best_step"] in (15, 30)
    assert metrics["train_examples"] == 3 and metrics["eval_examples"] == 3
    assert metrics["tokens_per_s"] > 0

    adapter_config = json.loads((output / "adapter_config.json").read_text())
    assert adapter_config["r"] == 16 and adapter_config["lora_alpha"] == 32
    assert adapter_config["lora_dropout"] == pytest.approx(0.05)
    assert set(adapter_config["target_modules"]) == set(config.lora_targets)
    assert (output / "adapter_model.safetensors").is_file()
    assert json.loads((output / "train_config.json").read_text()) == asdict(config)
    saved = json.loads((output / "metrics.json").read_text())
    assert saved["train_loss"] == metrics["train_loss"]
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == [
        "step-000015",
        "step-000030",
    ]

    # Resuming continues the same run: the history is kept and only the new steps run.
    more = train_lm(tiny_config(data, output, tiny_model, max_steps=40, resume="last"))
    assert more["steps"] == 40
    assert more["train_loss"][: len(losses)] == metrics["train_loss"]
    assert [r["step"] for r in more["train_loss"]][-2:] == [35, 40]
    with pytest.raises(TrainingError, match="raise --max-steps"):
        train_lm(tiny_config(data, output, tiny_model, max_steps=40, resume="last"))


def test_alpaca_file_trains_unquantised_with_a_held_out_slice(
    tmp_path: Path, tiny_model: Path
) -> None:
    records = [
        {"instruction": f"What is {i} plus {i}?", "input": "", "output": f"It is {2 * i}."}
        for i in range(40)
    ]
    data = tmp_path / "maths.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in records))
    metrics = train_lm(
        tiny_config(
            data,
            tmp_path / "out",
            tiny_model,
            load_in_4bit=False,
            max_train_examples=None,
            max_steps=4,
            eval_steps=0,
            save_steps=0,
            lora_targets=["q_proj", "v_proj", "no_such_layer"],
        )
    )
    assert metrics["train_examples"] == 38 and metrics["eval_examples"] == 2
    assert [e["step"] for e in metrics["eval"]] == [0, 4]
    assert not metrics["load_in_4bit"]
    assert not (tmp_path / "out" / "checkpoints").exists()
    adapter_config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert set(adapter_config["target_modules"]) == {"q_proj", "v_proj"}


def test_time_budget_ends_the_run_early_with_a_saved_adapter(
    tmp_path: Path, tiny_model: Path
) -> None:
    data = write_split(tmp_path / "dd", "train").parent
    write_split(tmp_path / "dd", "validation")
    output = tmp_path / "out"
    # 100k steps could never finish in 0.6 s; the run must stop, evaluate and save anyway.
    metrics = train_lm(
        tiny_config(
            data,
            output,
            tiny_model,
            max_steps=100_000,
            max_minutes=0.01,
            eval_steps=0,
            save_steps=1000,
        )
    )
    assert 0 < metrics["steps"] < 100_000 and metrics["planned_steps"] == 100_000
    assert metrics["eval"][-1]["step"] == metrics["steps"]
    assert (output / "adapter_model.safetensors").is_file()
    assert (output / "checkpoints" / f"step-{metrics['steps']:06d}").is_dir()


def test_unknown_lora_targets_are_named(tmp_path: Path, tiny_model: Path) -> None:
    data = write_split(tmp_path / "dd", "train").parent
    write_split(tmp_path / "dd", "validation")
    config = tiny_config(data, tmp_path / "out", tiny_model, lora_targets=["query", "value"])
    with pytest.raises(TrainingError, match=r"q_proj.*v_proj"):
        train_lm(config)


def test_benchmark_runs_the_same_training_step_on_a_tiny_model() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.train_throughput", *TINY_BENCHMARK.split()],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["quantization"] == "nf4 + double quant"
    assert result["timed_steps"] == 2 and result["tokens_per_s"] > 0
    assert result["trainable_parameters"] > 0


# -- the real offline model: CLI, engine, eval ------------------------------------------------


def personabot(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PERSONABOT_") and k not in ("DISCORD_TOKEN", "TELEGRAM_TOKEN")
    }
    environment.update(
        PERSONABOT_DATA_DIR=str(tmp_path / "data"),
        PERSONABOT_CACHE_DIR=str(REPO / ".pytest_cache" / "models"),
        PERSONABOT_MODEL_PROFILE="smollm2-135m",
        PERSONABOT_DEVICE="cpu",
    )
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-m", "bots", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO,
    )


@pytest.mark.parametrize("command", ["train", "eval"])
def test_commands_have_help(command: str, tmp_path: Path) -> None:
    done = personabot([command, "--help"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Usage:" in done.stdout and "--data" in done.stdout


def test_bad_data_paths_are_clear_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    for command in (["train"], ["eval", "--split", "test"]):
        done = personabot([*command, "--data", str(missing)], tmp_path)
        assert done.returncode == 2
        assert f"{missing} does not exist" in done.stderr
        assert "Traceback" not in done.stderr
    bad = tmp_path / "qa.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a"}\n')
    done = personabot(["train", "--data", str(bad)], tmp_path)
    assert done.returncode == 2 and "qa.jsonl, line 2: 'output'" in done.stderr
    done = personabot(["eval", "--data", str(write_split(tmp_path, "test"))], tmp_path)
    assert done.returncode == 2 and "has no dialogues_validation.txt" in done.stderr
    done = personabot(["train", "--data", str(bad), "--persona", "wizard"], tmp_path)
    assert done.returncode == 2 and "wizard" in done.stderr


@pytest.mark.model
@needs_dailydialog
async def test_trained_adapter_serves_in_the_engine_and_evaluates(
    tmp_path: Path, make_settings: SettingsFactory
) -> None:
    adapter = tmp_path / "adapter"
    done = personabot(
        ["train", "--data", str(DAILYDIALOG), "--output", str(adapter), *ONE_STEP.split()],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["steps"] == 1 and summary["output"] == str(adapter)
    assert summary["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (adapter / "adapter_config.json").is_file()

    engine = await build_engine(make_settings(adapter_path=adapter))
    try:
        assert "adapter adapter" in engine.generator_name
        reply = await engine.reply(
            ConversationRef("test", "c"), Author("u", "U"), "Hi! How are you?"
        )
        assert reply.text.strip()
    finally:
        await engine.aclose()

    done = personabot(
        [
            "eval",
            "--adapter",
            str(adapter),
            "--data",
            str(DAILYDIALOG),
            *SMALL_EVAL.split(),
            "--output",
            str(tmp_path / "eval.json"),
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    for key in ("perplexity_base", "perplexity_adapter", "emotion_match_rate"):
        assert isinstance(report[key], float), key
    assert report["examples"] == 4 and report["generated"] == 2
    assert 0.0 <= report["emotion_match_rate"] <= 1.0
    assert report["perplexity_base"] != report["perplexity_adapter"]
    assert report["adapter"] == str(adapter) and report["judge"] == "lexicon"
    assert set(report["per_persona_voice"]) == {"pirate", "bard"}
    assert all(v["requests"] == 2 for v in report["per_persona_voice"].values())
    assert 0.0 <= report["persona_voice_rate"] <= 1.0
    assert json.loads((tmp_path / "eval.json").read_text()) == report


def test_qlora_on_an_avx512_bf16_cpu_trains_the_usual_layout(
    tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bitsandbytes' decision forced to "this CPU has AVX512-BF16", whatever the machine.

    Its repacked layout has no backward pass and its kernel needs the CPU feature; the
    evaluation before training would repack every 4-bit layer if training let it.
    """
    from bitsandbytes.nn.modules import Linear4bit

    from core.generation.local.quantization import packed_for_cpu

    monkeypatch.setattr("bitsandbytes.nn.modules.has_avx512bf16", lambda: True)
    created: list[Any] = []
    usual_init: Any = Linear4bit.__init__

    def remember(self: Any, *args: Any, **kwargs: Any) -> None:
        usual_init(self, *args, **kwargs)
        created.append(self)

    monkeypatch.setattr(Linear4bit, "__init__", remember)
    data = write_split(tmp_path / "dd", "train").parent
    write_split(tmp_path / "dd", "validation")
    config = tiny_config(data, tmp_path / "adapter", tiny_model, eval_data=None, max_steps=15)
    metrics = train_lm(config)

    assert created and all(layer.support_avx512bf16_for_cpu is False for layer in created)
    assert not any(packed_for_cpu(layer.weight) for layer in created)
    assert [e["step"] for e in metrics["eval"]] == [0, 15]
    losses = [record["loss"] for record in metrics["train_loss"]]
    assert losses[-1] < losses[0], losses
