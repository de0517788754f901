"""The Telegram frontend: python-telegram-bot in front of the engine.

``personabot run`` starts it when ``TELEGRAM_TOKEN`` is set. Nothing outside this package
imports telegram; the engine sees only conversations, authors and text.
"""

from bots.telegram.app import build_application, run_telegram

__all__ = ["build_application", "run_telegram"]
