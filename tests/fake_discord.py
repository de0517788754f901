"""A fake Discord (REST API + gateway) on 127.0.0.1 for the real discord.py client.

One aiohttp server plays both halves of Discord:

* the gateway, a websocket at ``/gateway``: HELLO, IDENTIFY (token and privileged-intent
  checks, closing with 4004/4014 like Discord), heartbeats and their ACKs, READY and
  GUILD_CREATE, RESUME with the events missed meanwhile replayed, and zlib-stream transport
  compression when the client asks for it. Tests dispatch MESSAGE_CREATE and
  INTERACTION_CREATE as users would cause them, and can drop the connection.
* the REST API under ``/api/v10``: the routes personabot uses (users/@me, the application,
  /gateway/bot, bulk command overwrite, create/edit/delete message, typing, interaction
  callbacks, follow-up webhooks). Like Discord it refuses empty messages and content over
  2,000 characters, checks the bot token, answers unknown channels with 404 and can be told
  to answer any route with an error, including 429 with ``retry_after`` (and the ``Via``
  header discord.py uses to tell Discord's 429s from Cloudflare's).

Every request is recorded (:attr:`FakeDiscord.calls`); every message the bot posts is kept
with the ``allowed_mentions`` it was sent with and the pings Discord would have sent for it
(:attr:`FakeDiscord.sent`), computed with Discord's rules from the content.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import socket
import time
import zlib
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiohttp import WSMsgType, web

JSON = dict[str, Any]
T = TypeVar("T")

TOKEN = "OTAwMDAwMDAwMDAwMDAwMDAx.fake.personabot-test-token"
BOT_ID = 900000000000000001
APP_ID = BOT_ID
BOT_NAME = "PersonaTestBot"
GUILD_ID = 910000000000000001
BOT_ROLE_ID = 910000000000000002
GENERAL = 920000000000000001  # a text channel
RANDOM = 920000000000000002  # another text channel
THREAD = 920000000000000003  # a public thread in #general

#: Permission bits (https://discord.com/developers/docs/topics/permissions).
ADMINISTRATOR = 1 << 3
MANAGE_CHANNELS = 1 << 4
MANAGE_GUILD = 1 << 5
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
MANAGE_MESSAGES = 1 << 13
EMBED_LINKS = 1 << 14
READ_MESSAGE_HISTORY = 1 << 16
MENTION_EVERYONE = 1 << 17
SEND_MESSAGES_IN_THREADS = 1 << 38
MEMBER = VIEW_CHANNEL | SEND_MESSAGES | READ_MESSAGE_HISTORY | SEND_MESSAGES_IN_THREADS
#: A moderator who may ping everyone: what a generated "@everyone" could abuse.
ADMIN = MEMBER | MANAGE_GUILD | MANAGE_MESSAGES | MANAGE_CHANNELS | MENTION_EVERYONE

MESSAGE_CONTENT_INTENT = 1 << 15
_DISCORD_EPOCH_MS = 1420070400000
_EPHEMERAL = 1 << 6
_MENTION = re.compile(r"<@!?(\d+)>")
_ROLE_MENTION = re.compile(r"<@&(\d+)>")


class APIError(Exception):
    """An error answer, in Discord's JSON shape."""

    def __init__(
        self, status: int, message: str, code: int = 0, errors: JSON | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body: JSON = {"message": message, "code": code}
        if errors is not None:
            self.body["errors"] = errors


@dataclass
class Call:
    """One REST request the bot made, and how it was answered."""

    method: str
    route: str  # e.g. "POST /channels/{channel_id}/messages"
    path: str
    query: dict[str, str]
    body: Any
    at: float
    status: int = 200


@dataclass
class Failure:
    status: int
    message: str
    retry_after: float | None = None


@dataclass
class Interaction:
    """An interaction the fake dispatched, and what the bot answered to it."""

    payload: JSON
    responses: list[JSON] = field(default_factory=list)
    messages: list[JSON] = field(default_factory=list)

    @property
    def id(self) -> int:
        return int(self.payload["id"])

    @property
    def token(self) -> str:
        return str(self.payload["token"])


@dataclass
class Session:
    """A gateway session: it outlives its websocket so that it can be resumed."""

    id: str
    intents: int
    seq: int = 0
    ws: web.WebSocketResponse | None = None
    compressor: Any = None
    missed: list[JSON] = field(default_factory=list)


class FakeDiscord:
    """The server. ``api_url`` and ``gateway_url`` are what personabot's settings take."""

    def __init__(self, *, token: str = TOKEN, message_content_enabled: bool = True) -> None:
        self.token = token
        self.message_content_enabled = message_content_enabled
        self.port = 0
        self.calls: list[Call] = []
        self.sent: list[JSON] = []  # messages the bot created, in order
        self.edits: list[JSON] = []  # every edit of one of them: {"id", "content", ...}
        self.typing: list[int] = []  # channel ids the bot showed "typing…" in
        self.commands: dict[int | None, list[JSON]] = {}  # None: global commands
        self.identifies: list[JSON] = []
        self.resumes: list[JSON] = []
        self.heartbeats = 0
        self.sessions_started = 0  # READY and GUILD_CREATE sent: the bot can be talked to
        self.gateway_queries: list[dict[str, str]] = []
        self.users: dict[int, JSON] = {}
        self.permissions: dict[int, int] = {}
        self.channels: dict[int, JSON] = {}
        self.messages: dict[int, JSON] = {}
        self.interactions: dict[int, Interaction] = {}
        self._sessions: dict[str, Session] = {}
        self._live: Session | None = None
        self._failures: dict[str, list[Failure]] = defaultdict(list)
        self._serial = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._changed: asyncio.Condition | None = None
        self.bot = self.add_user(BOT_ID, BOT_NAME, bot=True)
        self._build_guild()

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._changed = asyncio.Condition()
        app = web.Application()
        app.router.add_get("/gateway", self._gateway)
        api = "/api/v10"
        for method, path, handler, auth in (
            ("GET", "/users/@me", self._get_me, True),
            ("GET", "/oauth2/applications/@me", self._get_application, True),
            ("GET", "/gateway", self._get_gateway, False),
            ("GET", "/gateway/bot", self._get_gateway_bot, True),
            ("PUT", "/applications/{app_id}/commands", self._put_commands, True),
            ("PUT", "/applications/{app_id}/guilds/{guild_id}/commands", self._put_commands, True),
            ("POST", "/channels/{channel_id}/messages", self._create_message, True),
            ("GET", "/channels/{channel_id}/messages/{message_id}", self._get_message, True),
            ("PATCH", "/channels/{channel_id}/messages/{message_id}", self._edit_message, True),
            ("DELETE", "/channels/{channel_id}/messages/{message_id}", self._delete_message, True),
            ("POST", "/channels/{channel_id}/typing", self._trigger_typing, True),
            ("POST", "/interactions/{interaction_id}/{token}/callback", self._callback, False),
            ("POST", "/webhooks/{app_id}/{token}", self._followup, False),
            ("PATCH", "/webhooks/{app_id}/{token}/messages/{message_id}", self._edit_hook, False),
            ("GET", "/webhooks/{app_id}/{token}/messages/{message_id}", self._get_hook, False),
        ):
            app.router.add_route(method, api + path, self._wrap(method, path, handler, auth))
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, handle_signals=False)
        await self._runner.setup()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        self.port = listener.getsockname()[1]
        await web.SockSite(self._runner, listener).start()

    async def stop(self) -> None:
        for session in self._sessions.values():
            if session.ws is not None and not session.ws.closed:
                await session.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    # -- the world: users, the server, its channels -------------------------------------------

    def add_user(
        self,
        user_id: int,
        username: str,
        *,
        global_name: str | None = None,
        bot: bool = False,
        permissions: int = MEMBER,
    ) -> JSON:
        user: JSON = {
            "id": str(user_id),
            "username": username,
            "global_name": global_name,
            "discriminator": "0",
            "avatar": None,
            "bot": bot,
            "public_flags": 0,
        }
        self.users[user_id] = user
        self.permissions[user_id] = permissions
        return user

    def _build_guild(self) -> None:
        for channel_id, name in ((GENERAL, "general"), (RANDOM, "random")):
            self.channels[channel_id] = {
                "id": str(channel_id),
                "type": 0,
                "guild_id": str(GUILD_ID),
                "name": name,
                "position": len(self.channels),
                "permission_overwrites": [],
                "nsfw": False,
                "parent_id": None,
                "topic": None,
                "last_message_id": None,
                "rate_limit_per_user": 0,
            }
        self.channels[THREAD] = {
            "id": str(THREAD),
            "type": 11,
            "guild_id": str(GUILD_ID),
            "parent_id": str(GENERAL),
            "owner_id": str(BOT_ID),
            "name": "a thread",
            "message_count": 0,
            "member_count": 1,
            "rate_limit_per_user": 0,
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": 1440,
                "archive_timestamp": _now(),
                "locked": False,
            },
        }

    def guild_payload(self) -> JSON:
        """The GUILD_CREATE payload: channels, roles (the bot's own included) and the bot."""
        everyone: JSON = {"id": str(GUILD_ID), "name": "@everyone", "permissions": str(MEMBER)}
        own_role: JSON = {
            "id": str(BOT_ROLE_ID),
            "name": BOT_NAME,
            "permissions": str(MEMBER | EMBED_LINKS),
            "managed": True,
            "tags": {"bot_id": str(BOT_ID)},
        }
        channels = [c for c in self.channels.values() if c["type"] == 0]
        threads = [c for c in self.channels.values() if c["type"] == 11]
        return {
            "id": str(GUILD_ID),
            "name": "Test server",
            "icon": None,
            "owner_id": "1",
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "features": [],
            "mfa_level": 0,
            "premium_tier": 0,
            "preferred_locale": "en-US",
            "nsfw_level": 0,
            "roles": [{**role, "position": i} for i, role in enumerate([everyone, own_role])],
            "emojis": [],
            "stickers": [],
            "member_count": len(self.users),
            "joined_at": _now(),
            "large": False,
            "unavailable": False,
            "members": [self.member(BOT_ID, roles=[BOT_ROLE_ID])],
            "channels": channels,
            "threads": threads,
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }

    def member(
        self, user_id: int, *, roles: list[int] | None = None, nick: str | None = None
    ) -> JSON:
        return {
            "user": self.users[user_id],
            "nick": nick,
            "roles": [str(r) for r in roles or []],
            "joined_at": _now(),
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
        }

    def dm_channel(self, user: JSON) -> int:
        """The id of the DM channel between ``user`` and the bot."""
        channel_id = int(user["id"]) + 1
        self.channels.setdefault(
            channel_id,
            {"id": str(channel_id), "type": 1, "recipients": [user], "last_message_id": None},
        )
        return channel_id

    # -- what tests inject: users' messages and interactions --------------------------------

    def fail_next(
        self,
        route: str,
        status: int,
        message: str | None = None,
        *,
        retry_after: float | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` requests to ``route`` (``"POST /channels/{channel_id}/
        messages"``) with this error."""
        text = message or {
            429: "You are being rate limited.",
            403: "Missing Permissions",
            404: "Unknown Channel",
            500: "500: Internal Server Error",
            503: "upstream connect error",
        }.get(status, "Bad Request")
        for _ in range(times):
            self._failures[route].append(Failure(status, text, retry_after))

    async def say(
        self,
        channel_id: int,
        user: JSON,
        content: str,
        *,
        reply_to: JSON | None = None,
        nick: str | None = None,
    ) -> JSON:
        """``user`` posts ``content`` in a channel (a DM channel too); mentions written as
        ``<@id>`` are resolved as Discord does. Returns the message."""
        channel = self.channels[channel_id]
        guild = channel.get("guild_id")
        message: JSON = {
            "id": str(self.snowflake()),
            "channel_id": str(channel_id),
            "author": user,
            "content": content,
            "timestamp": _now(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "components": [],
            "pinned": False,
            "type": 0,
            "flags": 0,
        }
        mentioned = [int(m) for m in _MENTION.findall(content) if int(m) in self.users]
        message["mentions"] = [self.users[m] for m in dict.fromkeys(mentioned)]
        if guild is not None:
            message["guild_id"] = guild
            member = self.member(int(user["id"]), nick=nick)
            member.pop("user")
            message["member"] = member
            message["mention_roles"] = _ROLE_MENTION.findall(content)
            may_ping_all = self.permissions.get(int(user["id"]), 0) & MENTION_EVERYONE
            message["mention_everyone"] = bool(may_ping_all) and (
                "@everyone" in content or "@here" in content
            )
        if reply_to is not None:
            message["type"] = 19
            message["message_reference"] = {
                "type": 0,
                "message_id": reply_to["id"],
                "channel_id": reply_to["channel_id"],
                **({"guild_id": guild} if guild else {}),
            }
            message["referenced_message"] = reply_to
        self.messages[int(message["id"])] = message
        await self.dispatch("MESSAGE_CREATE", message)
        return message

    async def mention(self, channel_id: int, user: JSON, text: str) -> JSON:
        """``user`` writes ``@PersonaTestBot text`` in a server channel."""
        return await self.say(channel_id, user, f"<@{BOT_ID}> {text}")

    def command(self, name: str, guild_id: int | None = None) -> JSON:
        """A command as the bot registered it (globally, or in ``guild_id``)."""
        for registered in (*self.commands.get(guild_id, []), *self.commands.get(None, [])):
            if registered["name"] == name:
                return registered
        raise AssertionError(f"the bot has not registered /{name}")

    async def slash(
        self,
        user: JSON,
        channel_id: int,
        name: str,
        subcommand: str | None = None,
        /,
        focused: str | None = None,
        **values: Any,
    ) -> Interaction:
        """``user`` runs ``/name [subcommand] option:value...`` in a channel. The option
        types come from the command the bot registered, as Discord's client does it. With
        ``focused``, the user is still typing that option: an autocomplete request."""
        guild_id = self.channels[channel_id].get("guild_id")
        registered = self.command(name, int(guild_id) if guild_id else None)
        options_spec = registered.get("options", [])
        if subcommand is not None:
            sub = next(o for o in options_spec if o["name"] == subcommand and o["type"] == 1)
            options_spec = sub.get("options", [])
        options: list[JSON] = []
        for option_name, value in values.items():
            spec = next((o for o in options_spec if o["name"] == option_name), None)
            assert spec is not None, f"/{name} has no option {option_name!r}"
            option: JSON = {"name": option_name, "type": spec["type"], "value": value}
            if option_name == focused:
                option["focused"] = True
            options.append(option)
        data: JSON = {"id": registered["id"], "name": name, "type": 1}
        if guild_id:
            data["guild_id"] = guild_id
        if subcommand is not None:
            data["options"] = [{"name": subcommand, "type": 1, "options": options}]
        elif options:
            data["options"] = options
        return await self.interact(user, channel_id, 4 if focused else 2, data)

    async def submit_modal(
        self, user: JSON, opened_by: Interaction, values: dict[str, str]
    ) -> Interaction:
        """``user`` fills in the modal the bot answered ``opened_by`` with (``values`` by
        field label, left-out fields stay empty) and submits it."""
        (modal,) = [r["data"] for r in opened_by.responses if r["type"] == 9]
        rows: list[JSON] = []
        for row in modal["components"]:
            inputs = row["components"] if row["type"] == 1 else [row["component"]]
            for text_input in inputs:
                value = values.get(text_input["label"], "")
                rows.append(
                    {
                        "type": 1,
                        "components": [
                            {"type": 4, "custom_id": text_input["custom_id"], "value": value}
                        ],
                    }
                )
        channel_id = int(opened_by.payload["channel_id"])
        data = {"custom_id": modal["custom_id"], "components": rows}
        return await self.interact(user, channel_id, 5, data)

    async def interact(self, user: JSON, channel_id: int, kind: int, data: JSON) -> Interaction:
        channel = self.channels[channel_id]
        guild_id = channel.get("guild_id")
        payload: JSON = {
            "id": str(self.snowflake()),
            "application_id": str(APP_ID),
            "type": kind,
            "data": data,
            "channel_id": str(channel_id),
            "channel": channel,
            "token": f"interaction-token-{next(self._serial)}",
            "version": 1,
            "locale": "en-US",
            "entitlements": [],
            "attachment_size_limit": 10 * 1024 * 1024,
            "app_permissions": str(MEMBER | EMBED_LINKS),
        }
        if guild_id is not None:
            member = self.member(int(user["id"]))
            member["permissions"] = str(self.permissions.get(int(user["id"]), MEMBER))
            payload.update(
                guild_id=guild_id,
                guild_locale="en-US",
                member=member,
                context=0,
                authorizing_integration_owners={"0": guild_id},
            )
        else:
            payload.update(user=user, context=1, authorizing_integration_owners={"0": "0"})
        interaction = Interaction(payload)
        self.interactions[interaction.id] = interaction
        await self.dispatch("INTERACTION_CREATE", payload)
        return interaction

    # -- what tests look at -------------------------------------------------------------------

    def calls_to(self, route: str, *, ok: bool | None = None) -> list[Call]:
        return [
            c
            for c in self.calls
            if c.route == route and (ok is None or (200 <= c.status < 300) == ok)
        ]

    def sent_to(self, channel_id: int) -> list[JSON]:
        """What the bot posted in a channel (not counting interaction answers)."""
        return [m for m in self.sent if m["channel_id"] == str(channel_id) and "via" not in m]

    async def wait_for(self, predicate: Callable[[], T], within: float = 60.0) -> T:
        """Wait until ``predicate()`` is truthy (re-checked on every request and gateway
        message); return it."""
        assert self._changed is not None
        async with self._changed:
            return await asyncio.wait_for(self._changed.wait_for(predicate), within)

    async def messages_in(self, channel_id: int, count: int, within: float = 60.0) -> list[JSON]:
        """The first ``count`` messages the bot posted in a channel, once they exist."""
        await self.wait_for(lambda: len(self.sent_to(channel_id)) >= count, within)
        return self.sent_to(channel_id)[:count]

    async def answers(self, interaction: Interaction, count: int = 1) -> list[JSON]:
        """The first ``count`` messages the bot answered an interaction with."""
        await self.wait_for(lambda: len(interaction.messages) >= count)
        return interaction.messages[:count]

    async def answer(self, interaction: Interaction) -> JSON:
        return (await self.answers(interaction, 1))[0]

    @property
    def connected(self) -> bool:
        return self._live is not None and self._live.ws is not None and not self._live.ws.closed

    async def drop_connection(self, code: int = 4000) -> None:
        """Close the gateway websocket, as Discord does now and then (4000: unknown error,
        the client should resume)."""
        live = self._live
        assert live is not None and live.ws is not None
        await live.ws.close(code=code, message=b"fake Discord closed the connection")

    def snowflake(self) -> int:
        ms = int(time.time() * 1000) - _DISCORD_EPOCH_MS
        return (ms << 22) | (next(self._serial) & 0x3FFFFF)

    # -- gateway ------------------------------------------------------------------------------

    async def dispatch(self, event: str, data: JSON) -> None:
        """Send an event to the connected session; kept for a resume while disconnected."""
        session = self._live
        if session is None:  # no bot ever connected: like Discord, there is nobody to tell
            return
        session.seq += 1
        frame = {"op": 0, "t": event, "s": session.seq, "d": data}
        if session.ws is None or session.ws.closed:
            session.missed.append(frame)
        else:
            await self._send(session, frame)
        await self._notify()

    async def _send(self, session: Session, frame: JSON) -> None:
        assert session.ws is not None
        text = json.dumps(frame)
        if session.compressor is None:
            await session.ws.send_str(text)
        else:
            # zlib-stream: one compression context per connection, each payload flushed
            # with Z_SYNC_FLUSH so that it ends in 00 00 ff ff.
            compressed = session.compressor.compress(text.encode())
            await session.ws.send_bytes(compressed + session.compressor.flush(zlib.Z_SYNC_FLUSH))

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.gateway_queries.append(dict(request.query))
        compress = request.query.get("compress") == "zlib-stream"
        # Before IDENTIFY/RESUME, frames go out through a session of their own.
        hello = Session(
            id="", intents=0, ws=ws, compressor=zlib.compressobj() if compress else None
        )
        await self._send(
            hello, {"op": 10, "s": None, "t": None, "d": {"heartbeat_interval": 41250}}
        )
        session: Session | None = None
        try:
            async for raw in ws:
                if raw.type is not WSMsgType.TEXT:
                    continue
                payload = json.loads(raw.data)
                op, data = payload.get("op"), payload.get("d")
                if op == 1:
                    self.heartbeats += 1
                    await self._send(hello, {"op": 11, "s": None, "t": None, "d": None})
                elif op == 2:
                    session = await self._identify(ws, hello, data)
                elif op == 6:
                    session = await self._resume(ws, hello, data)
                await self._notify()
        finally:
            if session is not None and session.ws is ws:
                session.ws = None
            await self._notify()
        return ws

    async def _identify(
        self, ws: web.WebSocketResponse, hello: Session, data: JSON
    ) -> Session | None:
        self.identifies.append(data)
        if data.get("token") != self.token:
            await ws.close(code=4004, message=b"Authentication failed.")
            return None
        intents = int(data.get("intents", 0))
        if intents & MESSAGE_CONTENT_INTENT and not self.message_content_enabled:
            await ws.close(code=4014, message=b"Disallowed intent(s).")
            return None
        session = Session(
            id=f"session-{next(self._serial)}", intents=intents, ws=ws, compressor=hello.compressor
        )
        self._sessions[session.id] = session
        self._live = session
        await self.dispatch(
            "READY",
            {
                "v": 10,
                "user": {**self.bot, "verified": True, "mfa_enabled": False, "flags": 0},
                "guilds": [{"id": str(GUILD_ID), "unavailable": True}],
                "session_id": session.id,
                "resume_gateway_url": self.gateway_url,
                "shard": [0, 1],
                "application": {"id": str(APP_ID), "flags": 1 << 19},
                "private_channels": [],
                "relationships": [],
                "presences": [],
                "geo_ordered_rtc_regions": [],
            },
        )
        await self.dispatch("GUILD_CREATE", self.guild_payload())
        self.sessions_started += 1
        return session

    async def _resume(
        self, ws: web.WebSocketResponse, hello: Session, data: JSON
    ) -> Session | None:
        self.resumes.append(data)
        session = self._sessions.get(str(data.get("session_id")))
        if session is None or data.get("token") != self.token:
            await self._send(hello, {"op": 9, "s": None, "t": None, "d": False})
            return None
        session.ws, session.compressor = ws, hello.compressor
        self._live = session
        missed, session.missed = session.missed, []
        for frame in missed:
            await self._send(session, frame)
        await self.dispatch("RESUMED", {})
        return session

    # -- REST ---------------------------------------------------------------------------------

    def _wrap(
        self,
        method: str,
        path: str,
        handler: Callable[[web.Request, Any], Awaitable[Any]],
        auth: bool,
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        route = f"{method} {path}"

        async def handle(request: web.Request) -> web.Response:
            body: Any = None
            if request.can_read_body:
                raw = await request.read()
                body = (
                    json.loads(raw) if raw and request.content_type == "application/json" else raw
                )
            call = Call(
                method,
                route,
                request.path,
                dict(request.query),
                body,
                asyncio.get_running_loop().time(),
            )
            self.calls.append(call)
            try:
                if auth and request.headers.get("Authorization") != f"Bot {self.token}":
                    raise APIError(401, "401: Unauthorized")
                failures = self._failures.get(route)
                if failures:
                    failure = failures.pop(0)
                    if failure.status == 429:
                        call.status = 429
                        return _rate_limited(failure)
                    raise APIError(failure.status, failure.message)
                result = await handler(request, body)
            except APIError as error:
                call.status = error.status
                return _json_response(error.body, status=error.status)
            finally:
                await self._notify()
            if result is None:
                call.status = 204
                return web.Response(status=204)
            return _json_response(result)

        return handle

    async def _notify(self) -> None:
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    async def _get_me(self, request: web.Request, body: Any) -> JSON:
        return {**self.bot, "verified": True, "mfa_enabled": False, "flags": 0}

    async def _get_application(self, request: web.Request, body: Any) -> JSON:
        return {
            "id": str(APP_ID),
            "name": BOT_NAME,
            "icon": None,
            "description": "",
            "summary": "",
            "rpc_origins": [],
            "bot_public": True,
            "bot_require_code_grant": False,
            "owner": {**self.bot, "id": "1", "username": "owner", "bot": False},
            "verify_key": "0" * 64,
            "team": None,
            "flags": 1 << 19,  # GATEWAY_MESSAGE_CONTENT_LIMITED: the intent is switched on
            "interactions_endpoint_url": None,
        }

    async def _get_gateway(self, request: web.Request, body: Any) -> JSON:
        return {"url": self.gateway_url}

    async def _get_gateway_bot(self, request: web.Request, body: Any) -> JSON:
        return {
            "url": self.gateway_url,
            "shards": 1,
            "session_start_limit": {
                "total": 1000,
                "remaining": 999,
                "reset_after": 14400000,
                "max_concurrency": 1,
            },
        }

    async def _put_commands(self, request: web.Request, body: Any) -> list[JSON]:
        if request.match_info["app_id"] != str(APP_ID):
            raise APIError(403, "Missing Access", 50001)
        guild = request.match_info.get("guild_id")
        registered: list[JSON] = []
        for command in body:
            _check_command(command)
            registered.append(
                {
                    "type": 1,
                    **command,
                    "id": str(self.snowflake()),
                    "application_id": str(APP_ID),
                    "version": str(self.snowflake()),
                    **({"guild_id": guild} if guild else {}),
                }
            )
        self.commands[int(guild) if guild else None] = registered
        return registered

    def _channel(self, request: web.Request) -> JSON:
        channel_id = int(request.match_info["channel_id"])
        channel = self.channels.get(channel_id)
        if channel is None:
            raise APIError(404, "Unknown Channel", 10003)
        return channel

    async def _create_message(self, request: web.Request, body: Any) -> JSON:
        channel = self._channel(request)
        message = _public(self._post(channel, body))
        # Discord sends the bot its own messages too; it has to ignore them.
        await self.dispatch("MESSAGE_CREATE", message)
        return message

    def _post(self, channel: JSON, body: JSON, **extra: Any) -> JSON:
        """Create the bot's message as Discord would, refusing what Discord refuses; returns
        the record kept in :attr:`sent` (the message plus how it was sent)."""
        content = _checked_content(body)
        message: JSON = {
            "id": str(self.snowflake()),
            "channel_id": channel["id"],
            "author": self.bot,
            "content": content,
            "timestamp": _now(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "components": [],
            "pinned": False,
            "type": 0,
            "flags": int(body.get("flags", 0)),
        }
        if channel.get("guild_id"):
            message["guild_id"] = channel["guild_id"]
        reference = body.get("message_reference")
        if reference is not None:
            original = self.messages.get(int(reference["message_id"]))
            if original is None and reference.get("fail_if_not_exists", True):
                raise APIError(400, "Invalid Form Body: Unknown message", 50035)
            if original is not None:
                message["type"] = 19
                message["message_reference"] = {
                    **reference,
                    "message_id": str(reference["message_id"]),
                    "channel_id": channel["id"],
                }
                message["referenced_message"] = original
        pings = _pings(
            content,
            body.get("allowed_mentions"),
            original_author=_author_of(
                self.messages.get(int(reference["message_id"])) if reference else None
            ),
        )
        message["mentions"] = [self.users[u] for u in pings["users"] if u in self.users]
        message["mention_roles"] = [str(r) for r in pings["roles"]]
        message["mention_everyone"] = pings["everyone"]
        self.messages[int(message["id"])] = message
        record = {
            **message,
            "allowed_mentions": body.get("allowed_mentions"),
            "pings": pings,
            **extra,
        }
        self.sent.append(record)
        return record

    async def _get_message(self, request: web.Request, body: Any) -> JSON:
        channel = self._channel(request)
        message = self.messages.get(int(request.match_info["message_id"]))
        if message is None or message["channel_id"] != channel["id"]:
            raise APIError(404, "Unknown Message", 10008)
        return message

    async def _edit_message(self, request: web.Request, body: Any) -> JSON:
        self._channel(request)
        message = self.messages.get(int(request.match_info["message_id"]))
        if message is None:
            raise APIError(404, "Unknown Message", 10008)
        return self._edit(message, body)

    def _edit(self, message: JSON, body: JSON) -> JSON:
        """Edit one of the bot's messages (channel message or interaction answer)."""
        stored = self.messages.get(int(message["id"]), message)
        if stored["author"]["id"] != str(BOT_ID):
            raise APIError(403, "Cannot edit a message authored by another user", 50005)
        if "content" in body:
            stored["content"] = _checked_content(body)
        stored["edited_timestamp"] = _now()
        self.edits.append(
            {
                "id": stored["id"],
                "content": stored["content"],
                "allowed_mentions": body.get("allowed_mentions"),
            }
        )
        for record in self.sent:
            if record["id"] == stored["id"]:
                record["content"] = stored["content"]
        return _public(stored)

    async def _delete_message(self, request: web.Request, body: Any) -> None:
        self._channel(request)
        if self.messages.pop(int(request.match_info["message_id"]), None) is None:
            raise APIError(404, "Unknown Message", 10008)

    async def _trigger_typing(self, request: web.Request, body: Any) -> None:
        self.typing.append(int(self._channel(request)["id"]))

    # -- interactions -------------------------------------------------------------------------

    def _interaction(self, interaction_id: str, token: str) -> Interaction:
        interaction = self.interactions.get(int(interaction_id))
        if interaction is None or interaction.token != token:
            raise APIError(404, "Unknown interaction", 10062)
        return interaction

    async def _callback(self, request: web.Request, body: Any) -> JSON:
        info = request.match_info
        interaction = self._interaction(info["interaction_id"], info["token"])
        kind = int(body["type"])
        if interaction.responses:
            raise APIError(400, "Interaction has already been acknowledged.", 40060)
        data = body.get("data") or {}
        created: JSON | None = None
        if kind == 4:
            channel = self.channels[int(interaction.payload["channel_id"])]
            created = self._post(channel, data, via="interaction", interaction=interaction.id)
            interaction.messages.append(created)
        elif kind == 8:
            if len(data.get("choices", [])) > 25:
                raise APIError(400, "Invalid Form Body: too many choices", 50035)
        elif kind == 9:
            if not data.get("custom_id") or not data.get("components"):
                raise APIError(400, "Invalid Form Body: a modal needs components", 50035)
        elif kind not in (5, 6, 7):
            raise APIError(400, f"Invalid interaction response type {kind}", 50035)
        interaction.responses.append(body)
        flags = int(data.get("flags", 0))
        answer: JSON = {
            "interaction": {
                "id": str(interaction.id),
                "type": interaction.payload["type"],
                "response_message_loading": kind == 5,
                "response_message_ephemeral": bool(flags & _EPHEMERAL),
            }
        }
        if created is not None:
            answer["interaction"]["response_message_id"] = created["id"]
            answer["resource"] = {"type": kind, "message": _public(created)}
        return answer

    async def _followup(self, request: web.Request, body: Any) -> JSON:
        interaction = self._interaction_by_token(request)
        if not interaction.responses:
            raise APIError(404, "Unknown Webhook", 10015)  # not acknowledged yet
        channel = self.channels[int(interaction.payload["channel_id"])]
        created = self._post(channel, body, via="followup", interaction=interaction.id)
        interaction.messages.append(created)
        return _public(created)

    def _interaction_by_token(self, request: web.Request) -> Interaction:
        if request.match_info["app_id"] != str(APP_ID):
            raise APIError(404, "Unknown Webhook", 10015)
        token = request.match_info["token"]
        for interaction in self.interactions.values():
            if interaction.token == token:
                return interaction
        raise APIError(404, "Unknown Webhook", 10015)

    def _hook_message(self, request: web.Request) -> JSON:
        interaction = self._interaction_by_token(request)
        wanted = request.match_info["message_id"]
        for message in interaction.messages:
            if wanted in (message["id"], "@original"):
                return message
        raise APIError(404, "Unknown Message", 10008)

    async def _edit_hook(self, request: web.Request, body: Any) -> JSON:
        return self._edit(self._hook_message(request), body)

    async def _get_hook(self, request: web.Request, body: Any) -> JSON:
        return _public(self._hook_message(request))


def _json_response(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """JSON with Discord's exact ``Content-Type``: discord.py compares the header verbatim
    and would take ``application/json; charset=utf-8`` (aiohttp's default) for text."""
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={**(headers or {}), "Content-Type": "application/json"},
    )


#: What :attr:`FakeDiscord.sent` records about a message beyond what Discord returns.
_RECORD_ONLY = ("allowed_mentions", "pings", "via", "interaction")


def _public(record: JSON) -> JSON:
    """A sent record as Discord's API returns the message."""
    return {k: v for k, v in record.items() if k not in _RECORD_ONLY}


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _rate_limited(failure: Failure) -> web.Response:
    retry_after = 1.0 if failure.retry_after is None else failure.retry_after
    return _json_response(
        {"message": failure.message, "retry_after": retry_after, "global": False},
        status=429,
        headers={
            "Retry-After": str(max(1, round(retry_after))),
            "X-RateLimit-Scope": "user",
            "Via": "1.1 google",  # Discord's own 429s come through Google's front end
        },
    )


def _checked_content(body: JSON) -> str:
    content = body.get("content")
    content = "" if content is None else str(content)
    if len(content) > 2000:
        raise APIError(
            400,
            "Invalid Form Body",
            50035,
            {
                "content": {
                    "_errors": [
                        {
                            "code": "BASE_TYPE_MAX_LENGTH",
                            "message": "Must be 2000 or fewer in length.",
                        }
                    ]
                }
            },
        )
    if not content.strip() and not body.get("embeds") and not body.get("components"):
        raise APIError(400, "Cannot send an empty message", 50006)
    return content


def _check_command(command: JSON) -> None:
    """Discord's validation of a command as far as personabot could get it wrong."""
    name_ok = re.fullmatch(r"[-_a-z0-9]{1,32}", command.get("name", ""))
    if not name_ok or not 1 <= len(command.get("description", "")) <= 100:
        raise APIError(400, "Invalid Form Body: command name or description", 50035)
    for option in command.get("options", []):
        _check_command(option)


def _author_of(message: JSON | None) -> int | None:
    return None if message is None else int(message["author"]["id"])


def _pings(content: str, allowed: JSON | None, *, original_author: int | None) -> JSON:
    """Who a message notifies, by Discord's rules: without ``allowed_mentions`` every user,
    role and @everyone/@here written in it; with it, only what it allows."""
    users = [int(u) for u in _MENTION.findall(content)]
    roles = [int(r) for r in _ROLE_MENTION.findall(content)]
    everyone = "@everyone" in content or "@here" in content
    if allowed is None:
        parse = {"users", "roles", "everyone"}
        allowed_users: list[int] = []
        allowed_roles: list[int] = []
        replied = True
    else:
        parse = set(allowed.get("parse", []))
        allowed_users = [int(u) for u in allowed.get("users", [])]
        allowed_roles = [int(r) for r in allowed.get("roles", [])]
        replied = bool(allowed.get("replied_user", False))
    pinged_users = [u for u in users if "users" in parse or u in allowed_users]
    if original_author is not None and replied and original_author not in pinged_users:
        pinged_users.append(original_author)
    return {
        "users": pinged_users,
        "roles": [r for r in roles if "roles" in parse or r in allowed_roles],
        "everyone": everyone and "everyone" in parse,
    }
