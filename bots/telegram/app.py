"""The python-telegram-bot Application, run inside personabot's own event loop.

``Application.run_polling()`` would own the loop and the signals; personabot runs its
frontends side by side on one loop with one engine, so this module drives PTB's async API
itself: initialise, register the commands, start polling (or the webhook server), wait for
the stop event, then stop in order so in-flight replies are still delivered.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from telegram import BotCommand, Update
from telegram.error import Conflict, InvalidToken, NetworkError, TelegramError
from telegram.ext import AIORateLimiter, Application, ApplicationBuilder, Updater

from bots.conversation.reply_flow import ReplyFlow
from bots.telegram.commands import COMMANDS, TelegramCommands
from bots.telegram.messages import TYPING_REFRESH_SECONDS, TelegramMessages
from core.engine import Engine
from core.errors import ConfigError, PersonabotError
from core.settings import Settings

__all__ = ["ALLOWED_UPDATES", "build_application", "register_commands", "run_telegram"]

log = logging.getLogger(__name__)

TelegramApplication = Application[Any, Any, Any, Any, Any, Any]

#: The only updates the bot acts on; asking for fewer saves Telegram and us the traffic.
ALLOWED_UPDATES = (Update.MESSAGE, Update.CALLBACK_QUERY)

#: Long-polling timeout: Telegram holds getUpdates open this long when there is nothing new.
POLL_TIMEOUT_SECONDS = 30
#: How often a request refused with 429 is retried, each time after Telegram's retry_after.
RATE_LIMIT_RETRIES = 3
#: Retries for deleteWebhook/setWebhook at start-up, so a brief outage is not fatal.
BOOTSTRAP_RETRIES = 3


def build_application(engine: Engine, settings: Settings) -> TelegramApplication:
    """The Application with our handlers, flood control and concurrent update handling."""
    if settings.telegram_token is None:
        raise ConfigError("TELEGRAM_TOKEN is not set; the Telegram frontend needs it.")
    application = (
        ApplicationBuilder()
        .token(settings.telegram_token.get_secret_value())
        .base_url(settings.telegram_api_url)
        .base_file_url(_file_url(settings.telegram_api_url))
        # Paces requests to Telegram's limits and, on a 429, waits retry_after and retries.
        .rate_limiter(AIORateLimiter(max_retries=RATE_LIMIT_RETRIES))
        # Chats are served concurrently; the engine keeps each conversation in order.
        .concurrent_updates(True)
        .build()
    )
    flow = ReplyFlow.for_platform(
        engine, settings, "telegram", typing_interval=TYPING_REFRESH_SECONDS
    )
    messages = TelegramMessages(flow, stream_replies=settings.streams_replies("telegram"))
    commands = TelegramCommands(engine, flow, admin_only=settings.admins_only("telegram"))
    commands.register(application, messages)
    return application


def _file_url(api_url: str) -> str:
    """Telegram serves files under ``/file/bot<token>`` next to ``/bot<token>``."""
    return re.sub(r"/bot(?=[^/]*$)", "/file/bot", api_url)


async def register_commands(application: TelegramApplication) -> None:
    """Fill the clients' "/" menu; a failure costs the menu, not the bot."""
    try:
        await application.bot.set_my_commands([BotCommand(n, d) for n, d in COMMANDS])
    except TelegramError as exc:
        log.warning("Could not register the Telegram commands (setMyCommands): %s", exc)


async def run_telegram(
    engine: Engine,
    settings: Settings,
    stop: asyncio.Event,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve Telegram until ``stop`` is set, then shut down gracefully.

    Raises :class:`ConfigError` for a rejected token and :class:`PersonabotError` when the
    Bot API cannot be reached at start-up; later network trouble is retried, not raised.
    """
    application = build_application(engine, settings)
    try:
        async with application:  # initialize() checks the token with getMe
            await register_commands(application)
            await application.start()
            updater = application.updater
            if updater is None:  # pragma: no cover - the builder always makes one
                raise RuntimeError("the Telegram application has no updater")
            try:
                mode = await _start_updates(updater, settings)
                (announce or log.info)(f"Telegram: online as @{application.bot.username} ({mode}).")
                await stop.wait()
            finally:
                if updater.running:
                    await updater.stop()
                if application.running:
                    await application.stop()  # waits for replies being generated or sent
    except InvalidToken:
        raise ConfigError(
            "Telegram rejected TELEGRAM_TOKEN. Copy the token BotFather gave you (it looks "
            "like 123456789:AA...), or get it again with /token in BotFather."
        ) from None
    except NetworkError as exc:
        raise PersonabotError(
            f"Cannot reach the Telegram Bot API at {settings.telegram_api_url}: {exc}. "
            "Check the network (or PERSONABOT_TELEGRAM_API_URL) and start again."
        ) from None


def _polling_failed(error: TelegramError) -> None:
    """One line per failed poll instead of PTB's traceback; PTB retries with a backoff."""
    if isinstance(error, Conflict):
        log.error(
            "Another process is fetching updates with this TELEGRAM_TOKEN (409 Conflict); "
            "stop it, or remove its webhook. Retrying."
        )
    else:
        log.warning("Fetching Telegram updates failed (%s); retrying.", error)


async def _start_updates(updater: Updater, settings: Settings) -> str:
    """Start polling or the webhook server; returns a description for the operator."""
    url = settings.telegram_webhook_url
    if url is None:
        await updater.start_polling(
            timeout=POLL_TIMEOUT_SECONDS,
            allowed_updates=ALLOWED_UPDATES,
            bootstrap_retries=BOOTSTRAP_RETRIES,
            error_callback=_polling_failed,
        )
        return "long polling"
    secret = settings.telegram_webhook_secret
    address = f"{settings.telegram_webhook_listen}:{settings.telegram_webhook_port}"
    try:
        await updater.start_webhook(
            listen=settings.telegram_webhook_listen,
            port=settings.telegram_webhook_port,
            url_path=urlsplit(url).path.lstrip("/"),
            webhook_url=url,
            # Without a configured secret a fresh random one per start still keeps out anyone
            # who merely guesses the URL: setWebhook tells Telegram the new one each time.
            secret_token=secret.get_secret_value() if secret else secrets.token_urlsafe(32),
            allowed_updates=ALLOWED_UPDATES,
            bootstrap_retries=BOOTSTRAP_RETRIES,
        )
    except OSError as exc:
        raise ConfigError(
            f"Cannot serve the Telegram webhook on {address}: {exc.strerror or exc}. Change "
            "PERSONABOT_TELEGRAM_WEBHOOK_LISTEN or PERSONABOT_TELEGRAM_WEBHOOK_PORT."
        ) from None
    return f"webhook {url}, listening on {address}"
