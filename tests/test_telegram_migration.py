"""A Telegram group upgraded to a supergroup keeps its conversation and its personas.

Telegram gives the supergroup a new chat id and says so with a service message in the old
group (``migrate_to_chat_id``) and one in the new (``migrate_from_chat_id``); both are sent
here through the fake Bot API to the real PTB client, in that order.
"""

from __future__ import annotations

import time

from tests.fake_telegram import BOT_USERNAME, FakeBotAPI
from tests.polling import until
from tests.support.running_bot import StartBot
from tests.support.telegram_helpers import ALICE, GROUP_ID, answers, conversation

SUPERGROUP_ID = -1007777


async def test_a_group_that_becomes_a_supergroup_keeps_its_conversation(
    start_telegram: StartBot, api: FakeBotAPI
) -> None:
    engine = (await start_telegram()).engine
    group = {"id": GROUP_ID, "type": "group", "title": "Test group"}
    api.members[(GROUP_ID, ALICE["id"])] = "administrator"
    api.send(group, ALICE, "/persona pirate")
    api.send(group, ALICE, "/length short")
    api.send(group, ALICE, "/persona create chef You are a passionate chef.")
    await answers(api, GROUP_ID, 3)
    api.send(group, ALICE, f"@{BOT_USERNAME} ahoy, where is the treasure?")
    await answers(api, GROUP_ID, 4)
    before = await engine.history(conversation(GROUP_ID))
    assert [m.role for m in before] == ["user", "assistant"]

    supergroup = FakeBotAPI.group_chat(SUPERGROUP_ID)
    now = int(time.time())
    api.push_update(
        {
            "message": {
                "message_id": 9001,
                "date": now,
                "chat": group,
                "from": ALICE,
                "migrate_to_chat_id": SUPERGROUP_ID,
            }
        }
    )
    last = api.push_update(
        {
            "message": {
                "message_id": 1,
                "date": now,
                "chat": supergroup,
                "sender_chat": group,
                "migrate_from_chat_id": GROUP_ID,
            }
        }
    )
    await api.wait_until_polled_past(last)
    moved = conversation(SUPERGROUP_ID)

    async def arrived() -> bool:  # the update is handled concurrently with polling
        return len(await engine.history(moved)) == 2

    await until(arrived)
    assert [(m.role, m.text) for m in await engine.history(moved)] == [
        (m.role, m.text) for m in before
    ]
    assert (await engine.persona(moved)).name == "pirate"
    assert (await engine.length(moved)).value == "short"
    assert "chef" in {p.name for p in engine.personas(moved)}
    assert await engine.history(conversation(GROUP_ID)) == []
