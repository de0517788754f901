"""Pieces every ``personabot`` command shares: options, settings loading, error handling."""

from __future__ import annotations

import asyncio
import logging
import sys
import warnings
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer

from core import redaction
from core.errors import ConfigError, PersonabotError
from core.settings import Settings, load_settings

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML settings file (same as PERSONABOT_CONFIG)."),
]
ProfileOption = Annotated[
    str | None,
    typer.Option(
        "--profile",
        help="Model profile: auto, mistral-7b or smollm2-135m (PERSONABOT_MODEL_PROFILE).",
    ),
]


def settings_or_exit(config: Path | None = None, **overrides: Any) -> Settings:
    try:
        settings = load_settings({"config": config, **overrides})
    except ConfigError as exc:
        typer.echo(f"personabot: {exc}", err=True)
        raise typer.Exit(2) from None
    configure_logging(settings.log_level)
    redaction.install(settings)  # tokens and DB passwords never reach a log line
    return settings


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # Library chatter drowns the chat; keep their warnings and errors only.
    for noisy in ("httpx", "transformers", "peft", "accelerate", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    # bitsandbytes asks every CPU user to install an optional kernels package; peft calls a
    # transformers method transformers has deprecated. Neither is anything a user can act on.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    warnings.filterwarnings(
        "ignore", message=".*is_gradient_checkpointing.* is deprecated", category=FutureWarning
    )
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - transformers is a hard dependency
        pass


def run_command(coro: Coroutine[Any, Any, int]) -> None:
    """Run a command coroutine, turning user-fixable errors into one line and an exit code."""
    try:
        code = asyncio.run(coro)
    except ConfigError as exc:
        typer.echo(f"personabot: {redaction.redact(str(exc))}", err=True)
        raise typer.Exit(2) from None
    except PersonabotError as exc:
        typer.echo(f"personabot: {redaction.redact(str(exc))}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        code = 130
    raise typer.Exit(code)
