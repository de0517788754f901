"""The Telegram frontend end to end: the real python-telegram-bot client, the real engine
with the offline model, and a fake Bot API server on 127.0.0.1 (tests/fake_telegram.py).

Generation is kept short (``/length short``) so the file runs in well under two minutes on
a small CPU.
"""

from __future__ import annotations

import asyncio
import html
import os
import re
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bots.conversation import texts
from bots.conversation.commands import commands_on
from bots.runner import plan_frontends
from bots.telegram import run_telegram
from bots.telegram.commands import COMMANDS
from bots.telegram.keyboards import PAGE_SIZE
from bots.telegram.sending import send_text
from core.bootstrap import build_engine
from core.engine import Engine
from core.errors import ConfigError
from core.generation.local.transformers_generator import TransformersGenerator
from core.personas import persona_from_mapping
from core.settings import load_settings
from core.types import ConversationRef
from tests.conftest import REPO, SettingsFactory, SharedGenerator
from tests.fake_telegram import BOT_USERNAME, DROPPED, TOKEN, FakeBotAPI
from tests.log_watch import LogWatch, watching
from tests.polling import until
from tests.postgres import PostgresServer
from tests.support.running_bot import RunningBot, StartBot
from tests.support.telegram_helpers import (
    ALICE,
    BOB,
    GROUP_ID,
    JSON,
    answers,
    conversation,
    private,
)


@pytest.fixture
def frontend_log() -> Iterator[LogWatch]:
    with watching("bots.telegram") as watch:
        yield watch


async def stop_once_handled(bot: RunningBot, api: FakeBotAPI, last: JSON) -> None:
    """Stop the bot once it has fetched ``last`` and handled every update it fetched.

    Updates are handled concurrently, so the answer to a later message says nothing about
    an earlier one. Stopping does: PTB's ``Application.stop()`` handles every fetched
    update and waits for all handler tasks, so once the bot has stopped, whatever it would
    ever have sent about those messages has been sent.
    """
    await api.wait_until_polled_past(last)
    bot.stop.set()
    await asyncio.wait_for(bot.task, 60)


def telegram_spellings() -> list[tuple[str, str]]:
    """(command name, Telegram spelling) for every command of the shared table here."""
    return [(c.name, c.on("telegram") or "") for c in commands_on("telegram")]


def words(text: str) -> list[str]:
    """Text as a reader sees it: Markdown markers and spacing do not matter."""
    return text.replace("**", "").replace("`", "").split()


async def test_startup_registers_commands_and_polls_with_offsets(
    start_telegram: StartBot, api: FakeBotAPI
) -> None:
    await start_telegram()
    await api.wait_for(lambda: api.calls_to("getUpdates"))
    assert [c.method for c in api.calls[:1]] == ["getMe"]
    (registered,) = api.calls_to("setMyCommands")
    assert [c["command"] for c in registered.params["commands"]] == [
        "start",
        "persona",
        "personas",
        "reset",
        "retry",
        "forget",
        "mood",
        "length",
        "chat",
        "help",
    ]
    assert api.calls_to("deleteWebhook")  # polling starts by making sure no webhook is set
    poll = api.calls_to("getUpdates")[0].params
    assert poll["allowed_updates"] == ["message", "callback_query"] and poll["timeout"] == 30

    first = api.push_update({"message": _message(private(ALICE), ALICE, "/help")})
    await api.wait_until_polled_past(first)
    second = api.send(private(ALICE), ALICE, "/start")
    (help_text, start_text) = await answers(api, ALICE["id"], 2)
    for command, _ in COMMANDS:
        assert f"/{command}" in help_text["text"]
    assert start_text["text"].startswith("Hi! I'm Friend")
    offsets = [int(c.params.get("offset", 0)) for c in api.calls_to("getUpdates")]
    assert offsets == sorted(offsets)  # confirmed updates are never fetched again
    await api.wait_until_polled_past(second)


async def test_private_message_gets_a_reply_and_the_cooldown_holds_a_second(
    start_telegram: StartBot, api: FakeBotAPI
) -> None:
    engine = (await start_telegram(user_cooldown_seconds=60)).engine
    chat = private(ALICE)
    api.send(chat, ALICE, "/length short")
    await answers(api, ALICE["id"], 1)
    api.send(chat, ALICE, "Hi! I just adopted a puppy called Biscuit.")
    api.send(chat, ALICE, "Are you there?")
    sent = await answers(api, ALICE["id"], 3)

    notice = [m for m in sent if "so I skipped that message" in m["text"]]
    replies = [m for m in sent[1:] if m not in notice]
    assert len(notice) == 1 and len(replies) == 1
    reply = replies[0]
    assert "reply_to_message" not in reply  # private chats need no quoting
    methods = [(c.method, c.params.get("text")) for c in api.calls]
    typing = methods.index(("sendChatAction", None))
    assert api.calls[typing].params["action"] == "typing"
    assert typing < methods.index(("sendMessage", reply["raw_text"]))

    history = await engine.history(conversation(ALICE["id"]))
    assert [m.role for m in history] == ["user", "assistant"]  # the held message is not stored
    assert history[0].text == "Hi! I just adopted a puppy called Biscuit."
    assert (history[0].author_id, history[0].author_name) == ("501", "Alice Liddell")
    assert words(history[1].text) == words(reply["text"])


async def test_stopping_delivers_the_reply_being_written_first(
    start_telegram: StartBot, api: FakeBotAPI
) -> None:
    bot = await start_telegram()
    chat = private(BOB)
    api.send(chat, BOB, "/length short")
    await answers(api, BOB["id"], 1)
    api.send(chat, BOB, "Tell me something nice about mornings.")
    await api.wait_for(lambda: api.calls_to("sendChatAction"))  # the model is writing
    bot.stop.set()  # what SIGTERM does
    await asyncio.wait_for(bot.task, 60)
    reply = api.sent_to(BOB["id"])[1]
    history = await bot.engine.history(conversation(BOB["id"]))
    assert [m.role for m in history] == ["user", "assistant"]
    assert words(history[1].text) == words(reply["text"])


async def test_persona_keyboard_tap_switches_and_the_next_reply_uses_it(
    start_telegram: StartBot, api: FakeBotAPI
) -> None:
    engine = (await start_telegram()).engine
    chat = private(ALICE)
    api.send(chat, ALICE, "/length short")
    api.send(chat, ALICE, "/persona")
    sent = await answers(api, ALICE["id"], 2)
    keyboard_message = next(m for m in sent if "reply_markup" in m)
    assert keyboard_message["text"].startswith("Current persona: Friend (friend)")
    buttons = [b for row in keyboard_message["reply_markup"]["inline_keyboard"] for b in row]
    assert {b["callback_data"] for b in buttons} == {f"persona:{p.name}" for p in engine.personas()}

    query_id = api.tap(ALICE, keyboard_message, "persona:pirate")
    await api.wait_for(lambda: api.calls_to("answerCallbackQuery"))
    await api.wait_for(lambda: api.calls_to("editMessageText"))
    (answered,) = api.calls_to("answerCallbackQuery")
    assert answered.params["callback_query_id"] == query_id
    assert answered.params["text"] == "Persona set to Pirate."
    (edit,) = api.calls_to("editMessageText")
    assert edit.params["message_id"] == keyboard_message["message_id"]
    assert edit.params["text"] == "Persona set to Pirate (pirate)."
    assert (await engine.persona(conversation(ALICE["id"]))).name == "pirate"

    api.send(chat, ALICE, "Where is the treasure buried?")
    reply = (await answers(api, ALICE["id"], 3))[2]
    history = await engine.history(conversation(ALICE["id"]))
    assert history[-1].role == "assistant" and history[-1].persona == "pirate"
    assert history[-2].persona == "pirate"
    assert words(history[-1].text) == words(reply["text"])


async def test_group_answers_mentions_and_replies_only_and_admins_reset(
    start_telegram: StartBot, api: FakeBotAPI
) -> None:
    bot = await start_telegram()  # telegram_admin_only defaults to true
    engine = bot.engine
    group = FakeBotAPI.group_chat(GROUP_ID)
    api.members[(GROUP_ID, ALICE["id"])] = "administrator"
    here = conversation(GROUP_ID)

    api.send(group, ALICE, f"/length@{BOT_USERNAME} short")  # the /cmd@BotName form
    await answers(api, GROUP_ID, 1)
    ignored = api.send(group, BOB, "Hello everyone, nice weather today.")
    await api.wait_until_polled_past(ignored)
    mention = api.send(group, BOB, f"@{BOT_USERNAME} what do you think about rain?")
    first_reply = (await answers(api, GROUP_ID, 2))[1]
    assert first_reply["reply_to_message"]["message_id"] == mention["message_id"]
    follow_up = api.send(group, ALICE, "Why do you say that?", reply_to=first_reply)
    second_reply = (await answers(api, GROUP_ID, 3))[2]
    assert second_reply["reply_to_message"]["message_id"] == follow_up["message_id"]

    history = await engine.history(here)
    assert [(m.role, m.author_name) for m in history] == [
        ("user", "Bob"),
        ("assistant", "Friend"),
        ("user", "Alice Liddell"),
        ("assistant", "Friend"),
    ]
    assert history[0].text == "what do you think about rain?"  # the mention is not the message
    # The un-addressed message was not stored (the model's own replies may well mention the
    # weather when asked about rain, so only the users' messages are checked).
    assert all("weather" not in m.text for m in history if m.role == "user")

    api.send(group, BOB, "/reset")
    api.send(group, BOB, "/persona bard")
    refusals = (await answers(api, GROUP_ID, 5))[3:]
    assert {m["text"] for m in refusals} == {
        "Only admins can reset this conversation.",
        "Only admins can change the persona.",
    }
    assert len(await engine.history(here)) == 4
    api.send(group, ALICE, f"/reset@{BOT_USERNAME}")
    assert (await answers(api, GROUP_ID, 6))[5][
        "text"
    ] == "Conversation reset (4 messages forgotten)."
    assert await engine.history(here) == []
    api.send(group, ALICE, "/persona bard")
    assert (await answers(api, GROUP_ID, 7))[6]["text"] == "Persona set to Bard (bard)."

    # A forum topic is a conversation of its own, answered in its thread.
    forum = FakeBotAPI.group_chat(GROUP_ID, forum=True)
    api.send(forum, ALICE, f"/persona@{BOT_USERNAME} pirate", thread_id=77)
    topic_answer = (await answers(api, GROUP_ID, 8))[7]
    assert topic_answer["message_thread_id"] == 77
    assert (await engine.persona(conversation(GROUP_ID, 77))).name == "pirate"
    assert (await engine.persona(here)).name == "bard"
    # Commands for another bot, and unknown bare commands in groups, are not ours to answer.
    api.send(group, ALICE, "/persona@SomeOtherBot mentor")
    last = api.send(group, ALICE, "/weather")
    await stop_once_handled(bot, api, last)
    assert len(api.sent_to(GROUP_ID)) == 8
    assert (await engine.persona(here)).name == "bard"


async def test_a_busy_group_is_limited_per_chat_with_one_polite_notice(
    start_telegram: StartBot, api: FakeBotAPI
) -> None:
    bot = await start_telegram(telegram_chat_cooldown_seconds=600)
    engine = bot.engine
    group = FakeBotAPI.group_chat(GROUP_ID)
    api.send(group, ALICE, "/length short")  # commands are never limited
    await answers(api, GROUP_ID, 1)
    api.send(group, ALICE, f"@{BOT_USERNAME} Hello there!")
    api.send(group, BOB, f"@{BOT_USERNAME} Me too!")  # another person, the same chat
    last = api.send(group, BOB, f"@{BOT_USERNAME} Still me.")
    sent = await answers(api, GROUP_ID, 3)
    notices = [m for m in sent if "skipped" in m["text"]]
    assert [m["text"].split(",")[0] for m in notices] == ["Lots of messages here at once"]
    history = await engine.history(conversation(GROUP_ID))
    assert [m.text for m in history if m.role == "user"] == ["Hello there!"]
    # Another chat has its own window.
    api.send(private(BOB), BOB, "/length short")
    await answers(api, BOB["id"], 1)  # set before the message, which is then answered short
    api.send(private(BOB), BOB, "Hi in private.")
    (_, private_reply) = await answers(api, BOB["id"], 2)
    assert "skipped" not in private_reply["text"]
    await stop_once_handled(bot, api, last)
    assert len(api.sent_to(GROUP_ID)) == 3  # one notice for the whole window, not one each


async def test_a_member_cannot_switch_the_persona_with_the_keyboard(
    start_telegram: StartBot, api: FakeBotAPI
) -> None:
    engine = (await start_telegram()).engine  # telegram_admin_only defaults to true
    group = FakeBotAPI.group_chat(GROUP_ID)
    api.send(group, BOB, "/persona")  # anyone may look
    (keyboard_message,) = await answers(api, GROUP_ID, 1)
    api.tap(BOB, keyboard_message, "persona:pirate")
    await api.wait_for(lambda: api.calls_to("answerCallbackQuery"))
    (answered,) = api.calls_to("answerCallbackQuery")
    assert answered.params["text"] == "Only admins can change the persona."
    assert answered.params["show_alert"] is True
    assert not api.calls_to("editMessageText")
    assert (await engine.persona(conversation(GROUP_ID))).name == "friend"


async def test_stream_replies_shows_a_group_reply_while_it_is_written(
    start_telegram: StartBot, api: FakeBotAPI
) -> None:
    engine = (await start_telegram(stream_replies=True)).engine
    group = FakeBotAPI.group_chat(GROUP_ID)
    api.send(group, ALICE, f"@{BOT_USERNAME} Tell me a short story about a lighthouse keeper.")
    (preview,) = await answers(api, GROUP_ID, 1)
    assert preview["text"].endswith(" …")  # first shown while still being written
    here = conversation(GROUP_ID)
    stored = await _finished_reply(engine, here)
    await api.wait_for(
        lambda: (
            api.calls_to("editMessageText", ok=True)
            and not api.calls_to("editMessageText", ok=True)[-1].params["text"].endswith(" …")
        )
    )
    final = api.calls_to("editMessageText", ok=True)[-1].params
    assert int(final["message_id"]) == preview["message_id"]  # edited in place, not re-sent
    assert words(html.unescape(re.sub(r"<[^>]+>", "", final["text"]))) == words(stored)
    assert len(api.sent_to(GROUP_ID)) == 1


async def test_stream_replies_drafts_a_private_reply_then_sends_it(
    start_telegram: StartBot, api: FakeBotAPI
) -> None:
    engine = (await start_telegram(stream_replies=True)).engine
    api.send(private(ALICE), ALICE, "Tell me a short story about a lighthouse keeper.")
    (reply,) = await answers(api, ALICE["id"], 1)
    stored = await _finished_reply(engine, conversation(ALICE["id"]))
    assert api.calls_to("sendMessageDraft", ok=True)  # shown as a draft while written
    assert not api.calls_to("editMessageText")
    assert words(reply["text"]) == words(stored)


async def _finished_reply(engine: Engine, here: ConversationRef) -> str:
    """The stored reply: written by the engine once the model finished."""

    async def stored() -> bool:
        return [m.role for m in await engine.history(here)] == ["user", "assistant"]

    await until(stored, within=120)
    return (await engine.history(here))[1].text


async def test_a_429_with_retry_after_is_honoured(
    start_telegram: StartBot, api: FakeBotAPI
) -> None:
    await start_telegram()
    api.fail_next("sendMessage", 429, retry_after=1)
    api.send(private(BOB), BOB, "/personas")
    (listing,) = await answers(api, BOB["id"], 1)
    assert "pirate (Pirate)" in listing["text"]
    refused, delivered = api.calls_to("sendMessage")
    assert (refused.status, delivered.status) == (429, 200)
    assert delivered.at - refused.at >= 1.0


async def test_dropped_connections_are_retried_and_polling_goes_on(
    start_telegram: StartBot, api: FakeBotAPI, frontend_log: LogWatch
) -> None:
    await start_telegram()
    await api.wait_for(lambda: api.calls_to("getUpdates"))
    api.drop_next("getUpdates")  # the network drops a long poll...
    api.drop_next("sendMessage")  # ...and then an answer on its way out
    api.send(private(BOB), BOB, "/personas")
    (listing,) = await answers(api, BOB["id"], 1)
    assert "pirate (Pirate)" in listing["text"]
    assert [c.status for c in api.calls_to("sendMessage")] == [DROPPED, 200]  # sent once
    assert any(c.status == DROPPED for c in api.calls_to("getUpdates"))
    await frontend_log.until("Fetching Telegram updates failed")
    later = api.send(private(BOB), BOB, "/help")
    await api.wait_until_polled_past(later)  # polling carries on
    assert (await answers(api, BOB["id"], 2))[1]["text"].startswith("Commands:")


async def test_errors_are_logged_and_the_poller_carries_on(
    start_telegram: StartBot,
    api: FakeBotAPI,
    offline_generator: TransformersGenerator,
    frontend_log: LogWatch,
) -> None:
    # A generator of its own (sharing the session's weights) so that it can be broken later.
    generator = TransformersGenerator(
        offline_generator._model,
        offline_generator._tokenizer,
        offline_generator._spec,
        offline_generator._system_role,
    )
    engine = (await start_telegram(generator=generator, max_message_chars=200)).engine
    chat = private(ALICE)
    here = conversation(ALICE["id"])

    api.fail_next("getUpdates", 500)  # the Bot API hiccups between two polls
    api.fail_next("sendMessage", 403, "Forbidden: bot was blocked by the user")
    api.send(chat, ALICE, "/length short")
    await frontend_log.until("not delivered")
    assert api.sent_to(ALICE["id"]) == []

    # Blocked while the model writes: the reply is stored anyway.
    api.fail_next("sendMessage", 403, "Forbidden: bot was blocked by the user")
    api.send(chat, ALICE, "Remember that my cat is called Pixel.")
    await frontend_log.until("not delivered", times=2)
    assert [m.role for m in await engine.history(here)] == ["user", "assistant"]

    api.fail_next("sendMessage", 400, "Bad Request: chat not found")
    api.send(chat, ALICE, "/help")
    await frontend_log.until("chat not found")

    api.fail_next("sendMessage", 500)  # a 5xx is retried
    api.send(chat, ALICE, "/mood")
    (mood,) = await answers(api, ALICE["id"], 1)
    assert mood["text"].startswith("Mood of your last message:")
    assert [c.status for c in api.calls_to("sendMessage")][-2:] == [500, 200]
    assert api.calls_to("getUpdates", ok=False)  # the failed poll happened, and polling went on
    assert frontend_log.count("Fetching Telegram updates failed (Internal Server Error)") == 1

    # Messages the engine refuses, and a failed generation, are answered with the reason.
    api.send(chat, ALICE, "x" * 300)
    (too_long,) = (await answers(api, ALICE["id"], 2))[1:]
    assert "300" in too_long["text"] and "200" in too_long["text"]
    await generator.aclose()
    api.send(chat, ALICE, "Are you still there?")
    (failed,) = (await answers(api, ALICE["id"], 3))[2:]
    assert "shut down" in failed["text"]
    history = await engine.history(here)
    assert history[-1].text == "Are you still there?" and history[-1].role == "user"

    api.send(chat, ALICE, "/personas")
    assert "friend" in (await answers(api, ALICE["id"], 4))[3]["text"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_webhook_mode_checks_the_secret_and_answers(
    start_telegram: StartBot, api: FakeBotAPI
) -> None:
    port = _free_port()
    await start_telegram(
        telegram_webhook_url="https://bot.example.invalid/tg/hook",
        telegram_webhook_listen="127.0.0.1",
        telegram_webhook_port=port,
        telegram_webhook_secret="s3cret-Token_1",
    )
    (registered,) = api.calls_to("setWebhook")
    assert registered.params["url"] == "https://bot.example.invalid/tg/hook"
    assert registered.params["secret_token"] == "s3cret-Token_1"
    update = {"update_id": 1, "message": _message(private(BOB), BOB, "/help")}
    async with httpx.AsyncClient() as client:
        hook = f"http://127.0.0.1:{port}/tg/hook"
        wrong = await client.post(
            hook, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "guess"}
        )
        assert wrong.status_code == 403
        right = await client.post(
            hook, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "s3cret-Token_1"}
        )
        assert right.status_code == 200
    (answer,) = await answers(api, BOB["id"], 1)
    assert answer["text"].startswith("Commands:")
    assert not api.calls_to("getUpdates")


async def test_a_webhook_port_in_use_is_a_clear_configuration_error(
    start_telegram: StartBot,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigError, match="PERSONABOT_TELEGRAM_WEBHOOK_PORT"):
            await start_telegram(
                telegram_webhook_url="https://bot.example.invalid/hook",
                telegram_webhook_listen="127.0.0.1",
                telegram_webhook_port=taken.getsockname()[1],
            )


async def test_a_rejected_token_is_a_clear_configuration_error(
    api: FakeBotAPI, make_settings: SettingsFactory, offline_generator: TransformersGenerator
) -> None:
    settings = make_settings(telegram_token="1:wrong", telegram_api_url=api.api_url)
    engine = await build_engine(settings, generator=SharedGenerator(offline_generator))
    try:
        with pytest.raises(ConfigError, match="Telegram rejected TELEGRAM_TOKEN"):
            await run_telegram(engine, settings, asyncio.Event())
    finally:
        await engine.aclose()


# -- the sending path the handlers use, with texts the small model will not write on cue -------


async def test_a_5000_character_reply_arrives_as_two_messages(
    telegram_bot: Any, api: FakeBotAPI
) -> None:
    sentences = [f"This is sentence number {i} of a very long reply." for i in range(200)]
    text = " ".join(sentences)[:5000].rsplit(" ", 1)[0] + "."
    assert 4900 < len(text) <= 5000
    await send_text(telegram_bot, ALICE["id"], text)
    first, second = api.sent_to(ALICE["id"])
    assert len(first["text"]) <= 4096 and first["text"].endswith("reply.")
    assert second["text"].startswith("This is sentence number")
    assert f"{first['text']} {second['text']}" == text


async def test_the_limit_is_counted_in_utf16_like_telegram(
    telegram_bot: Any, api: FakeBotAPI
) -> None:
    text = " ".join(["😀🎉✨"] * 1000)  # 3,999 characters but 5,999 UTF-16 units
    await send_text(telegram_bot, ALICE["id"], text)
    assert len(api.sent_to(ALICE["id"])) == 2  # one message would be refused as too long
    assert all(c.status == 200 for c in api.calls_to("sendMessage"))


MARKUP_HEAVY = (
    "Use *args and **kwargs** in snake_case_names; see [the docs](http://x) [1] or _this_.\n"
    "Math: 2*3 < 7 & 5 > 4, a_b_c, ~~strike~~ | #tag {x} `code_here` and ``odd ` ticks!\n"
    "```python\n"
    "def f(*a, **k):  # <tag> & stuff\n"
    "    return a[0]\n"
    "```\n"
    "Unclosed **bold and a lone ` backtick and [bracket and *star."
)
MARKUP_HEAVY_AS_READ = (
    "Use *args and kwargs in snake_case_names; see [the docs](http://x) [1] or _this_.\n"
    "Math: 2*3 < 7 & 5 > 4, a_b_c, ~~strike~~ | #tag {x} code_here and ``odd ` ticks!\n"
    "def f(*a, **k):  # <tag> & stuff\n"
    "    return a[0]\n"
    "Unclosed **bold and a lone ` backtick and [bracket and *star."
)


async def test_model_output_full_of_markup_characters_is_delivered(
    telegram_bot: Any, api: FakeBotAPI
) -> None:
    await send_text(telegram_bot, ALICE["id"], MARKUP_HEAVY)
    (message,) = api.sent_to(ALICE["id"])
    assert message["parse_mode"] == "HTML"
    assert message["text"] == MARKUP_HEAVY_AS_READ
    kinds = {
        (e["type"], message["text"][e["offset"] : e["offset"] + e["length"]])
        for e in message["entities"]
    }
    assert ("bold", "kwargs") in kinds and ("code", "code_here") in kinds
    assert ("pre", "def f(*a, **k):  # <tag> & stuff\n    return a[0]") in kinds


async def test_plain_text_is_the_fallback_if_telegram_cannot_parse(
    telegram_bot: Any, api: FakeBotAPI
) -> None:
    api.fail_next("sendMessage", 400, "Bad Request: can't parse entities: something new")
    await send_text(telegram_bot, ALICE["id"], MARKUP_HEAVY)
    (message,) = api.sent_to(ALICE["id"])
    assert message["parse_mode"] is None and message["text"] == MARKUP_HEAVY


# -- configuration and the command line ----------------------------------------------------------


def test_telegram_settings_come_from_their_documented_variables() -> None:
    settings = load_settings(
        env={
            "TELEGRAM_TOKEN": "1:abc",
            "PERSONABOT_TELEGRAM_API_URL": "http://127.0.0.1:8081/bot",
            "PERSONABOT_TELEGRAM_WEBHOOK_URL": "https://bot.example.com/telegram",
            "PERSONABOT_TELEGRAM_WEBHOOK_PORT": "8444",
            "PERSONABOT_TELEGRAM_WEBHOOK_SECRET": "abc_DEF-123",
            "PERSONABOT_TELEGRAM_ADMIN_ONLY": "false",
            "PERSONABOT_USER_COOLDOWN_SECONDS": "0.5",
            "PERSONABOT_TELEGRAM_CHAT_COOLDOWN_SECONDS": "3",
        }
    )
    assert settings.conversation_cooldown("telegram") == 3
    assert settings.telegram_api_url == "http://127.0.0.1:8081/bot"
    assert settings.telegram_webhook_port == 8444 and settings.telegram_admin_only is False
    assert settings.user_cooldown_seconds == 0.5
    assert plan_frontends(settings).started == ["Telegram"]


def test_a_bad_webhook_secret_is_reported_without_echoing_it() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env={"PERSONABOT_TELEGRAM_WEBHOOK_SECRET": "has spaces!"})
    assert "PERSONABOT_TELEGRAM_WEBHOOK_SECRET" in str(caught.value)
    assert "has spaces" not in str(caught.value)


async def test_personabot_run_serves_telegram_until_sigterm(
    api: FakeBotAPI, tmp_path: Path, model_cache_dir: Path
) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PERSONABOT_") and k not in ("DISCORD_TOKEN", "TELEGRAM_TOKEN")
    }
    env.update(
        TELEGRAM_TOKEN=TOKEN,
        PERSONABOT_TELEGRAM_API_URL=api.api_url,
        PERSONABOT_DATA_DIR=str(tmp_path / "data"),
        PERSONABOT_CACHE_DIR=str(model_cache_dir),
        PERSONABOT_MODEL_PROFILE="smollm2-135m",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bots",
        "run",
        cwd=REPO,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await api.wait_for(lambda: api.calls_to("getUpdates"), within=120)
        api.send(private(BOB), BOB, "/start")
        (hello,) = await answers(api, BOB["id"], 1)
        assert hello["text"].startswith("Hi! I'm Friend")
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    log = stderr.decode()
    assert process.returncode == 0, log
    assert "Starting Telegram." in log and "Starting terminal." not in log
    assert f"Telegram: online as @{BOT_USERNAME} (long polling)." in log
    assert "Traceback" not in log


def _message(chat: JSON, user: JSON, text: str) -> JSON:
    """A message built by hand, for updates delivered outside the fake's own ``send``."""
    message: JSON = {"message_id": 1, "date": 0, "chat": chat, "from": user, "text": text}
    if text.startswith("/"):
        command = text.split()[0]
        message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(command)}]
    return message


async def test_forget_deletes_only_the_callers_messages_and_needs_no_admin(
    start_telegram: StartBot, api: FakeBotAPI
) -> None:
    engine = (await start_telegram(telegram_admin_only=False)).engine
    group = FakeBotAPI.group_chat(GROUP_ID)
    here = conversation(GROUP_ID)
    api.send(group, ALICE, "/length short")
    await answers(api, GROUP_ID, 1)
    api.send(group, BOB, f"@{BOT_USERNAME} I like trains.")
    await answers(api, GROUP_ID, 2)
    api.send(group, ALICE, f"@{BOT_USERNAME} my phone number is 555-0100.")
    await answers(api, GROUP_ID, 3)
    api.send(private(ALICE), ALICE, "/length short")
    api.send(private(ALICE), ALICE, "A secret between us.")
    await answers(api, ALICE["id"], 2)

    api.send(group, ALICE, "/forget")  # no admin needed: it is her own data
    done = (await answers(api, GROUP_ID, 4))[3]["text"]

    assert done == "Done: I deleted 2 stored messages here (yours and my replies to them)."
    history = await engine.history(here)
    assert [(m.role, m.author_name) for m in history] == [("user", "Bob"), ("assistant", "Friend")]
    assert len(await engine.history(conversation(ALICE["id"]))) == 2  # other chats untouched

    api.send(private(ALICE), ALICE, "/forget all")
    everywhere = (await answers(api, ALICE["id"], 3))[2]["text"]
    assert everywhere.startswith("Done: I deleted 2 stored messages in all our conversations")
    assert await engine.history(conversation(ALICE["id"])) == []
    assert len(await engine.history(here)) == 2  # Bob's exchange stays


# -- /retry, /persona create|delete and /chat, as on Discord and the terminal -------------------


async def test_retry_edits_the_last_reply_in_place_or_sends_a_new_one(
    start_telegram: StartBot, api: FakeBotAPI
) -> None:
    engine = (await start_telegram()).engine
    chat = private(ALICE)
    api.send(chat, ALICE, "/length short")
    api.send(chat, ALICE, "What is your favourite colour?")
    (_, reply) = await answers(api, ALICE["id"], 2)
    api.send(chat, ALICE, "/retry")
    edit = await api.wait_for(lambda: api.calls_to("editMessageText", ok=True))
    assert int(edit[0].params["message_id"]) == reply["message_id"]
    new_text = api.message(ALICE["id"], reply["message_id"])["text"]
    assert new_text != reply["text"]
    history = await engine.history(conversation(ALICE["id"]))
    assert len(history) == 2 and words(history[1].text) == words(new_text)

    # After another answer from the bot, the new reply comes as a new message.
    api.send(chat, ALICE, "/mood")
    await answers(api, ALICE["id"], 3)
    api.send(chat, ALICE, "/retry")
    (*_, newest) = await answers(api, ALICE["id"], 4)
    assert len(api.calls_to("editMessageText", ok=True)) == 1
    history = await engine.history(conversation(ALICE["id"]))
    assert len(history) == 2 and words(history[1].text) == words(newest["text"])


async def test_retry_in_a_group_is_for_the_person_answered_or_admins(
    start_telegram: StartBot, api: FakeBotAPI
) -> None:
    engine = (await start_telegram()).engine
    group = FakeBotAPI.group_chat(GROUP_ID)
    api.send(group, ALICE, f"@{BOT_USERNAME} tell me about the sea")
    (reply,) = await answers(api, GROUP_ID, 1)
    asked = api.send(group, BOB, "/retry")
    (_, refusal) = await answers(api, GROUP_ID, 2)
    assert (
        refusal["text"] == "Only Alice Liddell or an admin can ask me to write my last reply again."
    )
    assert refusal["reply_to_message"]["message_id"] == asked["message_id"]
    assert (await engine.history(conversation(GROUP_ID)))[1].text == reply["text"]
    assert not api.calls_to("editMessageText")


async def test_personas_are_created_and_deleted_with_commands(
    start_telegram: StartBot, api: FakeBotAPI
) -> None:
    engine = (await start_telegram()).engine
    chat = private(ALICE)
    api.send(chat, ALICE, "/persona create chef\nYou are a passionate chef.\nYou love basil.")
    (created,) = await answers(api, ALICE["id"], 1)
    assert created["text"] == ("Created the persona Chef (chef). Switch to it with /persona chef.")
    chef = engine.persona_named("chef", conversation(ALICE["id"]))
    assert chef.system_prompt == "You are a passionate chef.\nYou love basil."
    assert chef.description == "You are a passionate chef."
    api.send(chat, ALICE, "/persona create")
    (_, usage) = await answers(api, ALICE["id"], 2)
    assert usage["text"].startswith("Write it as /persona create NAME INSTRUCTIONS")

    group = FakeBotAPI.group_chat(GROUP_ID)
    here = conversation(GROUP_ID)
    api.members[(GROUP_ID, ALICE["id"])] = "administrator"
    api.send(group, ALICE, "/persona create chef You cook for the whole group.")
    (made,) = await answers(api, GROUP_ID, 1)  # the group's own chef, beside Alice's
    assert made["text"].startswith("Created the persona Chef (chef).")
    api.send(group, BOB, "/persona delete chef")
    api.send(group, BOB, "/persona create spy You are a spy.")
    refusals = (await answers(api, GROUP_ID, 3))[1:]
    assert {m["text"] for m in refusals} == {
        "Only admins can delete personas.",
        "Only admins can create personas.",
    }
    assert "spy" not in {p.name for p in engine.personas(here)}
    api.send(group, ALICE, "/persona delete chef")
    (*_, deleted) = await answers(api, GROUP_ID, 4)
    assert deleted["text"] == "Deleted the persona chef."
    assert "chef" not in {p.name for p in engine.personas(here)}
    assert "chef" in {p.name for p in engine.personas(conversation(ALICE["id"]))}


async def test_chat_always_answers_every_message_in_a_group(
    start_telegram: StartBot, api: FakeBotAPI
) -> None:
    engine = (await start_telegram()).engine
    group = FakeBotAPI.group_chat(GROUP_ID)
    api.members[(GROUP_ID, ALICE["id"])] = "administrator"
    api.send(group, BOB, "/chat always")
    (refusal,) = await answers(api, GROUP_ID, 1)
    assert refusal["text"] == "Only admins can change when I answer."
    api.send(group, ALICE, "/chat always")
    (_, switched) = await answers(api, GROUP_ID, 2)
    # The fake bot, like a new real one, has privacy mode on: the admins are told.
    assert switched["text"].startswith("I'll answer every message in this conversation now.")
    assert "/setprivacy" in switched["text"]
    assert await engine.always_answer(conversation(GROUP_ID))

    unaddressed = api.send(group, BOB, "Nice weather today, isn't it?")
    (*_, reply) = await answers(api, GROUP_ID, 3)
    assert reply["reply_to_message"]["message_id"] == unaddressed["message_id"]
    assert (await engine.history(conversation(GROUP_ID)))[0].text == unaddressed["text"]

    api.send(group, ALICE, "/chat mention")
    (*_, back) = await answers(api, GROUP_ID, 4)
    assert back["text"] == "I'll answer here only when mentioned or replied to."
    ignored = api.send(group, BOB, "Still sunny.")
    await api.wait_until_polled_past(ignored)
    api.send(group, BOB, "/chat")
    (*_, shown) = await answers(api, GROUP_ID, 5)
    assert shown["text"].startswith("I answer here when mentioned or replied to.")
    assert len(await engine.history(conversation(GROUP_ID))) == 2


async def test_every_command_in_the_table_is_answered(
    start_telegram: StartBot, api: FakeBotAPI
) -> None:
    """Each Telegram command of the shared table (bots/conversation/commands.py) has a
    handler: it answers, and never with "Unknown command"."""
    await start_telegram()
    chat = private(ALICE)
    typed = [spelling.split()[0] for _, spelling in telegram_spellings()]
    for command in typed:
        api.send(chat, ALICE, command)
    sent = await answers(api, ALICE["id"], len(typed))
    assert len(sent) == len(typed)
    assert not [m["text"] for m in sent if m["text"].startswith("Unknown command")]


async def test_a_storage_outage_shows_a_fixed_text_and_never_the_database(
    start_telegram: StartBot, api: FakeBotAPI, outage_server: PostgresServer
) -> None:
    url = outage_server.create_database()
    await start_telegram(
        database_url=url, database_outage_seconds=0.2, database_retry_backoff_seconds=0.05
    )
    await asyncio.to_thread(outage_server.stop)
    try:
        chat = private(ALICE)
        api.send(chat, ALICE, "Are you there?")
        api.send(chat, ALICE, "/reset")
        sent = await answers(api, ALICE["id"], 2)
        assert [m["text"] for m in sent] == [texts.STORAGE_UNAVAILABLE] * 2
        for message in sent:
            for secret in (outage_server.password, str(outage_server.port), "postgresql"):
                assert secret not in message["text"]
    finally:
        await asyncio.to_thread(outage_server.start)


OTHER_GROUP_ID = -1009999


async def test_a_persona_made_in_a_group_is_that_groups_alone(
    start_telegram: StartBot, api: FakeBotAPI
) -> None:
    engine = (await start_telegram()).engine
    group, other = FakeBotAPI.group_chat(GROUP_ID), FakeBotAPI.group_chat(OTHER_GROUP_ID)
    api.members[(GROUP_ID, ALICE["id"])] = "administrator"
    api.members[(OTHER_GROUP_ID, BOB["id"])] = "administrator"
    api.send(group, ALICE, "/persona create chef You are a passionate chef.")
    (created,) = await answers(api, GROUP_ID, 1)
    assert created["text"].startswith("Created the persona Chef (chef).")

    async def ask(text: str, count: int) -> str:
        api.send(other, BOB, text)
        return str((await answers(api, OTHER_GROUP_ID, count))[-1]["text"])

    assert "chef" not in await ask("/personas", 1)
    assert (await ask("/persona chef", 2)).startswith("Unknown persona 'chef'")
    assert (await ask("/persona delete chef", 3)).startswith("Unknown persona 'chef'")
    assert "chef" in {p.name for p in engine.personas(conversation(GROUP_ID))}
    # Another group's admin could not delete it; its own admin can.
    api.send(group, ALICE, "/persona delete chef")
    assert (await answers(api, GROUP_ID, 2))[-1]["text"] == "Deleted the persona chef."


async def test_a_long_persona_keyboard_is_paged(start_telegram: StartBot, api: FakeBotAPI) -> None:
    engine = (await start_telegram()).engine
    here = conversation(ALICE["id"])
    for i in range(12):
        made = persona_from_mapping({"name": f"p{i:02}", "system_prompt": "Hi."}, source="t")
        await engine.create_persona(made, conversation=here)
    usable = [p.display_name for p in engine.personas(here)]
    api.send(private(ALICE), ALICE, "/persona")
    (shown,) = await answers(api, ALICE["id"], 1)
    rows = shown["reply_markup"]["inline_keyboard"]
    pages = -(-len(usable) // PAGE_SIZE)
    first = [b["text"].removeprefix("✓ ") for row in rows[:-1] for b in row]
    assert first == usable[:PAGE_SIZE]
    assert [b["text"] for b in rows[-1]] == ["◀", f"1/{pages}", "▶"]
    api.tap(ALICE, shown, rows[-1][2]["callback_data"])
    await api.wait_for(lambda: api.calls_to("editMessageReplyMarkup", ok=True))
    turned = api.message(ALICE["id"], shown["message_id"])["reply_markup"]["inline_keyboard"]
    second = [b["text"].removeprefix("✓ ") for row in turned[:-1] for b in row]
    assert second == usable[PAGE_SIZE : 2 * PAGE_SIZE]
    assert turned[-1][1]["text"] == f"2/{pages}"
