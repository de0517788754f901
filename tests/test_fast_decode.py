"""Weight formats, adapter merging and the lean decode loop: what can be checked on a CPU.

The GPU-only parts (int4 kernels, CUDA graphs) are measured by benchmarks/decode_speed.py on
a GPU (docs/benchmarks.md); here the settings that would need them must fail with advice, and
everything that also runs on a CPU is run for real: the offline model loaded merged and
unmerged, NF4 quantised in memory after merging, and the decode loop against ``generate``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from benchmarks.decode_speed import TINY_DIMS, build_random_model
from benchmarks.decode_speed import main as decode_speed_main
from benchmarks.graph_decoder import GraphDecoder
from core.errors import ConfigError, ModelLoadError
from core.generation.local.profiles import build_model_spec, shipped_adapter_dir
from core.generation.local.transformers_generator import load_model
from core.settings import load_settings
from tests.conftest import SettingsFactory

SHIPPED = shipped_adapter_dir("smollm2-135m")
needs_shipped_adapter = pytest.mark.skipif(
    not (SHIPPED / "adapter_config.json").is_file(), reason="the shipped adapter is missing"
)


# -- settings -------------------------------------------------------------------------------


def test_offline_profile_defaults_to_plain_unmerged_eager(make_settings: SettingsFactory) -> None:
    spec = build_model_spec(make_settings())
    assert spec.quantization == "none" and not spec.load_in_4bit
    assert not spec.compile
    # On a CPU the adapter stays a peft adapter, so persona adapters can be added later.
    assert not spec.merge_adapter


def test_int4_on_a_cpu_fails_with_advice(make_settings: SettingsFactory) -> None:
    with pytest.raises(ModelLoadError, match=r"int4 needs a CUDA GPU.*nf4 or none"):
        build_model_spec(make_settings(quantization="int4"))


def test_gemlite_on_a_cpu_fails_with_advice(make_settings: SettingsFactory) -> None:
    settings = make_settings(quantization="gemlite", merge_adapter=True)
    with pytest.raises(ModelLoadError, match=r"gemlite needs a CUDA GPU.*nf4 or none"):
        build_model_spec(settings)


@needs_shipped_adapter
@pytest.mark.parametrize("persona_adapters", [False, True])
def test_gemlite_with_a_separate_adapter_fails_with_advice(
    make_settings: SettingsFactory, persona_adapters: bool
) -> None:
    """peft cannot wrap GemLite's layers, so an adapter that is not merged (the CPU default,
    personas with adapters of their own) is refused before any weights load."""
    settings = make_settings(quantization="gemlite")
    expected = "personas have adapters" if persona_adapters else "kept separate"
    with pytest.raises(ModelLoadError, match=rf"gemlite serves one LoRA adapter.*{expected}"):
        build_model_spec(settings, persona_adapters=persona_adapters)


def test_compile_on_a_cpu_fails_with_advice(make_settings: SettingsFactory) -> None:
    with pytest.raises(ModelLoadError, match="PERSONABOT_COMPILE=true needs a CUDA GPU"):
        build_model_spec(make_settings(compile=True))


def test_mistral_on_a_cpu_falls_back_to_nf4(make_settings: SettingsFactory) -> None:
    spec = build_model_spec(make_settings(model_profile="mistral-7b", device="cpu"))
    assert spec.quantization == "nf4" and not spec.compile


def test_older_load_in_4bit_still_means_nf4(make_settings: SettingsFactory) -> None:
    assert build_model_spec(make_settings(load_in_4bit=True)).quantization == "nf4"
    assert build_model_spec(make_settings(quantization="nf4")).quantization == "nf4"


def test_contradicting_quantization_settings_are_refused(make_settings: SettingsFactory) -> None:
    with pytest.raises(ModelLoadError, match="contradicts PERSONABOT_LOAD_IN_4BIT=false"):
        build_model_spec(make_settings(quantization="nf4", load_in_4bit=False))


@needs_shipped_adapter
def test_merging_is_refused_when_personas_have_adapters(make_settings: SettingsFactory) -> None:
    settings = make_settings(merge_adapter=True)
    assert build_model_spec(settings).merge_adapter
    with pytest.raises(ModelLoadError, match="PERSONABOT_MERGE_ADAPTER"):
        build_model_spec(settings, persona_adapters=True)


def test_unknown_quantization_names_the_key_and_choices(tmp_path: Path) -> None:
    env = {"PERSONABOT_DATA_DIR": str(tmp_path), "PERSONABOT_QUANTIZATION": "int3"}
    with pytest.raises(ConfigError) as caught:
        load_settings(env=env)
    message = str(caught.value)
    assert "PERSONABOT_QUANTIZATION" in message
    assert all(name in message for name in ("'nf4'", "'int4'", "'gemlite'", "'none'"))


# -- loading the offline model ----------------------------------------------------------------


def _greedy(model: Any, tokenizer: Any, text: str, tokens: int = 12) -> str:
    import torch

    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return str(tokenizer.decode(out[0][ids.shape[1] :], skip_special_tokens=True))


@needs_shipped_adapter
def test_merged_adapter_replies_like_the_unmerged_one(make_settings: SettingsFactory) -> None:
    unmerged_spec = build_model_spec(make_settings())
    unmerged, tokenizer, _ = load_model(unmerged_spec)
    merged, _, _ = load_model(replace(unmerged_spec, merge_adapter=True))
    assert hasattr(unmerged, "peft_config")
    assert not hasattr(merged, "peft_config")  # plain weights: nothing left to switch off
    prompt = "User: I just passed my driving test!\nAssistant:"
    assert _greedy(merged, tokenizer, prompt) == _greedy(unmerged, tokenizer, prompt)


@needs_shipped_adapter
def test_nf4_quantises_after_merging(make_settings: SettingsFactory) -> None:
    pytest.importorskip("bitsandbytes")
    spec = build_model_spec(make_settings(quantization="nf4", merge_adapter=True))
    assert spec.merge_adapter and spec.quantization == "nf4"
    model, tokenizer, _ = load_model(spec)
    kinds = {type(m).__name__ for m in model.modules()}
    assert "Linear4bit" in kinds
    layers = [m for m in model.modules() if type(m).__name__ == "Linear4bit"]
    assert len(layers) == 7 * model.config.num_hidden_layers  # q,k,v,o,gate,up,down
    assert not hasattr(model, "peft_config")
    assert _greedy(model, tokenizer, "User: Hello!\nAssistant:", tokens=6).strip()


# -- the decode loop --------------------------------------------------------------------------


def test_graph_decoder_matches_generate() -> None:
    """Same greedy tokens as ``generate``, and again when the static cache is reused."""
    import torch

    torch.manual_seed(0)
    model = build_random_model(TINY_DIMS, "cpu", torch.float32)
    prompt = torch.randint(3, TINY_DIMS["vocab_size"], (2, 10))
    expected = model.generate(
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=9,
        do_sample=False,
        pad_token_id=0,
    )
    decoder = GraphDecoder(model, max_cache_len=32, compile=False)
    assert torch.equal(decoder.generate(prompt, 9), expected)
    assert torch.equal(decoder.generate(prompt, 9), expected)  # cache reset, not stale
    assert torch.equal(decoder.generate(prompt[:1], 9), expected[:1])  # new batch size
    with pytest.raises(ValueError, match="exceed the static cache"):
        decoder.generate(prompt, 40)


def test_graph_decoder_stops_at_end_of_sequence() -> None:
    import torch

    torch.manual_seed(0)
    model = build_random_model(TINY_DIMS, "cpu", torch.float32)
    prompt = torch.randint(3, TINY_DIMS["vocab_size"], (1, 8))
    decoder = GraphDecoder(model, max_cache_len=64, check_every=4, compile=False)
    full = decoder.generate(prompt, 40)
    eos = int(full[0, 8 + 2])  # pretend the third new token ends the reply
    stopped = decoder.generate(prompt, 40, eos_token_id=eos)
    assert stopped.shape[1] < full.shape[1]
    assert torch.equal(stopped, full[:, : stopped.shape[1]])


# -- the benchmark ----------------------------------------------------------------------------


def test_decode_speed_smoke_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "decode.json"
    setups = "fp32-graph,nf4-eager-lora-merged"
    code = decode_speed_main(["--smoke", "--setups", setups, "--batches", "1", "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    results = report["results"]
    assert [r["setup"] for r in results] == ["fp32-graph", "nf4-eager-lora-merged"]
    assert all(r["tokens_per_s"] > 0 and r["new_tokens"] == 8 for r in results)
    # NF4 weights take less than the fp32 ones, LoRA merged in or not.
    assert results[1]["weight_bytes"] < results[0]["weight_bytes"]
    printed = capsys.readouterr().out
    assert "fp32-graph" in printed and "tok/s" in printed


def test_decode_speed_rejects_gpu_setups_in_smoke_mode() -> None:
    with pytest.raises(SystemExit) as caught:
        decode_speed_main(["--smoke", "--setups", "int4-compile"])
    assert caught.value.code == 2
