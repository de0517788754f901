"""``personabot`` commands about mood detection (detect, evaluate, train)."""

from __future__ import annotations

import typer


def register_mood_commands(app: typer.Typer) -> None:
    """Attach the mood commands to the main CLI app."""
