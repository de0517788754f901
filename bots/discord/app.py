"""The discord.py client, run inside personabot's own event loop.

``Client.run()`` would own the loop and the signals; personabot runs its frontends side by
side on one loop with one engine, so :func:`run_discord` drives discord.py's async API
itself: log in (which checks the token), register the slash commands, connect to the
gateway (discord.py reconnects and resumes by itself), wait for the stop event, let the
replies being written finish, then close.

``PERSONABOT_DISCORD_API_URL`` and ``PERSONABOT_DISCORD_GATEWAY_URL`` point discord.py at
another REST API and gateway (a proxy, or the fake server in the tests). discord.py keeps
both as class attributes, ``discord.http.Route.BASE`` and
``DiscordWebSocket.DEFAULT_GATEWAY``; the latter matters because discord.py 2.7 opens its
first connection to that default rather than to the URL ``/gateway/bot`` returns.
:func:`discord_endpoints` sets them for the client's lifetime and restores them afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import discord
import yarl
from discord import app_commands
from discord.ext import commands
from discord.gateway import DiscordWebSocket
from discord.http import Route

from bots.conversation.reply_flow import ReplyFlow
from bots.discord.commands import CommandTree, ConversationCommands
from bots.discord.messages import TYPING_REFRESH_SECONDS, DiscordMessages
from bots.discord.sending import NO_MENTIONS
from core.engine import Engine
from core.errors import ConfigError, PersonabotError
from core.settings import Settings

__all__ = ["PersonaBotClient", "discord_endpoints", "intents", "run_discord", "sync_commands"]

log = logging.getLogger(__name__)


def intents() -> discord.Intents:
    """Only what the bot uses: servers and their channels, messages in them and in DMs,
    and their text (the privileged Message Content intent, enabled in the Developer Portal)."""
    wanted = discord.Intents.none()
    wanted.guilds = True
    wanted.guild_messages = True
    wanted.dm_messages = True
    wanted.message_content = True
    return wanted


@contextlib.contextmanager
def discord_endpoints(api_url: str, gateway_url: str) -> Iterator[None]:
    """Point discord.py at ``api_url`` and ``gateway_url`` until the block ends."""
    base, gateway = Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY
    Route.BASE = api_url.rstrip("/")
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)
    try:
        yield
    finally:
        Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY = base, gateway


class PersonaBotClient(commands.Bot):
    """A discord.py client bound to one engine and the settings read at start-up."""

    def __init__(self, engine: Engine, settings: Settings, announce: Callable[[str], None]) -> None:
        # personabot never joins voice channels: skip discord.py's one-time warnings that
        # the voice libraries (PyNaCl, davey) are missing, which would only confuse operators.
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
        super().__init__(
            # Slash commands only; on_message below never runs text commands.
            command_prefix=commands.when_mentioned,
            help_command=None,
            tree_cls=CommandTree,
            intents=intents(),
            # A safety net under every send: nothing the bot posts pings anyone.
            allowed_mentions=NO_MENTIONS,
            # No member intent, so there are no members to fetch.
            chunk_guilds_at_startup=False,
        )
        flow = ReplyFlow.for_platform(
            engine, settings, "discord", typing_interval=TYPING_REFRESH_SECONDS
        )
        self._slash_commands = ConversationCommands(
            engine, flow, admin_only=settings.admins_only("discord")
        )
        self.handler = DiscordMessages(flow, stream_replies=settings.streams_replies("discord"))
        self._guild_ids = settings.discord_guild_ids
        self._announce = announce
        self._announced = False

    async def setup_hook(self) -> None:
        """After login, before the gateway: register the slash commands with Discord."""
        await self.add_cog(self._slash_commands)
        await sync_commands(self.tree, self._guild_ids)

    async def on_ready(self) -> None:
        if self._announced or self.user is None:
            return
        self._announced = True
        where = (
            f"commands in {len(self._guild_ids)} server(s)"
            if self._guild_ids
            else "global commands"
        )
        self._announce(f"Discord: online as {self.user} in {len(self.guilds)} server(s) ({where}).")

    async def on_message(self, message: discord.Message) -> None:
        if self.user is not None:
            await self.handler.on_message(message, self.user)

    async def on_disconnect(self) -> None:
        log.info("Discord: disconnected from the gateway; discord.py reconnects.")

    async def on_resumed(self) -> None:
        log.info("Discord: gateway session resumed.")

    async def on_error(self, event_method: str, /, *args: object, **kwargs: object) -> None:
        """Last resort for an event handler's exception: log it, keep the bot running."""
        log.exception("Error in the Discord event handler %s.", event_method)


async def sync_commands(tree: app_commands.CommandTree[Any], guild_ids: tuple[int, ...]) -> None:
    """Register the slash commands globally, or in the configured servers only.

    Server commands appear at once; with servers configured the global set is emptied, so an
    earlier global registration does not show every command twice. A failure costs the
    commands, not the bot: plain messages are still answered.
    """
    try:
        if not guild_ids:
            commands = await tree.sync()
            log.info("Discord: registered %d global commands.", len(commands))
            return
        for guild_id in guild_ids:
            guild = discord.Object(guild_id)
            tree.copy_global_to(guild=guild)
            await tree.sync(guild=guild)
        tree.clear_commands(guild=None)
        await tree.sync()
        log.info("Discord: registered the commands in %d server(s).", len(guild_ids))
    except discord.Forbidden as exc:
        log.warning(
            "Discord refused the slash commands (%s). Invite the bot with the "
            "applications.commands scope, and check PERSONABOT_DISCORD_GUILD_IDS.",
            exc,
        )
    except (discord.HTTPException, aiohttp.ClientError) as exc:
        log.warning("Could not register the Discord slash commands: %s", exc)


async def run_discord(
    engine: Engine,
    settings: Settings,
    stop: asyncio.Event,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve Discord until ``stop`` is set, then shut down gracefully.

    Raises :class:`ConfigError` for a rejected token or a missing Message Content intent,
    and :class:`PersonabotError` when Discord cannot be reached at start-up; later network
    trouble and gateway disconnects are retried by discord.py, not raised.
    """
    if settings.discord_token is None:
        raise ConfigError("DISCORD_TOKEN is not set; the Discord frontend needs it.")
    token = settings.discord_token.get_secret_value()
    client = PersonaBotClient(engine, settings, announce or log.info)
    with discord_endpoints(settings.discord_api_url, settings.discord_gateway_url):
        try:
            async with client:
                await client.login(token)
                await _serve(client, stop)
        except discord.LoginFailure:
            raise ConfigError(
                "Discord rejected DISCORD_TOKEN. Copy the bot token again from the Developer "
                "Portal (your application → Bot → Reset Token)."
            ) from None
        except discord.PrivilegedIntentsRequired:
            raise ConfigError(
                "Discord refused the Message Content intent. In the Developer Portal, open "
                "your application → Bot, turn on 'Message Content Intent' under Privileged "
                "Gateway Intents, save, and start again."
            ) from None
        except (aiohttp.ClientConnectionError, discord.GatewayNotFound) as exc:
            raise PersonabotError(
                f"Cannot reach Discord at {settings.discord_api_url}: {exc}. Check the network "
                "(or PERSONABOT_DISCORD_API_URL) and start again."
            ) from None
        except discord.ConnectionClosed as exc:
            if exc.code == 4004:  # the gateway's "authentication failed"
                raise ConfigError(
                    "Discord's gateway rejected DISCORD_TOKEN. Copy the bot token again from "
                    "the Developer Portal (your application → Bot → Reset Token)."
                ) from None
            raise PersonabotError(
                f"Discord closed the gateway connection for good (code {exc.code}): "
                f"{exc.reason or 'no reason given'}."
            ) from None


async def _serve(client: PersonaBotClient, stop: asyncio.Event) -> None:
    """Run the gateway connection until ``stop``; a failing connection ends it early."""
    connection = asyncio.create_task(client.connect(reconnect=True), name="discord-gateway")
    stopping = asyncio.create_task(stop.wait(), name="discord-stop")
    try:
        await asyncio.wait({connection, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if connection.done():
            connection.result()  # raises why the connection ended
            return
        await client.handler.drain()  # replies being written are finished and sent first
    finally:
        stopping.cancel()
        await client.close()
        if not connection.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(connection, 10)
