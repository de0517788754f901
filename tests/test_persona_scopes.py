"""Personas belong to the community that made them; private personas to those granted.

Through the real engine and database: a persona made in one scope (a Discord server, a
Telegram chat) is listed, usable and deletable only there, survives a restart in its
scope, and cannot take a global persona's name; a persona with its own adapter is usable
only where the operator granted it.
"""

from __future__ import annotations

import pytest

from core.bootstrap import build_engine
from core.engine import Engine
from core.errors import InputError, UnknownPersonaError
from core.generation.local.transformers_generator import TransformersGenerator
from core.personas import Persona, persona_from_mapping
from core.storage import ConversationStore, Database
from core.types import ConversationRef
from tests.conftest import SettingsFactory, SharedGenerator

SERVER_A = ConversationRef("discord", "1", "discord:server:100")
SERVER_A_OTHER_CHANNEL = ConversationRef("discord", "2", "discord:server:100")
SERVER_B = ConversationRef("discord", "3", "discord:server:200")
GROUP = ConversationRef("telegram", "-5", "telegram:chat:-5")


def chef(instructions: str = "You are a passionate chef.") -> Persona:
    return persona_from_mapping({"name": "chef", "system_prompt": instructions}, source="test")


async def test_a_persona_is_seen_used_and_deleted_only_where_it_was_made(engine: Engine) -> None:
    await engine.create_persona(chef(), "discord:1", conversation=SERVER_A)
    assert "chef" in {p.name for p in engine.personas(SERVER_A_OTHER_CHANNEL)}
    for elsewhere in (SERVER_B, GROUP, None):
        assert "chef" not in {p.name for p in engine.personas(elsewhere)}
    assert (await engine.set_persona(SERVER_A_OTHER_CHANNEL, "chef")).name == "chef"
    with pytest.raises(UnknownPersonaError) as caught:
        await engine.set_persona(SERVER_B, "chef")
    assert "chef" not in caught.value.valid
    with pytest.raises(UnknownPersonaError):
        await engine.delete_persona("chef", SERVER_B)
    with pytest.raises(InputError, match="not made here"):
        await engine.delete_persona("pirate", SERVER_A)  # a global persona
    assert await engine.delete_persona("chef", SERVER_A)
    assert "chef" not in {p.name for p in engine.personas(SERVER_A)}
    # The channel that used it falls back to the default persona.
    assert (await engine.persona(SERVER_A_OTHER_CHANNEL)).name == engine.default_persona


async def test_two_communities_may_each_have_their_own_persona_of_one_name(
    engine: Engine,
) -> None:
    await engine.create_persona(chef("You cook Italian."), conversation=SERVER_A)
    await engine.create_persona(chef("You cook Japanese."), conversation=GROUP)
    assert engine.persona_named("chef", SERVER_A).system_prompt == "You cook Italian."
    assert engine.persona_named("chef", GROUP).system_prompt == "You cook Japanese."
    assert await engine.delete_persona("chef", GROUP)
    assert engine.persona_named("chef", SERVER_A).system_prompt == "You cook Italian."


async def test_a_community_cannot_take_a_global_name_or_more_than_its_share(
    make_settings: SettingsFactory, offline_generator: TransformersGenerator
) -> None:
    engine = await build_engine(
        make_settings(max_user_personas=2), generator=SharedGenerator(offline_generator)
    )
    try:
        pirate = persona_from_mapping({"name": "pirate", "system_prompt": "Arr."}, source="t")
        with pytest.raises(InputError, match="every community has"):
            await engine.create_persona(pirate, conversation=SERVER_A)
        for name in ("one", "two"):
            made = persona_from_mapping({"name": name, "system_prompt": "Hi."}, source="t")
            await engine.create_persona(made, conversation=SERVER_A)
        third = persona_from_mapping({"name": "three", "system_prompt": "Hi."}, source="t")
        with pytest.raises(InputError, match="PERSONABOT_MAX_USER_PERSONAS=2"):
            await engine.create_persona(third, conversation=SERVER_A)
        await engine.create_persona(third, conversation=SERVER_B)  # the cap is per community
    finally:
        await engine.aclose()


async def test_scopes_survive_a_restart(
    make_settings: SettingsFactory, offline_generator: TransformersGenerator
) -> None:
    settings = make_settings()
    first = await build_engine(settings, generator=SharedGenerator(offline_generator))
    await first.create_persona(chef(), conversation=SERVER_A)
    await first.aclose()
    second = await build_engine(settings, generator=SharedGenerator(offline_generator))
    try:
        assert "chef" in {p.name for p in second.personas(SERVER_A)}
        assert "chef" not in {p.name for p in second.personas(SERVER_B)}
    finally:
        await second.aclose()


async def test_a_private_persona_is_usable_only_where_granted(
    make_settings: SettingsFactory, offline_generator: TransformersGenerator
) -> None:
    settings = make_settings()
    database = await Database.open(settings.resolved_database_url)
    store = ConversationStore(database)
    mine = persona_from_mapping(
        {"name": "grandma", "system_prompt": "You are Grandma.", "adapter": "/adapters/grandma"},
        source="test",
    )
    await store.save_persona(mine.name, mine.to_json(), "cli:add-adapter")
    await store.grant_persona("grandma", GROUP.scope)
    await database.close()
    engine = await build_engine(settings, generator=SharedGenerator(offline_generator))
    try:
        assert "grandma" in {p.name for p in engine.personas(GROUP)}
        assert "grandma" not in {p.name for p in engine.personas(SERVER_A)}
        with pytest.raises(UnknownPersonaError):
            await engine.set_persona(SERVER_A, "grandma")
        assert (await engine.set_persona(GROUP, "grandma")).name == "grandma"
        # A community cannot take its name either.
        copy = persona_from_mapping({"name": "grandma", "system_prompt": "Hi."}, source="t")
        with pytest.raises(InputError, match="every community has"):
            await engine.create_persona(copy, conversation=SERVER_A)
    finally:
        await engine.aclose()
