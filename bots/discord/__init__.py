"""The Discord frontend: discord.py in front of the engine.

``personabot run`` starts it when ``DISCORD_TOKEN`` is set. Nothing outside this package
imports discord; the engine sees only conversations, authors and text.
"""

from bots.discord.app import PersonaBotClient, discord_endpoints, run_discord

__all__ = ["PersonaBotClient", "discord_endpoints", "run_discord"]
