"""Wiring: build a ready Engine from Settings.

This is the only place that knows which concrete storage, persona sources, mood detector and
generator back the engine; frontends and tests call :func:`build_engine` and get the same
wiring the product runs with.
"""

from __future__ import annotations

import asyncio
import logging
import os

from core import redaction
from core.engine import Engine
from core.errors import ConfigError, PersonabotError
from core.generation.factory import create_generator
from core.generation.generator import Generator
from core.mood import create_mood_detector
from core.personas import (
    GLOBAL,
    Persona,
    PersonaCatalog,
    load_builtin_personas,
    load_persona_dir,
)
from core.settings import Settings
from core.storage import ConversationStore, Database
from core.storage.retry import RetryPolicy

log = logging.getLogger(__name__)


def prepare_data_dir(settings: Settings) -> None:
    """Fail at start-up, naming the setting, when the data directory is unusable."""
    path = settings.data_dir
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"Cannot create the data directory {path} (PERSONABOT_DATA_DIR): {exc.strerror}. "
            "Point PERSONABOT_DATA_DIR at a writable folder."
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(
            f"The data directory {path} (PERSONABOT_DATA_DIR) is not writable. Point "
            "PERSONABOT_DATA_DIR at a writable folder."
        )


async def load_personas(settings: Settings, store: ConversationStore) -> PersonaCatalog:
    """Built-ins, then the persona folder, then user-made ones; later names override.

    User-made personas of a community (a Discord server, a Telegram chat) are kept in its
    scope; private (adapter) personas are usable where the operator granted them.
    """
    shipped = [*load_builtin_personas(), *load_persona_dir(settings.resolved_persona_dir)]
    stored: list[tuple[str, Persona]] = []
    for scope, name, definition in await store.list_personas():
        try:
            stored.append((scope, Persona.from_json(definition)))
        except (ValueError, PersonabotError) as exc:
            log.error("Skipping stored persona %r: its definition is invalid (%s).", name, exc)
    # User-made personas are kept apart so deleting one brings back what it overrode.
    catalog = PersonaCatalog(shipped, user=[p for scope, p in stored if scope == GLOBAL])
    for scope, persona in stored:
        if scope != GLOBAL:
            catalog.add(persona, scope)
    for name, scope in await store.persona_grants():
        catalog.grant(name, scope)
    if settings.default_persona not in catalog:
        raise ConfigError(
            f"PERSONABOT_DEFAULT_PERSONA={settings.default_persona!r} is not a persona. "
            f"Choose one of: {', '.join(catalog.names())}."
        )
    return catalog


def retry_policy(settings: Settings) -> RetryPolicy:
    """How patient storage is with an unreachable database, from the settings."""
    return RetryPolicy(
        connect_attempts=settings.database_connect_attempts,
        backoff_seconds=settings.database_retry_backoff_seconds,
        outage_seconds=settings.database_outage_seconds,
    )


async def open_database(settings: Settings) -> Database:
    """The configured database, its data folder made and its schema migrated as allowed;
    shared by the engine and the commands that work on stored data without a model."""
    if settings.database_url is None:
        prepare_data_dir(settings)
    return await Database.open(
        settings.resolved_database_url,
        auto_migrate=settings.auto_migrate,
        retry=retry_policy(settings),
    )


async def build_engine(settings: Settings, *, generator: Generator | None = None) -> Engine:
    """Open storage (migrating it), load personas, the mood detector and the model.

    Also makes this process's logging mask the settings' secrets (see core.redaction):
    whatever embeds the engine gets that protection without asking for it.
    """
    redaction.install(settings)
    database = await open_database(settings)
    try:
        store = ConversationStore(database)
        personas = await load_personas(settings, store)
        # Off the event loop: the classifier's first load exports it to ONNX, which takes
        # seconds (docs/benchmarks.md#mood-detection).
        mood_detector = await asyncio.to_thread(
            create_mood_detector, settings.mood_detector, cache_dir=settings.resolved_cache_dir
        )
        if generator is None:
            adapters = any(persona.adapter for persona in personas.all())
            generator = await create_generator(settings, persona_adapters=adapters)
    except BaseException:
        await database.close()
        raise
    engine = Engine(
        settings=settings,
        database=database,
        store=store,
        personas=personas,
        mood_detector=mood_detector,
        generator=generator,
    )
    try:
        # Expired history goes before the first message is answered, then hourly.
        await engine.purge_expired()
        engine.start_maintenance()
        if settings.metrics_port is not None:
            engine.metrics.serve(settings.metrics_listen, settings.metrics_port)
    except BaseException:
        await engine.aclose()
        raise
    return engine
