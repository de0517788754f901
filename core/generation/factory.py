"""Choosing and loading the generation backend named in the settings."""

from __future__ import annotations

import asyncio

from core.errors import ConfigError
from core.generation.base import Generator
from core.generation.profiles import build_model_spec
from core.settings import Settings


async def create_generator(settings: Settings) -> Generator:
    """Load the configured backend off the event loop (loading a model takes seconds)."""
    if settings.generator_backend == "transformers":
        from core.generation.transformers_backend import load_transformers_generator

        spec = build_model_spec(settings)
        return await asyncio.to_thread(load_transformers_generator, spec)
    raise ConfigError(
        f"Unknown PERSONABOT_GENERATOR_BACKEND {settings.generator_backend!r}; "
        "expected 'transformers'."
    )
