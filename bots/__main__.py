"""``python -m bots`` runs the personabot CLI (same as the ``personabot`` command)."""

from bots.cli import main

main()
