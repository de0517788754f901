"""The Discord frontend end to end: the real discord.py client, the real engine with the
offline model, and a fake Discord (REST API + gateway) on 127.0.0.1 (tests/fake_discord.py).

Generation is kept short (``/length short``) where the reply's content does not matter, so
the file runs in a couple of minutes on a small CPU. Every test also checks, when its fake
server shuts down, that nothing the bot posted or edited could ping anyone.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import discord
import pytest
from discord.gateway import DiscordWebSocket
from discord.http import Route
from sqlalchemy import text

from bots.conversation import texts
from bots.conversation.commands import commands_on, menu
from bots.discord import PersonaBotClient, run_discord
from bots.discord.sending import MESSAGE_LIMIT, StreamingReply, send_text
from bots.runner import plan_frontends
from core.bootstrap import build_engine
from core.errors import ConfigError
from core.generation.local.transformers_generator import TransformersGenerator
from core.settings import load_settings
from core.storage import ConversationStore, Database, sqlite_url
from core.types import StoredMessage
from tests.conftest import REPO, SettingsFactory, SharedGenerator
from tests.fake_discord import (
    BOT_ID,
    BOT_NAME,
    BOT_ROLE_ID,
    GENERAL,
    GUILD_ID,
    MANAGE_GUILD,
    MANAGE_MESSAGES,
    MESSAGE_CONTENT_INTENT,
    RANDOM,
    THREAD,
    TOKEN,
    FakeDiscord,
)
from tests.log_watch import LogWatch, watching
from tests.support.discord_helpers import (
    ALICE_ID,
    BOB_ID,
    EPHEMERAL,
    NO_PINGS,
    OTHER_BOT_ID,
    SENDS,
    alice,
    bob,
    here,
    pings_nobody,
)
from tests.support.running_bot import StartBot


def words(text: str) -> list[str]:
    return text.split()


def roles_and_authors(history: list[StoredMessage]) -> list[tuple[str, str]]:
    return [(m.role, m.author_name) for m in history]


@pytest.fixture
def frontend_log() -> Iterator[LogWatch]:
    with watching("bots.discord") as watch:
        yield watch


async def short_replies(fake: FakeDiscord, channel_id: int) -> None:
    """``/length short`` in a channel, so the model writes one or two sentences there."""
    answer = await fake.answer(await fake.slash(alice(fake), channel_id, "length", preset="short"))
    assert answer["content"] == "Reply length set to short."


# -- start-up ----------------------------------------------------------------------------------


async def test_startup_logs_in_syncs_commands_and_identifies_with_the_right_intents(
    start_discord: StartBot, fake: FakeDiscord
) -> None:
    base, gateway = Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY
    bot = await start_discord()
    # The first gateway connection went to the configured URL, not to discord.gg.
    assert fake.gateway_queries[0]["v"] == "10"
    assert [c.route for c in fake.calls[:2]] == ["GET /users/@me", "GET /oauth2/applications/@me"]
    (identify,) = fake.identifies
    wanted = discord.Intents(guilds=True, guild_messages=True, dm_messages=True)
    assert identify["intents"] == wanted.value | MESSAGE_CONTENT_INTENT
    assert identify["token"] == TOKEN

    commands = {c["name"]: c for c in fake.commands[None]}
    assert set(commands) == {word for word, _ in menu("discord")}
    assert {"persona", "reset", "retry", "forget", "mood", "length", "chat", "help"} <= set(
        commands
    )
    persona = {o["name"]: o for o in commands["persona"]["options"]}
    assert set(persona) == {"set", "list", "show", "create", "delete"}
    # Every Discord spelling in the shared command table is a registered (sub)command.
    for command in commands_on("discord"):
        for spelling in (command.on("discord") or "").split(", "):
            name, *rest = spelling.lstrip("/").split()
            subcommands = {o["name"] for o in commands[name].get("options", []) if o["type"] == 1}
            if rest and subcommands:
                assert rest[0] in subcommands, spelling
    (name_option,) = persona["set"]["options"]
    assert name_option["autocomplete"] is True and name_option["required"] is True
    assert int(commands["reset"]["default_member_permissions"]) == MANAGE_MESSAGES
    assert int(commands["chat"]["default_member_permissions"]) == MANAGE_GUILD
    (mode,) = commands["chat"]["options"]
    assert [c["value"] for c in mode["choices"]] == ["always", "mention"]
    (preset,) = commands["length"]["options"]
    assert [c["value"] for c in preset["choices"]] == ["short", "medium", "long"]

    help_answer = await fake.answer(await fake.slash(bob(fake), GENERAL, "help"))
    assert help_answer["flags"] & EPHEMERAL
    for usage in ("/persona set", "/persona create", "/reset", "/forget", "/mood", "/length"):
        assert usage in help_answer["content"]

    bot.stop.set()
    await asyncio.wait_for(bot.task, 30)
    # The endpoint overrides lasted exactly as long as the client.
    assert (base, gateway) == (Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY)


async def test_commands_go_to_the_configured_servers_only(
    start_discord: StartBot, fake: FakeDiscord
) -> None:
    await start_discord(discord_guild_ids=(GUILD_ID,))
    assert {c["name"] for c in fake.commands[GUILD_ID]} >= {"persona", "reset", "help"}
    assert fake.commands[None] == []  # an earlier global registration would show twice
    answer = await fake.answer(await fake.slash(bob(fake), GENERAL, "persona", "show"))
    assert answer["content"].startswith("Persona: Friend (friend)")


# -- when it answers -----------------------------------------------------------------------------


async def test_mentions_and_replies_are_answered_in_the_channel_and_chatter_is_not(
    start_discord: StartBot, fake: FakeDiscord
) -> None:
    engine = (await start_discord()).engine
    await short_replies(fake, GENERAL)
    await fake.say(GENERAL, bob(fake), "Hello everyone, nice weather today.")
    await fake.say(GENERAL, fake.users[OTHER_BOT_ID], f"<@{BOT_ID}> beep, I am a bot")
    mention = await fake.say(
        GENERAL,
        bob(fake),
        f"<@{BOT_ID}> what do you think about rain? @everyone <@&{BOT_ROLE_ID}> <@{ALICE_ID}>",
        nick="Bobby",
    )
    (reply,) = await fake.messages_in(GENERAL, 1)
    assert reply["message_reference"]["message_id"] == mention["id"]
    assert reply["pings"] == NO_PINGS  # not even Bob, whose message it quotes
    assert GENERAL in fake.typing
    typing_at = next(c.at for c in fake.calls_to("POST /channels/{channel_id}/typing"))
    assert typing_at < next(c.at for c in fake.calls_to(SENDS))

    follow_up = await fake.say(GENERAL, alice(fake), "Why do you say that?", reply_to=reply)
    second = (await fake.messages_in(GENERAL, 2))[1]
    assert second["message_reference"]["message_id"] == follow_up["id"]

    history = await engine.history(here(GENERAL))
    assert roles_and_authors(history) == [
        ("user", "Bobby"),  # the server nickname, as people see it
        ("assistant", "Friend"),
        ("user", "Alice"),
        ("assistant", "Friend"),
    ]
    # Mentions of the bot (or of its role) are not part of the message; others read as names.
    assert history[0].text == "what do you think about rain? @everyone @Alice"
    assert words(history[1].text) == words(reply["content"])
    # Chatter not addressed to the bot is not stored (the model may well talk about weather).
    users = [m.text for m in history if m.role == "user"]
    assert all("weather" not in text and "beep" not in text for text in users)


async def test_a_dm_is_always_answered_without_quoting(
    start_discord: StartBot, fake: FakeDiscord
) -> None:
    engine = (await start_discord()).engine
    dm = fake.dm_channel(bob(fake))
    await short_replies(fake, dm)
    await fake.say(dm, bob(fake), "Hi! I just adopted a puppy called Biscuit.")
    (reply,) = await fake.messages_in(dm, 1)
    assert "message_reference" not in reply  # a DM needs no quoting
    history = await engine.history(here(dm))
    assert roles_and_authors(history) == [("user", "Bob Builder"), ("assistant", "Friend")]
    assert history[0].text == "Hi! I just adopted a puppy called Biscuit."
    assert words(history[1].text) == words(reply["content"])


async def test_chat_always_makes_an_admin_channel_answer_everything(
    start_discord: StartBot, fake: FakeDiscord
) -> None:
    engine = (await start_discord()).engine
    refused = await fake.answer(await fake.slash(bob(fake), RANDOM, "chat", mode="always"))
    assert refused["flags"] & EPHEMERAL and "Manage Server" in refused["content"]
    switched = await fake.answer(await fake.slash(alice(fake), RANDOM, "chat", mode="always"))
    assert switched["content"] == "I'll answer every message in this conversation now."
    assert not switched["flags"] & EPHEMERAL  # everyone here should know
    assert await engine.always_answer(here(RANDOM))
    assert not await engine.always_answer(here(GENERAL))  # one channel at a time

    await short_replies(fake, RANDOM)
    await fake.say(RANDOM, bob(fake), "Nobody mentioned the bot in this one.")
    (reply,) = await fake.messages_in(RANDOM, 1)
    assert reply["content"]
    show = await fake.answer(await fake.slash(bob(fake), RANDOM, "persona", "show"))
    assert "I answer every message in this conversation." in show["content"]

    back = await fake.answer(await fake.slash(alice(fake), RANDOM, "chat", mode="mention"))
    assert back["content"] == "I'll answer here only when mentioned or replied to."
    assert not await engine.always_answer(here(RANDOM))
    # Its own reply came back through the gateway too, and was not taken as a message.
    assert len(await engine.history(here(RANDOM))) == 2
    assert len(fake.sent_to(RANDOM)) == 1


async def test_reading_the_answer_mode_creates_no_conversation(tmp_path: Path) -> None:
    """Every server message the bot sees asks for it, in channels it may never talk in."""
    database = await Database.open(sqlite_url(tmp_path / "db.sqlite"))
    try:
        store = ConversationStore(database)
        assert await store.always_answer(here(GENERAL)) is False
        async with database.engine.connect() as conn:
            count = await conn.scalar(text("SELECT count(*) FROM conversations"))
        assert count == 0
        await store.set_always_answer(here(GENERAL), True, default_persona="friend")
        assert await store.always_answer(here(GENERAL)) is True
        state = await store.get_or_create(here(GENERAL), default_persona="friend")
        assert state.always_answer is True
        fresh = await store.get_or_create(here(RANDOM), default_persona="friend")
        assert fresh.always_answer is False
    finally:
        await database.close()


async def test_a_thread_is_a_conversation_of_its_own(
    start_discord: StartBot, fake: FakeDiscord
) -> None:
    engine = (await start_discord()).engine
    await fake.answer(await fake.slash(alice(fake), THREAD, "persona", "set", name="bard"))
    await short_replies(fake, THREAD)
    await fake.mention(THREAD, alice(fake), "Tell me about the moon.")
    (reply,) = await fake.messages_in(THREAD, 1)
    assert reply["channel_id"] == str(THREAD)
    assert (await engine.persona(here(THREAD))).name == "bard"
    assert (await engine.persona(here(GENERAL))).name == "friend"
    assert [m.persona for m in await engine.history(here(THREAD))] == ["bard", "bard"]
    assert await engine.history(here(GENERAL)) == []


# -- slash commands ------------------------------------------------------------------------------


async def test_persona_set_with_autocomplete_then_the_reply_uses_the_new_persona(
    start_discord: StartBot, fake: FakeDiscord
) -> None:
    engine = (await start_discord()).engine
    typing = await fake.slash(bob(fake), GENERAL, "persona", "set", focused="name", name="PIR")
    await fake.wait_for(lambda: typing.responses)
    (suggestions,) = typing.responses
    assert suggestions["type"] == 8
    assert suggestions["data"]["choices"] == [{"name": "Pirate (pirate)", "value": "pirate"}]

    listing = await fake.answer(await fake.slash(bob(fake), GENERAL, "persona", "list"))
    assert listing["flags"] & EPHEMERAL
    assert "▶ **friend**" in listing["content"] and "• **pirate**" in listing["content"]

    # Switching is for members with Manage Server (PERSONABOT_ADMIN_ONLY); Bob may not.
    refused = await fake.answer(
        await fake.slash(bob(fake), GENERAL, "persona", "set", name="pirate")
    )
    assert refused["flags"] & EPHEMERAL and "Manage Server" in refused["content"]
    assert (await engine.persona(here(GENERAL))).name == "friend"
    unknown = await fake.answer(await fake.slash(alice(fake), GENERAL, "persona", "set", name="x"))
    assert unknown["flags"] & EPHEMERAL and "Unknown persona 'x'" in unknown["content"]

    chosen = await fake.answer(
        await fake.slash(alice(fake), GENERAL, "persona", "set", name="pirate")
    )
    assert chosen["content"].startswith("Persona set to Pirate (pirate)")
    assert not chosen["flags"] & EPHEMERAL
    await short_replies(fake, GENERAL)

    await fake.mention(GENERAL, bob(fake), "Where is the treasure buried?")
    (reply,) = await fake.messages_in(GENERAL, 1)
    history = await engine.history(here(GENERAL))
    assert [(m.role, m.persona) for m in history] == [("user", "pirate"), ("assistant", "pirate")]
    assert history[1].author_name == "Pirate"
    assert words(history[1].text) == words(reply["content"])


async def test_reset_needs_manage_messages_in_servers_but_not_in_dms(
    start_discord: StartBot, fake: FakeDiscord
) -> None:
    engine = (await start_discord()).engine
    await short_replies(fake, GENERAL)
    await fake.mention(GENERAL, bob(fake), "Remember that my cat is called Pixel.")
    await fake.messages_in(GENERAL, 1)
    assert len(await engine.history(here(GENERAL))) == 2

    refused = await fake.answer(await fake.slash(bob(fake), GENERAL, "reset"))
    assert refused["flags"] & EPHEMERAL and "Manage Messages" in refused["content"]
    assert len(await engine.history(here(GENERAL))) == 2
    done = await fake.answer(await fake.slash(alice(fake), GENERAL, "reset"))
    assert done["content"] == "Conversation reset (2 messages forgotten)."
    assert await engine.history(here(GENERAL)) == []
    assert (await engine.length(here(GENERAL))).value == "short"  # settings stay

    dm = fake.dm_channel(bob(fake))
    in_dm = await fake.answer(await fake.slash(bob(fake), dm, "reset"))
    assert in_dm["content"] == "Conversation reset (0 messages forgotten)."


async def test_forget_deletes_only_the_callers_messages_and_needs_no_permission(
    start_discord: StartBot, fake: FakeDiscord
) -> None:
    engine = (await start_discord()).engine
    await short_replies(fake, GENERAL)
    await fake.mention(GENERAL, alice(fake), "I like trains.")
    await fake.messages_in(GENERAL, 1)
    await fake.mention(GENERAL, bob(fake), "My phone number is 555-0100.")
    await fake.messages_in(GENERAL, 2)
    dm = fake.dm_channel(bob(fake))
    await short_replies(fake, dm)
    await fake.say(dm, bob(fake), "A secret between us.")
    await fake.messages_in(dm, 1)

    # Bob has no permission at all in the server: his own messages are still his to delete.
    done = await fake.answer(await fake.slash(bob(fake), GENERAL, "forget"))
    assert done["flags"] & EPHEMERAL  # nobody else needs to see it
    assert done["content"] == (
        "Done: I deleted 2 stored messages here (yours and my replies to them)."
    )
    history = await engine.history(here(GENERAL))
    assert roles_and_authors(history) == [("user", "Alice"), ("assistant", "Friend")]
    assert len(await engine.history(here(dm))) == 2  # other conversations untouched

    everywhere = await fake.answer(await fake.slash(bob(fake), GENERAL, "forget", everywhere=True))
    assert everywhere["content"].startswith("Done: I deleted 2 stored messages in all our")
    assert await engine.history(here(dm)) == []
    assert len(await engine.history(here(GENERAL))) == 2  # Alice's exchange stays
    assert (await engine.length(here(dm))).value == "short"  # settings stay


async def test_a_member_cannot_create_or_delete_personas_and_an_admin_can(
    start_discord: StartBot, fake: FakeDiscord
) -> None:
    engine = (await start_discord()).engine
    refused = await fake.slash(bob(fake), GENERAL, "persona", "create")
    answer = await fake.answer(refused)
    assert answer["flags"] & EPHEMERAL and "Manage Server" in answer["content"]
    assert [r["type"] for r in refused.responses] == [4]  # no form was shown

    opened = await fake.slash(alice(fake), GENERAL, "persona", "create")
    await fake.wait_for(lambda: opened.responses)
    (modal,) = opened.responses
    assert modal["type"] == 9 and modal["data"]["title"] == "Create a persona"
    submitted = await fake.submit_modal(
        alice(fake),
        opened,
        {
            "Name (lowercase, used in /persona set)": "Chef",
            "One-line description": "A passionate chef.",
            "Instructions: who is this persona?": "You are a passionate chef. Relate everything "
            "to food.",
        },
    )
    created = await fake.answer(submitted)
    assert created["content"].startswith("Created the persona Chef (chef).")
    assert engine.persona_named("chef", here(GENERAL)).description == "A passionate chef."
    # It is this server's: a DM with the bot neither lists nor can use it.
    dm = fake.dm_channel(bob(fake))
    listed = await fake.answer(await fake.slash(bob(fake), dm, "persona", "list"))
    assert "chef" not in listed["content"] and "pirate" in listed["content"]
    unusable = await fake.answer(await fake.slash(bob(fake), dm, "persona", "set", name="chef"))
    assert unusable["content"].startswith("Unknown persona 'chef'")
    assert "chef" not in {p.name for p in engine.personas(here(dm, dm_with=BOB_ID))}

    again = await fake.slash(alice(fake), GENERAL, "persona", "create")
    await fake.wait_for(lambda: again.responses)
    duplicate = await fake.submit_modal(
        alice(fake),
        again,
        {
            "Name (lowercase, used in /persona set)": "pirate",
            "Instructions: who is this persona?": "Arr.",
        },
    )
    assert "exists already" in (await fake.answer(duplicate))["content"]

    denied = await fake.answer(
        await fake.slash(bob(fake), GENERAL, "persona", "delete", name="chef")
    )
    assert "Manage Server" in denied["content"]
    builtin = await fake.answer(
        await fake.slash(alice(fake), GENERAL, "persona", "delete", name="pirate")
    )
    assert builtin["flags"] & EPHEMERAL and "cannot be deleted" in builtin["content"]
    deleted = await fake.answer(
        await fake.slash(alice(fake), GENERAL, "persona", "delete", name="chef")
    )
    assert deleted["content"] == "Deleted the persona chef."
    assert "chef" not in {p.name for p in engine.personas(here(GENERAL))}


async def test_retry_edits_the_last_reply_in_place_or_sends_a_new_one(
    start_discord: StartBot, fake: FakeDiscord
) -> None:
    engine = (await start_discord()).engine
    await short_replies(fake, GENERAL)
    await fake.mention(GENERAL, bob(fake), "What is your favourite colour?")
    (first,) = await fake.messages_in(GENERAL, 1)
    old_text = first["content"]

    # Bob asks again for the answer to his own message: no permission needed.
    done = await fake.answer(await fake.slash(bob(fake), GENERAL, "retry"))
    assert done["flags"] & EPHEMERAL and done["content"] == texts.RETRIED
    assert len(fake.sent_to(GENERAL)) == 1  # edited, not sent again
    assert fake.edits[-1]["id"] == first["id"]
    new_text = fake.sent_to(GENERAL)[0]["content"]
    assert new_text != old_text
    stored = await engine.history(here(GENERAL))
    assert [(m.role, words(m.text)) for m in stored][-1] == ("assistant", words(new_text))
    assert len(stored) == 2  # replaced in the history, not added

    # After the bot said something else here, the new reply is a new message.
    await fake.answer(await fake.slash(alice(fake), GENERAL, "length", preset="short"))
    edits = len(fake.edits)
    await fake.answer(await fake.slash(alice(fake), GENERAL, "retry"))
    (_, second) = await fake.messages_in(GENERAL, 2)
    assert len(fake.edits) == edits
    stored = await engine.history(here(GENERAL))
    assert len(stored) == 2 and words(stored[-1].text) == words(second["content"])


async def test_retry_of_someone_elses_reply_needs_manage_messages(
    start_discord: StartBot, fake: FakeDiscord
) -> None:
    engine = (await start_discord()).engine
    await short_replies(fake, GENERAL)
    await fake.mention(GENERAL, alice(fake), "Tell me about the sea.")
    (reply,) = await fake.messages_in(GENERAL, 1)
    refused = await fake.answer(await fake.slash(bob(fake), GENERAL, "retry"))
    assert refused["flags"] & EPHEMERAL
    assert refused["content"].startswith("Only Alice or an admin")
    assert fake.sent_to(GENERAL)[0]["content"] == reply["content"]
    nothing = await fake.answer(await fake.slash(bob(fake), RANDOM, "retry"))
    assert "no reply here" in nothing["content"] and nothing["flags"] & EPHEMERAL
    assert len(await engine.history(here(GENERAL))) == 2


async def test_mood_answers_privately_after_a_deferral(
    start_discord: StartBot, fake: FakeDiscord
) -> None:
    await start_discord()
    asked = await fake.slash(bob(fake), GENERAL, "mood", text="I am so happy, I passed my exam!")
    answer = await fake.answer(asked)
    assert asked.responses[0]["type"] == 5  # "thinking…" first: the model may need loading
    assert asked.responses[0]["data"]["flags"] & EPHEMERAL
    assert answer["via"] == "followup" and answer["flags"] & EPHEMERAL
    assert answer["content"].startswith("Mood: happiness")
    last = await fake.answer(await fake.slash(bob(fake), GENERAL, "mood"))
    assert last["content"].startswith("No message from you here yet.")


# -- long replies, mentions, streaming -------------------------------------------------------------


LONG_REPLY = (
    "Here is the plan, step by step.\n\n"
    + " ".join(f"Step {i} is to keep going with patience and a cup of tea." for i in range(60))
    + "\n\n```python\n"
    + "\n".join(f"print('line {i} of the example')" for i in range(60))
    + "\n```\n\nThat's all. @everyone should try it!"
)


async def test_a_reply_over_2000_characters_arrives_as_several_messages(
    discord_client: PersonaBotClient, fake: FakeDiscord
) -> None:
    assert len(LONG_REPLY) > 5000
    channel = discord_client.get_partial_messageable(GENERAL, guild_id=GUILD_ID)
    original = await fake.say(GENERAL, fake.users[BOB_ID], "Give me a long plan")
    asked = await channel.fetch_message(int(original["id"]))
    sent = await send_text(channel, LONG_REPLY, reference=asked)
    messages = fake.sent_to(GENERAL)
    assert len(messages) == len(sent) >= 3
    # The first part answers the question; the rest simply follow it.
    assert messages[0]["message_reference"]["message_id"] == original["id"]
    assert all("message_reference" not in m for m in messages[1:])
    assert all(len(m["content"]) <= MESSAGE_LIMIT for m in messages)
    assert messages[0]["content"].startswith("Here is the plan") and messages[0][
        "content"
    ].endswith(".")
    for message in messages:  # every piece renders its code as code
        assert message["content"].count("```") % 2 == 0
    joined = " ".join(m["content"] for m in messages)
    assert words(joined.replace("```python", "").replace("```", "")) == words(
        LONG_REPLY.replace("```python", "").replace("```", "")
    )
    assert messages[-1]["content"].endswith("@everyone should try it!")
    assert messages[-1]["pings"] == NO_PINGS


async def test_generated_mentions_never_ping(
    discord_client: PersonaBotClient, fake: FakeDiscord
) -> None:
    channel = discord_client.get_partial_messageable(GENERAL, guild_id=GUILD_ID)
    text = f"@everyone @here look at this, <@{ALICE_ID}> and <@&{BOT_ROLE_ID}>!"
    await send_text(channel, text)
    (message,) = fake.sent_to(GENERAL)
    (call,) = fake.calls_to(SENDS)
    assert call.body["allowed_mentions"]["parse"] == []
    assert pings_nobody(call.body["allowed_mentions"])
    assert message["content"] == text  # shown as written...
    assert message["pings"] == NO_PINGS  # ...but nobody is notified
    assert message["mention_everyone"] is False and message["mentions"] == []


async def test_a_streamed_reply_is_edited_into_place(
    discord_client: PersonaBotClient, fake: FakeDiscord
) -> None:
    channel = discord_client.get_partial_messageable(GENERAL, guild_id=GUILD_ID)
    ready = asyncio.Event()
    streaming = StreamingReply(channel, reference=None, ready=ready.wait, interval=0)
    streaming.update("Once upon a time")
    ready.set()
    await fake.wait_for(lambda: fake.sent_to(GENERAL))
    streaming.update("Once upon a time there was a bot")
    await fake.wait_for(lambda: fake.edits)
    messages = await streaming.finish(LONG_REPLY)
    posted = fake.sent_to(GENERAL)
    assert fake.edits[0]["content"] == "Once upon a time there was a bot …"
    assert [m["id"] for m in posted] == [str(m.id) for m in messages]
    assert fake.edits[-1]["id"] == posted[0]["id"]  # the preview became the reply's first part
    assert all(len(m["content"]) <= MESSAGE_LIMIT for m in posted)
    assert len(posted) >= 3 and posted[-1]["content"].endswith("@everyone should try it!")


async def test_stream_replies_setting_shows_the_reply_while_it_is_written(
    start_discord: StartBot, fake: FakeDiscord
) -> None:
    engine = (await start_discord(discord_stream_replies=True)).engine
    dm = fake.dm_channel(alice(fake))
    await short_replies(fake, dm)
    await fake.say(dm, alice(fake), "Tell me a short story about a lighthouse keeper.")
    (reply,) = await fake.messages_in(dm, 1)
    # Previews end with " …"; the last edit puts the finished reply in place.
    await fake.wait_for(lambda: fake.edits and not fake.edits[-1]["content"].endswith(" …"))
    history = await engine.history(here(dm))
    assert [m.role for m in history] == ["user", "assistant"]
    (posted,) = fake.calls_to(SENDS)
    assert posted.body["content"].endswith(" …")  # first shown while still being written
    assert all(e["id"] == reply["id"] for e in fake.edits)  # then edited, never re-sent
    assert fake.sent_to(dm)[0]["content"] == history[1].text


# -- cooldowns and failures ----------------------------------------------------------------------


async def test_user_and_channel_cooldowns_send_one_polite_notice(
    start_discord: StartBot, fake: FakeDiscord
) -> None:
    engine = (
        await start_discord(user_cooldown_seconds=600, discord_channel_cooldown_seconds=600)
    ).engine
    await short_replies(fake, GENERAL)
    await fake.mention(GENERAL, alice(fake), "Hello there!")
    await fake.mention(GENERAL, alice(fake), "Are you there?")
    await fake.mention(GENERAL, alice(fake), "Hello??")
    await fake.mention(GENERAL, bob(fake), "Me too!")
    await fake.mention(GENERAL, bob(fake), "Still me.")
    sent = await fake.messages_in(GENERAL, 3)
    notices = sorted(m["content"].split(",")[0] for m in sent if "skipped" in m["content"])
    assert notices == ["Lots of messages here at once", "You're writing faster than I can answer"]
    history = await engine.history(here(GENERAL))
    assert [m.text for m in history if m.role == "user"] == ["Hello there!"]


async def test_discord_errors_are_survived(
    start_discord: StartBot,
    fake: FakeDiscord,
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
    engine = (await start_discord(generator=generator)).engine
    await short_replies(fake, GENERAL)

    # 429 with retry_after: discord.py waits and sends again.
    fake.fail_next(SENDS, 429, retry_after=0.5)
    await fake.mention(GENERAL, bob(fake), "Hello, are you awake?")
    (first,) = await fake.messages_in(GENERAL, 1)
    assert [c.status for c in fake.calls_to(SENDS)] == [429, 200]

    # Missing permission to send: logged, and the conversation is still stored.
    fake.fail_next(SENDS, 403)
    await fake.mention(GENERAL, bob(fake), "Remember that my cat is called Pixel.")
    await frontend_log.until("No permission to send")
    assert len(await engine.history(here(GENERAL))) == 4

    # From here on a bare mention is enough (it is answered with a hint, without the model).
    # A 503 is retried by the frontend; a deleted channel is logged.
    fake.fail_next(SENDS, 503)
    await fake.say(GENERAL, bob(fake), f"<@{BOT_ID}>")
    hint = (await fake.messages_in(GENERAL, 2))[1]
    assert hint["content"].startswith("Yes? Write your message after the mention")
    assert [c.status for c in fake.calls_to(SENDS)][-2:] == [503, 200]
    fake.fail_next(SENDS, 404)
    await fake.say(GENERAL, bob(fake), f"<@{BOT_ID}>")
    await frontend_log.until("is gone; not delivered")

    # The gateway drops: discord.py resumes, and what was said meanwhile is answered.
    await fake.drop_connection(4000)
    await fake.say(GENERAL, alice(fake), f"<@{BOT_ID}>")
    await fake.wait_for(lambda: fake.resumes)
    await fake.messages_in(GENERAL, 3)
    assert len(fake.identifies) == 1  # resumed, not a new session

    # A failed generation is answered with the reason; the user's message is kept.
    await generator.aclose()
    await fake.mention(GENERAL, bob(fake), "Are you still there?")
    failed = (await fake.messages_in(GENERAL, 4))[3]
    assert "shut down" in failed["content"]
    history = await engine.history(here(GENERAL))
    assert history[-1].text == "Are you still there?" and history[-1].role == "user"

    # A 429 on an interaction answer is survived too.
    fake.fail_next("POST /interactions/{interaction_id}/{token}/callback", 429, retry_after=0.2)
    listing = await fake.answer(await fake.slash(bob(fake), GENERAL, "persona", "list"))
    assert "pirate" in listing["content"]
    assert first["content"]


async def test_stopping_delivers_the_reply_being_written_first(
    start_discord: StartBot, fake: FakeDiscord
) -> None:
    bot = await start_discord()
    dm = fake.dm_channel(bob(fake))
    await short_replies(fake, dm)
    await fake.say(dm, bob(fake), "Tell me something nice about mornings.")
    await fake.wait_for(lambda: dm in fake.typing)  # the model is writing
    bot.stop.set()  # what SIGTERM does
    await asyncio.wait_for(bot.task, 60)
    (reply,) = fake.sent_to(dm)
    history = await bot.engine.history(here(dm))
    assert [m.role for m in history] == ["user", "assistant"]
    assert words(history[1].text) == words(reply["content"])


# -- configuration errors and the command line ---------------------------------------------------


async def test_a_rejected_token_is_a_clear_configuration_error(
    fake: FakeDiscord, make_settings: SettingsFactory, offline_generator: TransformersGenerator
) -> None:
    settings = make_settings(
        discord_token="wrong", discord_api_url=fake.api_url, discord_gateway_url=fake.gateway_url
    )
    engine = await build_engine(settings, generator=SharedGenerator(offline_generator))
    try:
        with pytest.raises(ConfigError, match="Discord rejected DISCORD_TOKEN"):
            await run_discord(engine, settings, asyncio.Event())
    finally:
        await engine.aclose()


async def test_a_missing_message_content_intent_says_where_to_enable_it(
    make_settings: SettingsFactory, offline_generator: TransformersGenerator
) -> None:
    server = FakeDiscord(message_content_enabled=False)
    await server.start()
    settings = make_settings(
        discord_token=TOKEN, discord_api_url=server.api_url, discord_gateway_url=server.gateway_url
    )
    engine = await build_engine(settings, generator=SharedGenerator(offline_generator))
    try:
        with pytest.raises(ConfigError, match="Message Content Intent"):
            await asyncio.wait_for(run_discord(engine, settings, asyncio.Event()), 30)
    finally:
        await engine.aclose()
        await server.stop()


def test_discord_settings_come_from_their_documented_variables() -> None:
    settings = load_settings(
        env={
            "DISCORD_TOKEN": "abc",
            "PERSONABOT_DISCORD_API_URL": "http://127.0.0.1:8080/api/v10/",
            "PERSONABOT_DISCORD_GATEWAY_URL": "ws://127.0.0.1:8080/gateway",
            "PERSONABOT_DISCORD_GUILD_IDS": "123, 456",
            "PERSONABOT_DISCORD_STREAM_REPLIES": "true",
            "PERSONABOT_DISCORD_CHANNEL_COOLDOWN_SECONDS": "0",
        }
    )
    assert settings.discord_api_url == "http://127.0.0.1:8080/api/v10"
    assert settings.discord_gateway_url == "ws://127.0.0.1:8080/gateway"
    assert settings.discord_guild_ids == (123, 456)
    assert settings.streams_replies("discord") is True
    assert settings.conversation_cooldown("discord") == 0
    assert plan_frontends(settings).started == ["Discord"]
    with pytest.raises(ConfigError) as caught:
        load_settings(
            env={
                "PERSONABOT_DISCORD_GATEWAY_URL": "https://gateway.discord.gg",
                "PERSONABOT_DISCORD_GUILD_IDS": "my-server",
            }
        )
    assert "PERSONABOT_DISCORD_GATEWAY_URL" in str(caught.value)
    assert "PERSONABOT_DISCORD_GUILD_IDS" in str(caught.value)


async def test_personabot_run_serves_discord_until_sigterm(
    fake: FakeDiscord, tmp_path: Path, model_cache_dir: Path
) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PERSONABOT_") and k not in ("DISCORD_TOKEN", "TELEGRAM_TOKEN")
    }
    env.update(
        DISCORD_TOKEN=TOKEN,
        PERSONABOT_DISCORD_API_URL=fake.api_url,
        PERSONABOT_DISCORD_GATEWAY_URL=fake.gateway_url,
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
    assert process.stderr is not None
    early: list[str] = []
    try:
        async with asyncio.timeout(120):  # the model loads first
            while not any("Discord: online" in line for line in early):
                line = (await process.stderr.readline()).decode()
                assert line, "personabot exited early:\n" + "".join(early)
                early.append(line)
        help_answer = await fake.answer(await fake.slash(bob(fake), GENERAL, "help"))
        assert "/persona set" in help_answer["content"]
        process.send_signal(signal.SIGTERM)
        _, rest = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    stderr = "".join(early).encode() + rest
    log = stderr.decode()
    assert process.returncode == 0, log
    assert "Starting Discord." in log and "Starting terminal." not in log
    assert f"Discord: online as {BOT_NAME} in 1 server(s) (global commands)." in log
    assert "Traceback" not in log and "PyNaCl" not in log


async def test_changing_a_channel_is_for_admins_unless_admin_only_is_off(
    start_discord: StartBot, fake: FakeDiscord
) -> None:
    strict = (await start_discord()).engine
    refused = await fake.answer(await fake.slash(bob(fake), GENERAL, "length", preset="long"))
    assert refused["flags"] & EPHEMERAL and "Manage Server" in refused["content"]
    assert (await strict.length(here(GENERAL))).value == "medium"
    in_dm = await fake.answer(
        await fake.slash(bob(fake), fake.dm_channel(bob(fake)), "length", preset="long")
    )
    assert in_dm["content"] == "Reply length set to long."  # in a DM the user decides


async def test_admin_only_off_lets_every_member_change_the_channel(
    start_discord: StartBot, fake: FakeDiscord
) -> None:
    engine = (await start_discord(admin_only=False)).engine
    length = await fake.answer(await fake.slash(bob(fake), GENERAL, "length", preset="long"))
    assert length["content"] == "Reply length set to long."
    persona = await fake.answer(
        await fake.slash(bob(fake), GENERAL, "persona", "set", name="pirate")
    )
    assert persona["content"].startswith("Persona set to Pirate")
    assert (await engine.persona(here(GENERAL))).name == "pirate"
