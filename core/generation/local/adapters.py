"""Several LoRA adapters on one base model: which one a request runs with, loaded lazily.

Why: a persona trained on someone's chat export has its own adapter, while the other
personas keep the profile's default (DailyDialog) adapter. Loading a second copy of the base
model per persona would multiply memory by the number of personas; peft instead keeps every
adapter's small LoRA matrices next to the one set of base weights and switches between them
with ``set_adapter``. Requests name their adapter by directory
(:attr:`core.types.SamplingParams.adapter`); the first request for a directory loads it.

Everything here runs on the generation worker thread; the lock only guards against a second
caller (a scheduler, an evaluation) touching the same model at the same time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ConfigError, GenerationError
from core.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_ADAPTER = "default"
"""peft's name for the adapter ``PeftModel.from_pretrained`` loads: the profile's default."""

ADAPTER_UNAVAILABLE = (
    "This persona's own adapter could not be loaded, so it cannot answer right now. Choose "
    "another persona, or ask the bot's operator to check the log."
)
"""What the user sees; the path and the cause go to the operator's log only."""


@dataclass(frozen=True, slots=True)
class AdapterInfo:
    """What ``personabot persona add-adapter`` checked about an adapter directory."""

    path: Path
    base_model: str
    rank: int | None
    targets: tuple[str, ...]


def expected_base_model(settings: Settings) -> str:
    """The base model name adapters for this deployment must have been trained on.

    ``personabot train`` records the profile's Hub id (or ``--base-model``) in the adapter's
    ``base_model_name_or_path``; PERSONABOT_MODEL_PATH replaces the profile's weights.
    """
    from core.generation.local.profiles import HUB_IDS, resolve_profile_name

    if settings.model_path:
        return settings.model_path
    profile = resolve_profile_name(settings)
    return HUB_IDS.get(profile, profile)


def _same_model(recorded: str, expected: str) -> bool:
    if recorded.strip().rstrip("/").lower() == expected.strip().rstrip("/").lower():
        return True
    recorded_path, expected_path = Path(recorded).expanduser(), Path(expected).expanduser()
    return recorded_path.exists() and recorded_path.resolve() == expected_path.resolve()


def check_adapter(path: Path, expected_base: str) -> AdapterInfo:
    """Fail with a message saying what is wrong unless ``path`` is a LoRA adapter for the
    base model ``expected_base``: better at registration than on a user's first message."""
    config_file = path / "adapter_config.json"
    if not path.is_dir():
        raise ConfigError(
            f"{path} is not a folder; give the adapter folder `personabot train` wrote."
        )
    if not config_file.is_file():
        raise ConfigError(
            f"{path} is not a peft adapter folder (no adapter_config.json); give the folder "
            "`personabot train` wrote."
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{config_file} cannot be read as JSON: {exc}.") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{config_file} does not hold a JSON object.")
    if config.get("peft_type") != "LORA":
        raise ConfigError(
            f"{config_file}: peft_type is {config.get('peft_type')!r}; only LoRA adapters "
            "('LORA') can be served."
        )
    if not any(
        (path / name).is_file() for name in ("adapter_model.safetensors", "adapter_model.bin")
    ):
        raise ConfigError(f"{path} has no adapter weights (adapter_model.safetensors).")
    recorded = str(config.get("base_model_name_or_path") or "")
    if not recorded:
        raise ConfigError(
            f"{config_file} does not say which base model it was trained on "
            "(base_model_name_or_path); the running profile's base model is "
            f"{expected_base!r}."
        )
    if not _same_model(recorded, expected_base):
        raise ConfigError(
            f"The adapter in {path} was trained on {recorded!r}, but the running profile's base "
            f"model is {expected_base!r}. Train it with that profile (personabot train "
            "--profile ...) or switch PERSONABOT_MODEL_PROFILE / PERSONABOT_MODEL_PATH."
        )
    targets = config.get("target_modules") or ()
    rank = config.get("r")
    return AdapterInfo(
        path=path,
        base_model=recorded,
        rank=int(rank) if isinstance(rank, int) else None,
        targets=tuple(sorted(targets)) if isinstance(targets, list) else (str(targets),),
    )


def adapter_name(path: str) -> str:
    """A peft adapter name for a directory: stable, and free of the dots peft's module
    dictionaries reject."""
    resolved = str(Path(path).expanduser().resolve())
    return "persona_" + hashlib.sha256(resolved.encode("utf-8")).hexdigest()[:16]


class AdapterSet:
    """The adapters loaded onto one base model, and which one the next forward pass uses.

    ``default`` says whether the model came with the profile's default adapter (then it is a
    ``PeftModel`` whose adapter ``"default"`` serves requests without one). A bare model is
    wrapped in a ``PeftModel`` when the first persona adapter arrives; requests without an
    adapter then run with the adapter layers disabled, which is the bare base model again.
    A model whose default adapter was merged into its weights cannot serve other adapters:
    they would be stacked on top of the merged one.
    """

    def __init__(self, model: Any, *, default: bool, merged: bool = False) -> None:
        self._model = model
        self._default = default
        self._merged = merged
        self._names: dict[str, str] = {}
        """adapter directory (as requested) -> peft adapter name."""
        self._active: str | None = None
        self._lock = threading.RLock()

    @property
    def model(self) -> Any:
        """The model to run: after the first persona adapter, the PeftModel wrapping it."""
        return self._model

    @property
    def active(self) -> str | None:
        """The adapter directory the model runs with now; None for the default."""
        return self._active

    @property
    def loaded(self) -> dict[str, str]:
        """Persona adapter directories loaded so far, with their peft names."""
        with self._lock:
            return dict(self._names)

    def activate(self, adapter: str | None) -> Any:
        """Make ``adapter`` (a directory, or None for the default) the active one, loading it
        on first use; return the model to run. Cheap when it is already active."""
        with self._lock:
            if adapter == self._active:
                return self._model
            if adapter is None:
                self._activate_default()
            else:
                name = self._names.get(adapter) or self._load(adapter)
                self._enable_layers(True)
                self._model.set_adapter(name)
            self._active = adapter
            return self._model

    def _activate_default(self) -> None:
        if not self._names:
            return  # nothing but the model as it was loaded
        if self._default:
            self._model.set_adapter(DEFAULT_ADAPTER)
        else:
            self._enable_layers(False)

    def _enable_layers(self, enabled: bool) -> None:
        if self._default:
            return  # the default adapter is always one of the enabled ones
        tuner = self._model.base_model
        if enabled:
            tuner.enable_adapter_layers()
        else:
            tuner.disable_adapter_layers()

    def _load(self, adapter: str) -> str:
        if self._merged:
            log.error(
                "Cannot load the persona adapter %s: the default adapter is merged into the "
                "weights (set PERSONABOT_MERGE_ADAPTER=false to serve per-persona adapters).",
                adapter,
            )
            raise GenerationError(ADAPTER_UNAVAILABLE)
        name = adapter_name(adapter)
        if name in self._names.values():  # the same folder, spelt differently
            self._names[adapter] = name
            return name
        path = str(Path(adapter).expanduser())
        try:
            if self._default or self._names:
                self._model.load_adapter(path, adapter_name=name)
            else:
                from peft import PeftModel

                self._model = PeftModel.from_pretrained(self._model, path, adapter_name=name)
        except Exception as exc:
            log.error(
                "Cannot load the persona adapter %s: %s: %s", adapter, type(exc).__name__, exc
            )
            self._discard(name)
            raise GenerationError(ADAPTER_UNAVAILABLE) from None
        self._model.eval()
        self._names[adapter] = name
        log.info("Loaded persona adapter %s as %s.", adapter, name)
        return name

    def _discard(self, name: str) -> None:
        """Remove what a failed load left behind, so the model serves the others unchanged."""
        config = getattr(self._model, "peft_config", None)
        if isinstance(config, dict) and name in config:
            try:
                self._model.delete_adapter(name)
            except Exception:  # the model is still usable with the adapters it had
                log.exception("Could not clean up the failed adapter %s.", name)
        if self._active is None:
            self._activate_default()
        elif self._active in self._names:
            self._model.set_adapter(self._names[self._active])
