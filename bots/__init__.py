"""Platform frontends (the terminal, Discord, Telegram) and the ``personabot`` CLI.

Each frontend only translates platform events into calls on :class:`core.engine.Engine` and
the engine's answers back into platform messages; what they share lives in
:mod:`bots.conversation`.
"""
