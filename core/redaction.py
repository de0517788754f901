"""Keeping secrets out of logs and error messages.

A bot token in a log file is a stolen bot: whoever reads it controls the bot. Secrets reach
logs in ways no one writes on purpose: python-telegram-bot puts the token in every request
URL, so a network error's traceback carries it; a database URL carries its password; a
library logs its request line at DEBUG. So instead of trusting every log call, every log
record is scrubbed when it is created, whatever logger or handler it goes to:

* the configured secrets (``DISCORD_TOKEN``, ``TELEGRAM_TOKEN``, the webhook secret, the
  generation server's API key, the password in ``PERSONABOT_DATABASE_URL``) are replaced
  by ``***`` wherever they appear, in the message, its arguments and the rendered
  traceback;
* passwords in any ``scheme://user:password@host`` URL, and anything shaped like a Telegram
  bot token, are masked even when they are not configured ones (another bot's token pasted
  into a chat, a URL from a library).

:func:`redact` applies the same rules to a string, for error messages shown to a person.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from typing import Any

from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError

from core.settings import Settings

MASK = "***"
# Shorter configured secrets are only masked inside URLs: masking a two-letter password
# everywhere would shred the log without protecting much.
_MIN_SECRET = 4
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s/]+(?=@)")
_TELEGRAM_TOKEN = re.compile(r"\b\d{5,}:[A-Za-z0-9_-]{30,}")

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()
_installed = False


def redact(text: str) -> str:
    """``text`` with every known secret, URL password and bot token replaced by ``***``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
    return _TELEGRAM_TOKEN.sub(MASK, text)


def secrets_of(settings: Settings) -> list[str]:
    """Every secret value in the settings: tokens, the webhook secret, API key, DB password."""
    found = [
        secret.get_secret_value()
        for secret in (
            settings.discord_token,
            settings.telegram_token,
            settings.telegram_webhook_secret,
            settings.openai_api_key,
        )
        if secret is not None
    ]
    if settings.database_url:
        try:
            password = make_url(settings.database_url).password
        except ArgumentError:
            password = None
        if password:
            found.append(str(password))
    return found


def add_secrets(values: Iterable[str]) -> None:
    """Mask these values from now on (longest first, so a secret's prefix never leaks)."""
    global _secrets
    with _lock:
        merged = {*_secrets, *(v for v in values if len(v) >= _MIN_SECRET)}
        _secrets = tuple(sorted(merged, key=len, reverse=True))


def scrub(record: logging.LogRecord) -> None:
    """Redact one record in place: its message (arguments rendered) and its traceback.

    A record is only rewritten when something had to be masked, so handlers that look at
    ``record.args`` see them unchanged in the normal case.
    """
    try:
        message = record.getMessage()
    except Exception:  # a broken format string: logging reports that itself
        return
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and record.exc_info[0] is not None:
        rendered = logging.Formatter().formatException(record.exc_info)
        clean = redact(rendered)
        if clean != rendered:
            record.exc_text = clean  # formatters use exc_text instead of re-rendering
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


class RedactingFilter(logging.Filter):
    """The same scrubbing as a filter, for handlers configured outside personabot."""

    def filter(self, record: logging.LogRecord) -> bool:
        scrub(record)
        return True


def install(settings: Settings | None = None) -> None:
    """Scrub every log record created in this process from now on; idempotent.

    Installed as the log-record factory, so it covers every logger and every handler,
    including those added later (a test's caplog, a library's own).
    """
    global _installed
    if settings is not None:
        add_secrets(secrets_of(settings))
    with _lock:
        if _installed:
            return
        _installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        scrub(record)
        return record

    logging.setLogRecordFactory(factory)
