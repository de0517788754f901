"""A fake Telegram Bot API server on 127.0.0.1 for the real python-telegram-bot client.

It speaks the Bot API's HTTP protocol (``POST /bot<token>/<method>``, form-encoded
parameters with JSON-encoded objects, ``{"ok": ..., "result": ...}`` answers), holds
``getUpdates`` open like Telegram's long polling and honours its ``offset`` confirmations.
Tests inject updates (messages, button taps) and failures (429 with ``retry_after``, 5xx,
403, 400, dropped connections), then look at what the bot called and sent.

Like Telegram, it refuses what Telegram refuses: HTML with unescaped ``<``/``&`` or badly
nested tags, MarkdownV2 with unescaped reserved characters, messages over 4,096 UTF-16
units after entity parsing, empty texts, and callback data over 64 bytes. A sent message is
stored with its visible text (markup removed), which is what a user would read, and with
the entities Telegram would give it: those of its markup (``<a href="tg://user?id=...">`` is
a ``text_mention``) plus the ``@username`` mentions Telegram's server finds in the text by
itself, outside code and links, exactly as it would notify those users.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import itertools
import json
import re
import socket
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web

TOKEN = "7000001:TEST-fake_token_for_personabot"
BOT_ID = 7000001
BOT_USERNAME = "PersonaTestBot"

JSON = dict[str, Any]
T = TypeVar("T")

#: The status recorded for a call whose connection was dropped (see FakeBotAPI.drop_next).
DROPPED = 0

# Parameters that are plain strings on the wire; everything else is JSON-decoded.
_STRING_PARAMS = {
    "text",
    "parse_mode",
    "action",
    "callback_query_id",
    "url",
    "secret_token",
    "data",
    "language_code",
}
_HTML_TAGS = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "tg-spoiler": "spoiler",
    "span": "spoiler",
    "a": "text_link",
    "code": "code",
    "pre": "pre",
    "blockquote": "blockquote",
    "tg-emoji": "custom_emoji",
}
_TAG = re.compile(r"<(/?)([a-zA-Z-]+)((?:\s+[a-z-]+=\"[^\"<>]*\")*)\s*>")
_ENTITY = re.compile(r"&(lt|gt|amp|quot|#\d+|#x[0-9a-fA-F]+);")
_MARKDOWN_V2_RESERVED = set("_*[]()~`>#+-=|{}.!")


class BotAPIError(Exception):
    """An error answer, as Telegram gives it."""

    def __init__(self, status: int, description: str, retry_after: int | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.retry_after = retry_after

    def body(self) -> JSON:
        body: JSON = {"ok": False, "error_code": self.status, "description": self.description}
        if self.retry_after is not None:
            body["parameters"] = {"retry_after": self.retry_after}
        return body


@dataclass
class Call:
    """One request the bot made, and how it was answered."""

    method: str
    params: JSON
    at: float
    status: int = 200


@dataclass
class Failure:
    status: int
    description: str
    retry_after: int | None = None


@dataclass
class FakeBotAPI:
    """The server; ``api_url`` is what PTB's ``base_url`` should be."""

    token: str = TOKEN
    calls: list[Call] = field(default_factory=list)
    sent: list[JSON] = field(default_factory=list)
    edits: list[JSON] = field(default_factory=list)
    drafts: list[JSON] = field(default_factory=list)
    members: dict[tuple[int, int], str] = field(default_factory=dict)
    port: int = 0
    _updates: list[JSON] = field(default_factory=list)
    _failures: dict[str, list[Failure]] = field(default_factory=lambda: defaultdict(list))
    _messages: dict[tuple[int, int], JSON] = field(default_factory=dict)
    _chats: dict[int, JSON] = field(default_factory=dict)
    _update_ids: dict[tuple[int, int], int] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _runner: web.AppRunner | None = None
    _changed: asyncio.Condition | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._changed = asyncio.Condition()
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, handle_signals=False)
        await self._runner.setup()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        self.port = listener.getsockname()[1]
        await web.SockSite(self._runner, listener).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bot"

    # -- what tests inject --------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        status: int,
        description: str | None = None,
        *,
        retry_after: int | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` calls of ``method`` with this error."""
        if description is None:
            description = {
                429: f"Too Many Requests: retry after {retry_after}",
                500: "Internal Server Error",
                502: "Bad Gateway",
            }.get(status, "Bad Request")
        for _ in range(times):
            self._failures[method].append(Failure(status, description, retry_after))

    def drop_next(self, method: str, *, times: int = 1) -> None:
        """Close the connection of the next ``times`` calls of ``method`` without answering,
        as a network drop or a restarting proxy does (the call is recorded with status 0)."""
        for _ in range(times):
            self._failures[method].append(Failure(DROPPED, "connection dropped"))

    @staticmethod
    def user(user_id: int, first_name: str, last_name: str | None = None) -> JSON:
        user: JSON = {"id": user_id, "is_bot": False, "first_name": first_name}
        if last_name:
            user["last_name"] = last_name
        return user

    @staticmethod
    def private_chat(user: JSON) -> JSON:
        return {"id": user["id"], "type": "private", "first_name": user["first_name"]}

    @staticmethod
    def group_chat(chat_id: int, title: str = "Test group", *, forum: bool = False) -> JSON:
        chat: JSON = {"id": chat_id, "type": "supergroup", "title": title}
        if forum:
            chat["is_forum"] = True
        return chat

    def send(
        self,
        chat: JSON,
        user: JSON,
        text: str,
        *,
        reply_to: JSON | None = None,
        thread_id: int | None = None,
    ) -> JSON:
        """A user writes ``text``; entities for commands and @mentions are added as Telegram
        does. Returns the message."""
        message: JSON = {
            "message_id": next(self._ids),
            "date": int(time.time()),
            "chat": chat,
            "from": user,
            "text": text,
        }
        entities = _entities_of(text)
        if entities:
            message["entities"] = entities
        if reply_to is not None:
            message["reply_to_message"] = reply_to
        if thread_id is not None:
            message["message_thread_id"] = thread_id
            message["is_topic_message"] = True
        self._chats[chat["id"]] = chat
        self._messages[(chat["id"], message["message_id"])] = message
        self._update_ids[(chat["id"], message["message_id"])] = self.push_update(
            {"message": message}
        )
        return message

    def tap(self, user: JSON, message: JSON, data: str) -> str:
        """A user taps the inline button with callback ``data`` under ``message``."""
        query_id = f"q{next(self._ids)}"
        self.push_update(
            {
                "callback_query": {
                    "id": query_id,
                    "from": user,
                    "chat_instance": "ci-1",
                    "message": message,
                    "data": data,
                }
            }
        )
        return query_id

    def push_update(self, payload: JSON) -> int:
        update_id = next(self._ids)
        self._updates.append({"update_id": update_id, **payload})
        self._notify_soon()
        return update_id

    # -- what tests look at -------------------------------------------------------------------

    def calls_to(self, method: str, *, ok: bool | None = None) -> list[Call]:
        return [
            c for c in self.calls if c.method == method and (ok is None or (c.status == 200) == ok)
        ]

    def message(self, chat_id: int, message_id: int) -> JSON:
        """A message as it is now, edits included."""
        return self._messages[(chat_id, message_id)]

    def sent_to(self, chat_id: int) -> list[JSON]:
        return [m for m in self.sent if m["chat"]["id"] == chat_id]

    async def wait_for(self, predicate: Callable[[], T], within: float = 60.0) -> T:
        """Wait until ``predicate()`` is truthy (re-checked on every request); return it."""
        assert self._changed is not None
        async with self._changed:
            return await asyncio.wait_for(self._changed.wait_for(predicate), within)

    async def wait_until_polled_past(self, update: int | JSON, within: float = 30.0) -> None:
        """Until the bot confirmed an update (by id, or the one that brought a message from
        :meth:`send`): it asked for updates after it, so it has dispatched it."""
        if isinstance(update, dict):
            update = self._update_ids[(update["chat"]["id"], update["message_id"])]
        update_id = update
        await self.wait_for(
            lambda: any(
                int(c.params.get("offset", 0)) > update_id for c in self.calls_to("getUpdates")
            ),
            within,
        )

    # -- the HTTP side ------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if request.match_info["token"] != self.token:
            return web.json_response(BotAPIError(401, "Unauthorized").body(), status=401)
        params = await _params(request)
        call = Call(method, params, asyncio.get_running_loop().time())
        self.calls.append(call)
        await self._notify()  # a request that is held (long polling) is news already
        try:
            failures = self._failures.get(method)
            if failures:
                failure = failures.pop(0)
                if failure.status == DROPPED:
                    call.status = DROPPED
                    if request.transport is not None:
                        request.transport.close()
                    await self._notify()
                    return web.Response(status=500)  # never reaches the closed connection
                raise BotAPIError(failure.status, failure.description, failure.retry_after)
            handler = getattr(self, f"_api_{method}", None)
            if handler is None:
                raise BotAPIError(404, "Not Found: method not found")
            result = await handler(params)
        except BotAPIError as error:
            call.status = error.status
            await self._notify()
            return web.json_response(error.body(), status=error.status)
        await self._notify()
        return web.json_response({"ok": True, "result": result})

    async def _notify(self) -> None:
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    def _notify_soon(self) -> None:
        asyncio.get_running_loop().create_task(self._notify())

    # -- Bot API methods ----------------------------------------------------------------------

    async def _api_getMe(self, params: JSON) -> JSON:
        return {
            "id": BOT_ID,
            "is_bot": True,
            "first_name": "Persona",
            "username": BOT_USERNAME,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    async def _api_deleteWebhook(self, params: JSON) -> bool:
        return True

    async def _api_setWebhook(self, params: JSON) -> bool:
        return True

    async def _api_setMyCommands(self, params: JSON) -> bool:
        for command in params["commands"]:
            if not re.fullmatch(r"[a-z0-9_]{1,32}", command["command"]):
                raise BotAPIError(400, "Bad Request: BOT_COMMAND_INVALID")
            if not 1 <= len(command["description"]) <= 256:
                raise BotAPIError(400, "Bad Request: BOT_COMMAND_DESCRIPTION_INVALID")
        return True

    async def _api_sendChatAction(self, params: JSON) -> bool:
        return True

    async def _api_answerCallbackQuery(self, params: JSON) -> bool:
        if len(params.get("text", "")) > 200:
            raise BotAPIError(400, "Bad Request: MESSAGE_TOO_LONG")
        return True

    async def _api_getChatMember(self, params: JSON) -> JSON:
        user_id = int(params["user_id"])
        user = {"id": user_id, "is_bot": False, "first_name": "Someone"}
        status = self.members.get((int(params["chat_id"]), user_id), "member")
        member: JSON = {"status": status, "user": user}
        if status == "creator":
            member["is_anonymous"] = False
        elif status == "administrator":
            rights = (
                "can_be_edited is_anonymous can_manage_chat can_delete_messages "
                "can_manage_video_chats can_restrict_members can_promote_members "
                "can_change_info can_invite_users can_post_stories can_edit_stories "
                "can_delete_stories"
            )
            member.update({right: right != "is_anonymous" for right in rights.split()})
        return member

    async def _api_getUpdates(self, params: JSON) -> list[JSON]:
        offset = int(params.get("offset", 0))
        timeout = float(params.get("timeout", 0))
        limit = int(params.get("limit", 100))
        self._updates = [u for u in self._updates if u["update_id"] >= offset]
        if not self._updates and timeout > 0:
            assert self._changed is not None
            async with self._changed:
                # Long polling: hold the request until an update arrives or time runs out.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._changed.wait_for(lambda: bool(self._updates)), timeout
                    )
        return self._updates[:limit]

    async def _api_sendMessage(self, params: JSON) -> JSON:
        chat_id = int(params["chat_id"])
        visible, entities = parse_text(params.get("text", ""), params.get("parse_mode"))
        markup = params.get("reply_markup")
        _check_markup(markup)
        chat = self._chats.get(chat_id, {"id": chat_id, "type": "private", "first_name": "X"})
        message: JSON = {
            "message_id": next(self._ids),
            "date": int(time.time()),
            "chat": chat,
            "from": await self._api_getMe({}),
            "text": visible,
        }
        if entities:
            message["entities"] = entities
        if markup:
            message["reply_markup"] = markup
        if params.get("message_thread_id") is not None:
            message["message_thread_id"] = int(params["message_thread_id"])
            message["is_topic_message"] = True
        reply = params.get("reply_parameters")
        if reply:
            original = self._messages.get((chat_id, int(reply["message_id"])))
            if original is not None:
                message["reply_to_message"] = original
        self._messages[(chat_id, message["message_id"])] = message
        self.sent.append(
            {**message, "raw_text": params.get("text"), "parse_mode": params.get("parse_mode")}
        )
        return message

    async def _api_sendMessageDraft(self, params: JSON) -> bool:
        chat = self._chats.get(int(params["chat_id"]))
        if chat is not None and chat.get("type") != "private":
            raise BotAPIError(400, "Bad Request: drafts can be sent to private chats only")
        if not int(params.get("draft_id", 0)):
            raise BotAPIError(400, "Bad Request: draft_id must be non-zero")
        visible, entities = parse_text(params.get("text", ""), params.get("parse_mode"))
        self.drafts.append(
            {
                "chat_id": int(params["chat_id"]),
                "draft_id": int(params["draft_id"]),
                "text": visible,
                "entities": entities,
                "raw_text": params.get("text"),
                "parse_mode": params.get("parse_mode"),
            }
        )
        return True

    async def _api_editMessageReplyMarkup(self, params: JSON) -> JSON:
        key = (int(params["chat_id"]), int(params["message_id"]))
        original = self._messages.get(key)
        if original is None:
            raise BotAPIError(400, "Bad Request: message to edit not found")
        markup = params.get("reply_markup")
        _check_markup(markup)
        edited = {**original, "edit_date": int(time.time())}
        edited.pop("reply_markup", None)
        if markup:
            edited["reply_markup"] = markup
        self._messages[key] = edited
        return edited

    async def _api_editMessageText(self, params: JSON) -> JSON:
        key = (int(params["chat_id"]), int(params["message_id"]))
        original = self._messages.get(key)
        if original is None:
            raise BotAPIError(400, "Bad Request: message to edit not found")
        visible, entities = parse_text(params.get("text", ""), params.get("parse_mode"))
        markup = params.get("reply_markup")
        _check_markup(markup)
        edited = {**original, "text": visible, "edit_date": int(time.time())}
        edited.pop("reply_markup", None)
        edited.pop("entities", None)
        if entities:
            edited["entities"] = entities
        if markup:
            edited["reply_markup"] = markup
        self._messages[key] = edited
        self.edits.append(
            {**edited, "raw_text": params.get("text"), "parse_mode": params.get("parse_mode")}
        )
        return edited


async def _params(request: web.Request) -> JSON:
    if request.content_type == "application/json":
        data: JSON = await request.json()
        return data
    form = await request.post()
    params: JSON = {}
    for key, value in form.items():
        if not isinstance(value, str):
            continue  # file uploads: not used by personabot
        if key in _STRING_PARAMS:
            params[key] = value
        else:
            try:
                params[key] = json.loads(value)
            except json.JSONDecodeError:
                params[key] = value
    return params


def _utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _entities_of(text: str) -> list[JSON]:
    """The entities a user's message arrives with: a leading /command and @mentions."""
    entities: list[JSON] = []
    command = re.match(r"/[A-Za-z0-9_]+(@[A-Za-z0-9_]+)?", text)
    if command:
        entities.append({"type": "bot_command", "offset": 0, "length": _utf16(command.group())})
    return entities + mentions_in(text)


#: Names under four characters that Telegram still links (tdlib's get_valid_short_usernames).
_SHORT_USERNAMES = {"gif", "vid", "pic"}
#: Entities that nothing found in the text may overlap (tdlib's "continuous" entities): a
#: mention in code or in a link is not made.
_UNBROKEN = {"code", "pre", "text_link", "text_mention", "custom_emoji"}


def mentions_in(text: str) -> list[JSON]:
    """The ``mention`` entities Telegram's server finds in ``text`` (tdlib's find_mentions):
    an ``@`` that no letter, digit or ``_`` precedes, then 2-32 of ``[A-Za-z0-9_]`` that none
    of those follows; 4 or more of them, or a short name Telegram knows (``@gif``)."""
    entities: list[JSON] = []
    for match in re.finditer(r"(?<!\w)@([A-Za-z0-9_]+)", text):
        name, end = match.group(1), match.end()
        if not 2 <= len(name) <= 32 or (end < len(text) and re.match(r"\w", text[end])):
            continue
        if len(name) < 4 and name.lower() not in _SHORT_USERNAMES:
            continue
        offset = _utf16(text[: match.start()])
        entities.append({"type": "mention", "offset": offset, "length": _utf16(match.group())})
    return entities


def parse_text(text: str, parse_mode: str | None) -> tuple[str, list[JSON]]:
    """A sent text as Telegram shows it: the visible text and all its entities, the ones
    Telegram finds by itself included; raises Telegram's error for what it refuses."""
    entities: list[JSON] = []
    if parse_mode is None or parse_mode == "":
        visible = text
    elif parse_mode == "HTML":
        visible, entities = parse_html(text)
    elif parse_mode == "MarkdownV2":
        visible, entities = _parse_markdown_v2(text), []
    else:
        raise BotAPIError(400, f"Bad Request: unsupported parse_mode {parse_mode!r}")
    if not visible.strip():
        raise BotAPIError(400, "Bad Request: message text is empty")
    if _utf16(visible) > 4096:
        raise BotAPIError(400, "Bad Request: message is too long")
    # Like Telegram, add what it finds in the text by itself, unless it overlaps code or links.
    unbroken = [e for e in entities if e["type"] in _UNBROKEN]
    for found in mentions_in(visible):
        start, end = found["offset"], found["offset"] + found["length"]
        if not any(e["offset"] < end and start < e["offset"] + e["length"] for e in unbroken):
            entities.append(found)
    return visible, entities


def _cant_parse(why: str) -> BotAPIError:
    return BotAPIError(400, f"Bad Request: can't parse entities: {why}")


def parse_html(text: str) -> tuple[str, list[JSON]]:
    visible: list[str] = []
    length = 0  # in UTF-16 units, as entity offsets are
    stack: list[tuple[str, int, str]] = []
    entities: list[JSON] = []
    position = 0
    while position < len(text):
        char = text[position]
        if char == "<":
            tag = _TAG.match(text, position)
            if tag is None:
                raise _cant_parse(f"unsupported start tag at byte offset {position}")
            closing, name = tag.group(1) == "/", tag.group(2).lower()
            if name not in _HTML_TAGS:
                raise _cant_parse(f'unsupported start tag "{name}" at byte offset {position}')
            if closing:
                if not stack or stack[-1][0] != name:
                    raise _cant_parse(f'unmatched end tag "{name}" at byte offset {position}')
                _, start, attributes = stack.pop()
                if length > start:
                    kind = _HTML_TAGS[name]
                    made: JSON = {"type": kind, "offset": start, "length": length - start}
                    if name == "a":
                        made.update(_link(attributes))
                    entities.append(made)
            else:
                stack.append((name, length, tag.group(3)))
            position = tag.end()
        elif char == "&":
            entity = _ENTITY.match(text, position)
            if entity is None:
                raise _cant_parse(f"unescaped & at byte offset {position}")
            piece = html.unescape(entity.group())
            visible.append(piece)
            length += _utf16(piece)
            position = entity.end()
        elif char == ">":
            raise _cant_parse(f"unescaped > at byte offset {position}")
        else:
            visible.append(char)
            length += _utf16(char)
            position += 1
    if stack:
        raise _cant_parse(f'can\'t find end tag corresponding to start tag "{stack[-1][0]}"')
    return "".join(visible), entities


def _link(attributes: str) -> JSON:
    """What an ``<a>`` tag is: ``tg://user?id=N`` mentions user N by id (a ``text_mention``,
    which notifies them), any other ``href`` is a ``text_link``."""
    href = re.search(r'href="([^"]*)"', attributes)
    url = html.unescape(href.group(1)) if href else ""
    user = re.fullmatch(r"tg://user\?id=(\d+)", url)
    if user:
        return {"type": "text_mention", "user": FakeBotAPI.user(int(user.group(1)), "Someone")}
    return {"url": url}


def _parse_markdown_v2(text: str) -> str:
    """Stricter than Telegram: any unescaped reserved character is an error (formatting
    markup is not modelled, as personabot sends none)."""
    visible: list[str] = []
    escaped = False
    for position, char in enumerate(text):
        if escaped:
            visible.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in _MARKDOWN_V2_RESERVED:
            raise _cant_parse(f"character '{char}' is reserved at byte offset {position}")
        else:
            visible.append(char)
    return "".join(visible)


def _check_markup(markup: object) -> None:
    if not isinstance(markup, dict):
        return
    for row in markup.get("inline_keyboard", []):
        for button in row:
            if not button.get("text"):
                raise BotAPIError(400, "Bad Request: BUTTON_TEXT_INVALID")
            data = button.get("callback_data")
            if data is not None and not 1 <= len(data.encode()) <= 64:
                raise BotAPIError(400, "Bad Request: BUTTON_DATA_INVALID")
