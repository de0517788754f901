"""Render docs/configuration.md from the :class:`~core.settings.Settings` fields.

The settings class is the one source of truth for names, types, defaults and descriptions;
this module only arranges them by topic, so the reference cannot drift from the code.
``python -m core.settings_reference > docs/configuration.md`` regenerates the page, and
tests/test_docs.py checks that the committed copy is current.
"""

from __future__ import annotations

import re
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import SecretStr
from pydantic.fields import FieldInfo

from core.settings import Settings, env_name

#: Each topic's heading and its settings, in the order the page shows them. Every field of
#: Settings belongs to exactly one topic (:func:`render` refuses to leave one out).
TOPICS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "Files and database",
        (
            "config",
            "data_dir",
            "cache_dir",
            "database_url",
            "auto_migrate",
            "database_connect_attempts",
            "database_retry_backoff_seconds",
            "database_outage_seconds",
            "history_retention_days",
        ),
    ),
    (
        "Model and prompt",
        (
            "model_profile",
            "model_path",
            "adapter_path",
            "device",
            "quantization",
            "load_in_4bit",
            "nf4_kernel",
            "compile",
            "merge_adapter",
            "max_prompt_tokens",
            "history_messages",
            "seed",
        ),
    ),
    (
        "Many conversations at once",
        (
            "max_batch_size",
            "batch_window_ms",
            "max_queued_requests",
            "max_waiting_per_conversation",
        ),
    ),
    (
        "Generation on a separate server",
        (
            "generator_backend",
            "openai_base_url",
            "openai_model",
            "openai_lora",
            "openai_api_key",
            "openai_timeout_seconds",
            "openai_max_retries",
            "openai_tokenizer",
            "openai_context_window",
        ),
    ),
    (
        "Personas and moods",
        (
            "default_persona",
            "persona_dir",
            "max_user_personas",
            "mood_detector",
            "care_after_messages",
            "support_text",
        ),
    ),
    (
        "Chat platforms and input limits",
        (
            "discord_token",
            "telegram_token",
            "max_message_chars",
            "admin_only",
            "commands_per_minute",
            "user_cooldown_seconds",
            "conversation_cooldown_seconds",
            "stream_replies",
        ),
    ),
    (
        "Discord",
        (
            "discord_guild_ids",
            "discord_api_url",
            "discord_gateway_url",
            "discord_stream_replies",
            "discord_channel_cooldown_seconds",
        ),
    ),
    (
        "Telegram",
        (
            "telegram_api_url",
            "telegram_webhook_url",
            "telegram_webhook_listen",
            "telegram_webhook_port",
            "telegram_webhook_secret",
            "telegram_admin_only",
            "telegram_chat_cooldown_seconds",
        ),
    ),
    (
        "Logs, metrics and stopping",
        (
            "log_level",
            "metrics_port",
            "metrics_listen",
            "shutdown_timeout_seconds",
        ),
    ),
)

#: The variables scripts/setup reads (it is a shell script, so they are listed by hand):
#: name, default, meaning.
SETUP_VARIABLES: tuple[tuple[str, str, str], ...] = (
    (
        "PERSONABOT_TORCH",
        "`torch==2.13.0` (the CPU build)",
        "pip requirement for torch; `torch` from PyPI is a CUDA build on Linux",
    ),
    (
        "PERSONABOT_EXTRAS",
        "none (what running needs)",
        "extras to install, comma-separated: `dev`, `gpu`, `training`, `text2emotion`; "
        "`scripts/test` asks for `dev`",
    ),
    (
        "PERSONABOT_CONSTRAINTS",
        "`scripts/constraints.txt`",
        "pip constraints file; `none` resolves every dependency afresh "
        "(`scripts/refresh-constraints`)",
    ),
    ("PERSONABOT_VENV", "`.venv`", "the virtual environment's folder"),
    ("PERSONABOT_PYTHON", "`python3`", "interpreter to build the virtual environment with"),
)

COMMAND = "python -m core.settings_reference > docs/configuration.md"

_INTRO = f"""\
# Configuration

<!-- Generated from core/settings.py by `{COMMAND}`; do not edit by hand. -->

Settings come from environment variables, or from a TOML file named by `PERSONABOT_CONFIG`
(or a command's `--config FILE`) with the same names in lower case and without the prefix:

```toml
# personabot.toml
model_profile = "smollm2-135m"
default_persona = "coach"
max_prompt_tokens = 3072
```

Environment variables beat the file, and command-line options beat both. Every value is
validated at start-up: a bad or unknown key stops personabot with a message naming the key
and the accepted values (exit code 2). `personabot config` prints the effective settings,
with tokens and passwords masked.

The tables below are generated from the settings class (`core/settings.py`); "unset" means
the setting has no value unless you give it one, and its description says what happens then.
"""

_SETUP_INTRO = """\
## Installation variables

`scripts/setup` (run by `scripts/start` and `scripts/test`) reads these variables from the
environment; they are not personabot settings and do not go in the TOML file.
"""

_DOCS_LINK = re.compile(r"(?<![\[(/`])docs/([a-z0-9-]+\.md)(#[a-z0-9-]+)?")


def _inner(annotation: Any) -> Any:
    """The annotation without ``| None``: unset is shown as the default instead."""
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


def _kind(annotation: Any) -> str:
    inner = _inner(annotation)
    if get_origin(inner) is Literal:
        return "one of " + ", ".join(f"`{value}`" for value in get_args(inner))
    if get_origin(inner) is tuple:
        return "comma-separated integers"
    names: dict[Any, str] = {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "text",
        Path: "path",
        SecretStr: "secret",
    }
    return names.get(inner, getattr(inner, "__name__", str(inner)))


def _number(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _limits(info: FieldInfo) -> str:
    low = high = ""
    parts: list[str] = []
    for item in info.metadata:
        if isinstance(item, annotated_types.Ge):
            low = _number(item.ge)
        elif isinstance(item, annotated_types.Gt):
            parts.append(f"> {_number(item.gt)}")
        elif isinstance(item, annotated_types.Le):
            high = _number(item.le)
        elif isinstance(item, annotated_types.MaxLen):
            parts.append(f"at most {item.max_length} characters")
    if low and high:
        parts.insert(0, f"{low} to {high}")
    elif low:
        parts.insert(0, f"≥ {low}")
    elif high:
        parts.insert(0, f"≤ {high}")
    return ", ".join(parts)


def type_text(info: FieldInfo) -> str:
    """The field's type as a reader writes it, with its bounds."""
    limits = _limits(info)
    kind = _kind(info.annotation)
    return f"{kind} ({limits})" if limits else kind


def default_text(info: FieldInfo) -> str:
    """The field's default as it would be written in the environment."""
    if info.default_factory is not None:
        return "see description"
    value = info.get_default()
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    if value == ():
        return "empty"
    return f"`{value}`"


def description_text(info: FieldInfo) -> str:
    """The field's description, with mentions of other doc pages made into links."""
    text = (info.description or "").replace("|", "\\|")
    return _DOCS_LINK.sub(lambda m: f"[docs/{m[1]}{m[2] or ''}]({m[1]}{m[2] or ''})", text)


def _check_topics() -> None:
    listed = [name for _, names in TOPICS for name in names]
    missing = [name for name in Settings.model_fields if name not in listed]
    unknown = [name for name in listed if name not in Settings.model_fields]
    repeated = sorted({name for name in listed if listed.count(name) > 1})
    if missing or unknown or repeated:
        raise ValueError(
            "core/settings_reference.py TOPICS is out of step with Settings: "
            f"missing {missing}, unknown {unknown}, repeated {repeated}"
        )


def render() -> str:
    """The whole of docs/configuration.md."""
    _check_topics()
    out = [_INTRO]
    for heading, names in TOPICS:
        out.append(f"## {heading}\n")
        out.append("| variable | type | default | meaning |\n| --- | --- | --- | --- |")
        for name in names:
            info = Settings.model_fields[name]
            row = (
                f"`{env_name(name)}`",
                type_text(info),
                default_text(info),
                description_text(info),
            )
            out.append("| " + " | ".join(row) + " |")
        out.append("")
    out.append(_SETUP_INTRO)
    out.append("| variable | default | meaning |\n| --- | --- | --- |")
    out.extend(
        f"| `{name}` | {default} | {meaning} |" for name, default, meaning in SETUP_VARIABLES
    )
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render(), end="")
