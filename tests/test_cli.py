"""The personabot command line, run as a user runs it (a real subprocess)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.storage import ConversationStore, Database, sqlite_url

COMMANDS = [
    [],
    ["chat"],
    ["run"],
    ["personas"],
    ["config"],
    ["db"],
    ["db", "upgrade"],
    ["db", "downgrade"],
    ["db", "current"],
]


def personabot_env(tmp_path: Path, model_cache_dir: Path, **env: str) -> dict[str, str]:
    """The environment a test's personabot runs in: this test's data, nothing inherited."""
    environment = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PERSONABOT_") and k not in ("DISCORD_TOKEN", "TELEGRAM_TOKEN")
    }
    environment.update(
        PERSONABOT_DATA_DIR=str(tmp_path / "data"),
        PERSONABOT_CACHE_DIR=str(model_cache_dir),
        PERSONABOT_MODEL_PROFILE="smollm2-135m",
        PERSONABOT_SEED="42",
    )
    environment.update(env)
    return environment


def personabot(
    args: list[str], tmp_path: Path, model_cache_dir: Path, stdin: str = "", **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bots", *args],
        input=stdin,
        env=personabot_env(tmp_path, model_cache_dir, **env),
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "top")
def test_every_command_has_help(command: list[str], tmp_path: Path, model_cache_dir: Path) -> None:
    done = personabot([*command, "--help"], tmp_path, model_cache_dir)
    assert done.returncode == 0, done.stderr
    assert "Usage:" in done.stdout
    assert len(done.stdout.strip().splitlines()) > 3


def test_piped_chat_gives_one_line_per_input_and_persists(
    tmp_path: Path, model_cache_dir: Path
) -> None:
    lines = [
        "/persona pirate",
        "Hello there, who are you?",
        "/mood I am so happy today, this is wonderful!",
        "/length short",
        "/persona wizard",
        "   ",
        "/nonsense",
        "/personas",
    ]
    done = personabot(["chat"], tmp_path, model_cache_dir, stdin="\n".join(lines) + "\n")
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert len(out) == len(lines), done.stdout
    assert out[0].startswith("Persona set to") and "(pirate)" in out[0]
    assert out[1] and not out[1].startswith("[error]")
    assert out[2].startswith("Mood: happiness")
    assert out[3] == "Reply length set to short."
    assert out[4].startswith("[error] Unknown persona 'wizard'") and "bard" in out[4]
    assert out[5].startswith("[error]") and "empty" in out[5]
    assert out[6].startswith("[error] Unknown command /nonsense")
    assert "▶ pirate" in out[7]

    # A second process on the same data directory: persona, length and history survived.
    again = personabot(
        ["chat", "--json"],
        tmp_path,
        model_cache_dir,
        stdin="/persona\n/length\nAnd now?\n/forget\n/mood\n",
    )
    assert again.returncode == 0, again.stderr
    records = [json.loads(line) for line in again.stdout.splitlines()]
    assert len(records) == 5
    assert "pirate" in records[0]["text"]
    assert records[1]["text"].startswith("Reply length: short")
    assert records[2]["kind"] == "reply" and records[2]["persona"] == "pirate"
    assert records[2]["mood"] in {
        "no emotion",
        "anger",
        "disgust",
        "fear",
        "happiness",
        "sadness",
        "surprise",
    }
    # Both runs' two exchanges, the user's messages and the replies to them.
    assert (
        records[3]["text"]
        == "Done: I deleted 4 stored messages here (yours and my replies to them)."
    )
    assert records[4]["text"].startswith("No message from you here yet.")


def test_run_without_tokens_starts_the_terminal_and_says_why(
    tmp_path: Path, model_cache_dir: Path
) -> None:
    done = personabot(["run"], tmp_path, model_cache_dir, stdin="/persona\n")
    assert done.returncode == 0, done.stderr
    assert "Not starting Discord: DISCORD_TOKEN is not set." in done.stderr
    assert "Not starting Telegram: TELEGRAM_TOKEN is not set." in done.stderr
    assert "Starting terminal." in done.stderr
    assert "Current persona" in done.stdout


def test_bad_configuration_exits_2_with_a_clear_message(
    tmp_path: Path, model_cache_dir: Path
) -> None:
    done = personabot(["chat"], tmp_path, model_cache_dir, PERSONABOT_MODEL_PROFILE="huge")
    assert done.returncode == 2
    assert "PERSONABOT_MODEL_PROFILE = 'huge'" in done.stderr and "smollm2-135m" in done.stderr
    assert "Traceback" not in done.stderr


def test_config_masks_the_database_password(tmp_path: Path, model_cache_dir: Path) -> None:
    """`config` output ends up in bug reports and chat threads; --help promises secrets are
    masked, and the database URL (a plain string, not a SecretStr) once printed its password
    twice, as database_url and on the `# database:` line."""
    password = "s3cr3t-pw"
    done = personabot(
        ["config"],
        tmp_path,
        model_cache_dir,
        PERSONABOT_DATABASE_URL=f"postgresql+asyncpg://bob:{password}@db.example:5432/bot",
    )
    assert done.returncode == 0, done.stderr
    assert password not in done.stdout and password not in done.stderr
    lines = done.stdout.splitlines()
    shown = [line for line in lines if line.startswith(("database_url =", "# database:"))]
    assert len(shown) == 2, done.stdout
    for line in shown:
        assert "bob:***@db.example:5432/bot" in line


def test_db_commands_upgrade_and_downgrade(tmp_path: Path, model_cache_dir: Path) -> None:
    up = personabot(["db", "upgrade"], tmp_path, model_cache_dir)
    assert up.returncode == 0, up.stderr
    head = up.stdout.split("latest: ")[1].strip()
    assert f"database revision: {head};" in up.stdout
    down = personabot(["db", "downgrade", "base"], tmp_path, model_cache_dir)
    assert down.returncode == 0, down.stderr
    assert "database revision: base (empty)" in down.stdout
    current = personabot(["db", "current"], tmp_path, model_cache_dir)
    assert "base (empty)" in current.stdout


def test_personas_lists_stored_personas_too(tmp_path: Path, model_cache_dir: Path) -> None:
    """A persona registered with `persona add-adapter` lives in the database; `personas`
    must show it beside the built-in ones, as the bot will serve it."""
    shipped = Path(__file__).resolve().parents[1] / "core/adapters/smollm2-135m-dailydialog"
    added = personabot(
        ["persona", "add-adapter", "myvoice", str(shipped), "--description", "My own voice."],
        tmp_path,
        model_cache_dir,
    )
    assert added.returncode == 0, added.stderr
    listed = personabot(["personas"], tmp_path, model_cache_dir)
    assert listed.returncode == 0, listed.stderr
    names = [line.split()[0] for line in listed.stdout.splitlines() if line.strip()]
    assert "myvoice" in names and "friend" in names
    assert "My own voice." in listed.stdout


def test_private_personas_are_granted_and_community_ones_published(
    tmp_path: Path, model_cache_dir: Path
) -> None:
    shipped = Path(__file__).resolve().parents[1] / "core/adapters/smollm2-135m-dailydialog"
    added = personabot(
        ["persona", "add-adapter", "myvoice", str(shipped)], tmp_path, model_cache_dir
    )
    assert added.returncode == 0, added.stderr
    assert "It is private" in added.stdout
    nowhere = personabot(["persona", "grant", "myvoice"], tmp_path, model_cache_dir)
    assert nowhere.returncode == 2 and "--telegram-chat" in nowhere.stderr
    granted = personabot(
        ["persona", "grant", "myvoice", "--telegram-chat", "42", "--discord-server", "7"],
        tmp_path,
        model_cache_dir,
    )
    assert granted.returncode == 0, granted.stderr
    listed = personabot(["persona", "list"], tmp_path, model_cache_dir)
    line = next(x for x in listed.stdout.splitlines() if x.startswith("myvoice"))
    assert "private; granted to: discord:server:7, telegram:chat:42" in line
    unknown = personabot(
        ["persona", "grant", "nobody", "--telegram-chat", "1"], tmp_path, model_cache_dir
    )
    assert unknown.returncode == 1 and "no stored persona" in unknown.stderr

    async def made_in_a_group() -> None:
        database = await Database.open(sqlite_url(tmp_path / "data" / "personabot.db"))
        chef = '{"name": "chef", "system_prompt": "You cook."}'
        await ConversationStore(database).save_persona("chef", chef, "t:1", "telegram:chat:-5")
        await database.close()

    asyncio.run(made_in_a_group())
    scoped = personabot(["persona", "list", "--scope", "all"], tmp_path, model_cache_dir)
    assert scoped.stdout.split()[:2] == ["telegram:chat:-5", "chef"]
    missing = personabot(["persona", "publish", "chef", "--scope", "x"], tmp_path, model_cache_dir)
    assert missing.returncode == 1
    published = personabot(
        ["persona", "publish", "chef", "--scope", "telegram:chat:-5"], tmp_path, model_cache_dir
    )
    assert published.returncode == 0, published.stderr
    everyone = personabot(["persona", "list"], tmp_path, model_cache_dir)
    assert any(x.startswith("chef") for x in everyone.stdout.splitlines())
