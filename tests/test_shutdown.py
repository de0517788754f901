"""SIGTERM while a reply is being written: ``personabot run`` as a real process.

With no platform token, ``personabot run`` is the terminal chat, fed through a pipe here. The
test waits until the message is stored (so its reply is being generated), sends SIGTERM, and
checks that the process ends with 0 and that the history is intact when the database is
opened again, at the schema revision the process left (no migration needed).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from pathlib import Path

from bots.runner import serve
from core.bootstrap import build_engine
from core.generation.local.transformers_generator import TransformersGenerator
from core.storage import ConversationStore, Database, sqlite_url
from core.types import ConversationRef
from tests.conftest import REPO, SettingsFactory, SharedGenerator
from tests.fake_telegram import TOKEN, FakeBotAPI
from tests.polling import until

QUESTION = "Tell me a long story about a lighthouse keeper and the sea."


def environment(data_dir: Path, model_cache_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PERSONABOT_") and k not in ("DISCORD_TOKEN", "TELEGRAM_TOKEN")
    }
    env.update(
        PERSONABOT_DATA_DIR=str(data_dir),
        PERSONABOT_CACHE_DIR=str(model_cache_dir),
        PERSONABOT_MODEL_PROFILE="smollm2-135m",
        PERSONABOT_MOOD_DETECTOR="lexicon",
        PERSONABOT_SEED="7",
        **extra,
    )
    return env


def stored_messages(db: Path) -> list[tuple[str, str]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(db, timeout=10)
    try:
        rows = conn.execute("SELECT role, text FROM messages ORDER BY id").fetchall()
    except sqlite3.OperationalError:  # not migrated yet
        return []
    finally:
        conn.close()  # an open reader would keep the bot from removing its WAL on exit
    return [(str(role), str(text)) for role, text in rows]


async def run_until_sigterm(env: dict[str, str], db: Path, length: str) -> tuple[int, str, str]:
    """Start ``personabot run``, send one message, SIGTERM once it is stored.

    Returns the exit code, what the chat printed after the /length answer, and stderr.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bots",
        "run",
        cwd=REPO,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None
    try:
        process.stdin.write(f"/length {length}\n{QUESTION}\n".encode())
        await process.stdin.drain()  # stdin stays open: the chat is not at its end
        await until(lambda: ("user", QUESTION) in stored_messages(db), within=180)
        process.send_signal(signal.SIGTERM)
        # Bounded by the shutdown timeout (plus closing); generous for a busy CPU.
        stdout, stderr = await asyncio.wait_for(process.communicate(), 900)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    lines = stdout.decode().splitlines(keepends=True)
    assert lines[0] == f"Reply length set to {length}.\n"
    return process.returncode, "".join(lines[1:]), stderr.decode()


async def history_after_restart(db: Path) -> list[tuple[str, str]]:
    # auto_migrate=False: the schema must be exactly as the process left it.
    database = await Database.open(sqlite_url(db), auto_migrate=False)
    try:
        store = ConversationStore(database)
        state = await store.find(ConversationRef("terminal", "local"))
        assert state is not None
        return [(m.role, m.text) for m in await store.history(state.id, limit=10)]
    finally:
        await database.close()


async def test_sigterm_finishes_the_reply_being_written_and_exits_0(
    tmp_path: Path, model_cache_dir: Path
) -> None:
    data = tmp_path / "data"
    db = data / "personabot.db"

    # A generous timeout: finishing is what is under test, however slow the CPU.
    env = environment(data, model_cache_dir, PERSONABOT_SHUTDOWN_TIMEOUT_SECONDS="600")

    code, stdout, stderr = await run_until_sigterm(env, db, length="short")

    assert code == 0, stderr
    assert "Traceback" not in stderr
    [printed] = stdout.splitlines()  # the reply in flight was finished and printed
    [question, reply] = await history_after_restart(db)
    assert question == ("user", QUESTION)
    assert reply[0] == "assistant"
    assert " ".join(reply[1].split("\n")) == printed  # piped output is one line per reply


async def test_sigterm_with_no_time_to_finish_cancels_and_keeps_the_message(
    tmp_path: Path, model_cache_dir: Path
) -> None:
    data = tmp_path / "data"
    db = data / "personabot.db"
    env = environment(data, model_cache_dir, PERSONABOT_SHUTDOWN_TIMEOUT_SECONDS="0")

    # A long reply (300 tokens, seconds on a CPU) is surely still being written.
    code, stdout, stderr = await run_until_sigterm(env, db, length="long")

    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert stdout == ""  # cancelled: nothing half-written was printed
    assert await history_after_restart(db) == [("user", QUESTION)]


async def test_serve_cancels_a_frontend_still_busy_after_the_timeout(
    make_settings: SettingsFactory, offline_generator: TransformersGenerator
) -> None:
    """``serve`` with a platform frontend whose reply outlasts the shutdown timeout: the
    operator is told, the frontend is cancelled, ``serve`` returns 0 at once, and the user's
    message stays stored (without a half-written reply)."""
    api = FakeBotAPI()
    await api.start()
    settings = make_settings(
        telegram_token=TOKEN,
        telegram_api_url=api.api_url,
        shutdown_timeout_seconds=0.5,
        user_cooldown_seconds=0,
        mood_detector="lexicon",
    )
    engine = await build_engine(settings, generator=SharedGenerator(offline_generator))
    announced: list[str] = []
    stop = asyncio.Event()
    chat_user = FakeBotAPI.user(601, "Carol")
    here = ConversationRef("telegram", "601")
    try:
        await engine.set_length(here, "long")  # hundreds of tokens: surely still being written
        serving = asyncio.create_task(serve(engine, settings, ["Telegram"], announced.append, stop))
        await api.wait_for(lambda: api.calls_to("getUpdates"))
        api.send(FakeBotAPI.private_chat(chat_user), chat_user, QUESTION)
        await api.wait_for(lambda: api.calls_to("sendChatAction"))  # the model is writing
        assert engine.replies_in_flight == 1
        stopped_at = asyncio.get_running_loop().time()
        stop.set()  # what SIGTERM does
        assert await asyncio.wait_for(serving, 60) == 0
        assert asyncio.get_running_loop().time() - stopped_at < 30  # bounded, not the reply
        assert any("Telegram did not stop within 0.5 s" in line for line in announced)
        assert api.sent_to(601) == []  # nothing half-written was sent
        history = await engine.history(here)
        assert [(m.role, m.text) for m in history] == [("user", QUESTION)]
    finally:
        await engine.aclose()
        await api.stop()
