"""Platform frontends (terminal today; Discord and Telegram plug in here).

Each frontend only translates platform events into calls on :class:`core.engine.Engine` and
the engine's answers back into platform messages.
"""
