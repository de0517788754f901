"""Configuration: environment, TOML file, precedence and error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from core.settings import load_settings


def test_defaults_and_derived_paths(tmp_path: Path) -> None:
    settings = load_settings(env={"PERSONABOT_DATA_DIR": str(tmp_path)})
    assert settings.model_profile == "auto"
    assert settings.resolved_database_url == f"sqlite+aiosqlite:///{tmp_path}/personabot.db"
    assert settings.resolved_cache_dir == tmp_path / "cache"
    assert settings.resolved_persona_dir == tmp_path / "personas"


def test_environment_beats_toml_file(tmp_path: Path) -> None:
    config = tmp_path / "personabot.toml"
    config.write_text('model_profile = "mistral-7b"\ndefault_persona = "pirate"\nseed = 7\n')
    settings = load_settings(
        env={"PERSONABOT_CONFIG": str(config), "PERSONABOT_MODEL_PROFILE": "smollm2-135m"}
    )
    assert settings.model_profile == "smollm2-135m"
    assert settings.default_persona == "pirate"
    assert settings.seed == 7
    assert settings.config == config


def test_tokens_are_read_from_their_plain_names_and_masked() -> None:
    settings = load_settings(env={"DISCORD_TOKEN": "secret-discord", "TELEGRAM_TOKEN": "t"})
    assert settings.discord_token is not None
    assert settings.discord_token.get_secret_value() == "secret-discord"
    assert "secret-discord" not in repr(settings) and "secret-discord" not in str(
        settings.model_dump()
    )


def test_bad_value_names_key_and_accepted_values() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env={"PERSONABOT_MODEL_PROFILE": "gpt-5"})
    message = str(caught.value)
    assert "PERSONABOT_MODEL_PROFILE" in message and "'gpt-5'" in message
    for accepted in ("auto", "mistral-7b", "smollm2-135m"):
        assert accepted in message


def test_every_bad_key_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env={"PERSONABOT_MAX_MESSAGE_CHARS": "lots", "PERSONABOT_DEVICE": "tpu"})
    assert "PERSONABOT_MAX_MESSAGE_CHARS" in str(caught.value)
    assert "PERSONABOT_DEVICE" in str(caught.value)


def test_unknown_environment_setting_is_an_error() -> None:
    with pytest.raises(ConfigError, match="PERSONABOT_MODEL_PROFIL"):
        load_settings(env={"PERSONABOT_MODEL_PROFIL": "auto"})


def test_toml_errors_name_the_file(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("colour = 'blue'\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) colour"):
        load_settings(env={"PERSONABOT_CONFIG": str(config)})
    config.write_text("model_profile = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(env={"PERSONABOT_CONFIG": str(config)})
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(env={"PERSONABOT_CONFIG": str(tmp_path / "missing.toml")})
    config.write_text("max_prompt_tokens = 3\n")
    with pytest.raises(ConfigError, match=r"max_prompt_tokens.*bad.toml"):
        load_settings(env={"PERSONABOT_CONFIG": str(config)})


def test_one_conversation_cooldown_for_every_platform_with_platform_overrides() -> None:
    shared = load_settings(env={"PERSONABOT_CONVERSATION_COOLDOWN_SECONDS": "4"})
    assert shared.conversation_cooldown("discord") == 4
    assert shared.conversation_cooldown("telegram") == 4
    assert load_settings(env={}).conversation_cooldown("telegram") == 1.0  # the default
    overridden = load_settings(
        env={
            "PERSONABOT_CONVERSATION_COOLDOWN_SECONDS": "4",
            "PERSONABOT_TELEGRAM_CHAT_COOLDOWN_SECONDS": "0",  # the older names still count
        }
    )
    assert overridden.conversation_cooldown("telegram") == 0
    assert overridden.conversation_cooldown("discord") == 4
