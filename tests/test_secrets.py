"""Tokens and passwords never reach the logs or the messages personabot prints.

The in-process test makes the real Telegram frontend log an error that carries the token,
the way a reverse proxy in front of the Bot API echoes the request path in a 502 page; the
subprocess test runs ``personabot run`` at DEBUG with a database that cannot be reached.
Both then grep everything that was written.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from pathlib import Path

import pytest

from bots.telegram import run_telegram
from core import redaction
from core.bootstrap import build_engine
from core.generation.local.transformers_generator import TransformersGenerator
from tests.conftest import REPO, SettingsFactory, SharedGenerator
from tests.fake_telegram import TOKEN, FakeBotAPI
from tests.polling import until

DB_PASSWORD = "S3cret-db-Passw0rd"


async def test_a_telegram_error_carrying_the_token_is_logged_without_it(
    api: FakeBotAPI,
    make_settings: SettingsFactory,
    offline_generator: TransformersGenerator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(telegram_token=TOKEN, telegram_api_url=api.api_url)
    engine = await build_engine(settings, generator=SharedGenerator(offline_generator))
    stop = asyncio.Event()
    leak = f"Bad Gateway: upstream POST /bot{TOKEN}/getUpdates timed out"
    api.fail_next("getUpdates", 502, leak)
    caplog.set_level(logging.DEBUG)
    task = asyncio.create_task(run_telegram(engine, settings, stop))
    try:
        await until(lambda: "Fetching Telegram updates failed" in caplog.text)
        logging.getLogger("test").error("A library echoing a URL: %s/bot%s/getMe", "x", TOKEN)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
        await engine.aclose()

    assert TOKEN not in caplog.text
    assert TOKEN.split(":", 1)[1] not in caplog.text
    assert "upstream POST /bot***/getUpdates" in caplog.text
    assert "A library echoing a URL: x/bot***/getMe" in caplog.text


def test_records_are_scrubbed_in_messages_arguments_and_tracebacks() -> None:
    redaction.add_secrets(["discord-token-abcdef123456", "pw"])
    redaction.install()
    logger = logging.getLogger("test.scrub")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    logger.addHandler(handler)
    try:
        logger.warning("connecting to %s", "postgresql+asyncpg://bob:hunter2@db:5432/x")
        try:
            raise RuntimeError("login failed with discord-token-abcdef123456")
        except RuntimeError:
            logger.exception("Discord said no")
        logger.warning("the password pw is too short to be masked outside a URL")
    finally:
        logger.removeHandler(handler)

    formatter = logging.Formatter()
    rendered = "\n".join(formatter.format(record) for record in records)
    assert "hunter2" not in rendered and "bob:***@db:5432" in rendered
    assert "discord-token-abcdef123456" not in rendered
    assert "RuntimeError: login failed with ***" in rendered
    assert "the password pw is" in rendered
    assert redaction.redact(f"token {TOKEN} here") == "token *** here"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port  # closed again: connections are refused


async def test_personabot_run_never_prints_the_database_password_or_the_token(
    tmp_path: Path, model_cache_dir: Path
) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PERSONABOT_") and k not in ("DISCORD_TOKEN", "TELEGRAM_TOKEN")
    }
    env.update(
        TELEGRAM_TOKEN=TOKEN,
        PERSONABOT_DATA_DIR=str(tmp_path / "data"),
        PERSONABOT_CACHE_DIR=str(model_cache_dir),
        PERSONABOT_DATABASE_URL=(
            f"postgresql+asyncpg://personabot:{DB_PASSWORD}@127.0.0.1:{_closed_port()}/bot"
        ),
        PERSONABOT_DATABASE_CONNECT_ATTEMPTS="2",
        PERSONABOT_DATABASE_RETRY_BACKOFF_SECONDS="0.01",
        PERSONABOT_LOG_LEVEL="DEBUG",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bots",
        "run",
        cwd=REPO,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)

    output = stdout.decode() + stderr.decode()
    assert process.returncode == 1, output
    assert "Cannot reach the database postgresql+asyncpg://personabot:***@127.0.0.1" in output
    assert "after 2 attempts" in output
    assert DB_PASSWORD not in output
    assert TOKEN not in output
