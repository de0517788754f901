"""Choosing and loading the generation backend named in the settings."""

from __future__ import annotations

import asyncio

from core.errors import ConfigError
from core.generation.generator import Generator
from core.generation.local.profiles import build_model_spec
from core.settings import Settings


async def create_generator(settings: Settings, *, persona_adapters: bool = False) -> Generator:
    """Load the configured backend off the event loop (loading a model takes seconds).

    ``persona_adapters``: some persona has its own LoRA adapter, so the default adapter is
    kept unmerged for peft to switch between them.
    """
    if settings.generator_backend == "transformers":
        from core.generation.batching.batch_scheduler import BatchingConfig
        from core.generation.local.transformers_generator import load_transformers_generator

        spec = build_model_spec(settings, persona_adapters=persona_adapters)
        batching = BatchingConfig.from_settings(settings)
        return await asyncio.to_thread(load_transformers_generator, spec, batching)
    if settings.generator_backend == "openai":
        from core.generation.remote.openai_generator import create_openai_generator

        return await create_openai_generator(settings)
    raise ConfigError(
        f"Unknown PERSONABOT_GENERATOR_BACKEND {settings.generator_backend!r}; "
        "expected 'transformers' or 'openai'."
    )
