"""Which LoRA adapter a profile serves: trained, shipped, explicit, or none."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.generation.local import profiles
from core.generation.local.profiles import build_model_spec, shipped_adapter_dir
from tests.conftest import REPO, SettingsFactory


def make_adapter(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    return folder


@pytest.fixture
def shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A shipped adapter for the offline profile, in a folder standing in for core/adapters."""
    root = tmp_path / "shipped"
    monkeypatch.setattr(profiles, "SHIPPED_ADAPTERS", root)
    return make_adapter(root / "smollm2-135m-dailydialog")


def test_shipped_adapter_lives_in_the_package() -> None:
    assert shipped_adapter_dir("smollm2-135m") == REPO / "core" / "adapters" / (
        "smollm2-135m-dailydialog"
    )
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"adapters/*/*"' in pyproject  # installed with the package


def test_shipped_adapter_is_the_default(make_settings: SettingsFactory, shipped: Path) -> None:
    assert build_model_spec(make_settings()).adapter == shipped


def test_trained_adapter_beats_the_shipped_one(
    make_settings: SettingsFactory, shipped: Path
) -> None:
    settings = make_settings()
    trained = make_adapter(settings.data_dir / "adapters" / "smollm2-135m-dailydialog")
    assert build_model_spec(settings).adapter == trained


def test_shipped_adapter_is_not_applied_to_other_weights(
    make_settings: SettingsFactory, shipped: Path, tmp_path: Path
) -> None:
    assert build_model_spec(make_settings(model_path=str(tmp_path / "other"))).adapter is None


def test_none_serves_the_base_model(make_settings: SettingsFactory, shipped: Path) -> None:
    for value in ("none", "None", "off"):
        assert build_model_spec(make_settings(adapter_path=Path(value))).adapter is None


def test_without_any_adapter_the_base_model_is_served(
    make_settings: SettingsFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(profiles, "SHIPPED_ADAPTERS", tmp_path / "empty")
    assert build_model_spec(make_settings()).adapter is None
