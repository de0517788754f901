"""personabot's engine: mood, personas, history, prompt building and generation.

Nothing in this package knows about Discord or Telegram; frontends in ``bots`` translate
platform events into calls on :class:`core.engine.Engine` and back.
"""
