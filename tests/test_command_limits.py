"""Commands and button taps spend from a per-user budget on both chat platforms.

Through the fake Discord and the fake Telegram Bot API with the real client libraries:
past PERSONABOT_COMMANDS_PER_MINUTE a user's commands are refused with one notice (on
Discord, a private one each time), a refused Telegram button tap asks Telegram nothing,
and a bare Discord mention's hint is limited too.
"""

from __future__ import annotations

from bots.conversation import texts
from tests.fake_discord import GENERAL, FakeDiscord
from tests.fake_telegram import FakeBotAPI
from tests.support.discord_helpers import EPHEMERAL, bob
from tests.support.running_bot import StartBot
from tests.support.telegram_helpers import ALICE, BOB, GROUP_ID, answers, private

NOTICE = "That's a lot of commands at once; please wait"


async def test_telegram_commands_past_the_budget_get_one_notice(
    start_telegram: StartBot, api: FakeBotAPI
) -> None:
    await start_telegram(commands_per_minute=3)
    chat = private(ALICE)
    for _ in range(3):
        api.send(chat, ALICE, "/help")
    await answers(api, ALICE["id"], 3)
    api.send(chat, ALICE, "/help")
    (*_, notice) = await answers(api, ALICE["id"], 4)
    assert notice["text"].startswith(NOTICE)
    api.send(chat, ALICE, "/help")
    last = api.send(private(BOB), BOB, "/help")  # another user's budget is their own
    await answers(api, BOB["id"], 1)
    await api.wait_until_polled_past(last)
    assert len(api.sent_to(ALICE["id"])) == 4  # no second notice in the streak


async def test_telegram_taps_past_the_budget_ask_telegram_nothing(
    start_telegram: StartBot, api: FakeBotAPI
) -> None:
    await start_telegram(commands_per_minute=1)
    group = FakeBotAPI.group_chat(GROUP_ID)
    api.send(group, BOB, "/length")
    (keyboard,) = await answers(api, GROUP_ID, 1)
    api.tap(BOB, keyboard, "length:long")
    answered = await api.wait_for(lambda: api.calls_to("answerCallbackQuery"))
    assert answered[0].params["text"].startswith(NOTICE)
    assert not api.calls_to("getChatMember")  # the admin check was never asked for


async def test_discord_commands_past_the_budget_are_refused_privately(
    start_discord: StartBot, fake: FakeDiscord
) -> None:
    await start_discord(commands_per_minute=2)
    for _ in range(2):
        assert not (await fake.answer(await fake.slash(bob(fake), GENERAL, "help")))[
            "content"
        ].startswith(NOTICE)
    refused = await fake.answer(await fake.slash(bob(fake), GENERAL, "help"))
    assert refused["flags"] & EPHEMERAL and refused["content"].startswith(NOTICE)
    again = await fake.answer(await fake.slash(bob(fake), GENERAL, "help"))
    assert again["flags"] & EPHEMERAL and again["content"] == texts.SLOW_DOWN
    # A bare mention's hint spends from the same budget: nothing is posted for it now.
    before = len(fake.sent_to(GENERAL))
    await fake.mention(GENERAL, bob(fake), "")
    help_again = await fake.answer(await fake.slash(bob(fake), GENERAL, "help"))
    assert help_again["content"] == texts.SLOW_DOWN
    assert len(fake.sent_to(GENERAL)) == before
