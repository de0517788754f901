"""Model profiles resolve to loadable specs or fail early with advice."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import ModelLoadError
from core.generation.local.profiles import build_model_spec, cuda_available, shipped_adapter_dir
from tests.conftest import SettingsFactory

needs_no_gpu = pytest.mark.skipif(cuda_available(), reason="checks the no-GPU behaviour")


@needs_no_gpu
def test_auto_picks_the_offline_profile_without_a_gpu(make_settings: SettingsFactory) -> None:
    spec = build_model_spec(make_settings(model_profile="auto", device="auto"))
    assert spec.profile == "smollm2-135m"
    assert spec.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    # The shipped DailyDialog adapter, once committed, is the offline profile's default.
    shipped = shipped_adapter_dir("smollm2-135m")
    expected = shipped if (shipped / "adapter_config.json").is_file() else None
    assert spec.device == "cpu" and spec.adapter == expected


@needs_no_gpu
def test_mistral_without_gpu_says_what_to_do(make_settings: SettingsFactory) -> None:
    with pytest.raises(ModelLoadError, match="PERSONABOT_MODEL_PROFILE=smollm2-135m"):
        build_model_spec(make_settings(model_profile="mistral-7b", device="auto"))


def test_mistral_spec_folds_system_prompt_and_uses_nf4(make_settings: SettingsFactory) -> None:
    spec = build_model_spec(make_settings(model_profile="mistral-7b", device="cpu"))
    assert spec.source == "mistralai/Mistral-7B-Instruct-v0.2"
    assert spec.load_in_4bit and spec.system_role is False


def test_missing_adapter_path_is_refused(make_settings: SettingsFactory, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"adapter_config\.json"):
        build_model_spec(make_settings(adapter_path=tmp_path / "nothing"))


def test_default_adapter_is_used_when_present(make_settings: SettingsFactory) -> None:
    settings = make_settings()
    adapter = settings.data_dir / "adapters" / "smollm2-135m-dailydialog"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    assert build_model_spec(settings).adapter == adapter


def test_unreachable_hub_fails_at_start_up_with_advice(tmp_path: Path) -> None:
    """The real loading path for the 7B profile, on a machine that cannot reach the Hub."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "PERSONABOT_DATA_DIR": str(tmp_path / "data"),
        "PERSONABOT_MODEL_PROFILE": "mistral-7b",
        "PERSONABOT_DEVICE": "cpu",
    }
    done = subprocess.run(
        [sys.executable, "-m", "bots", "chat"],
        input="hello\n",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr
    assert "mistralai/Mistral-7B-Instruct-v0.2" in done.stderr
    assert "PERSONABOT_MODEL_PATH" in done.stderr
    assert "Traceback" not in done.stderr
