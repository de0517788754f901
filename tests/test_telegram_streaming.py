"""Telegram replies shown while they are written: PTB's own client against the fake Bot API.

The flood-control path is the app's: PTB's ``AIORateLimiter`` waits the ``retry_after`` the
server asks for and retries. A reply is fed to :class:`StreamingReply` as the engine's
``on_partial`` would feed it; the end-to-end runs through the engine are in
tests/test_telegram.py.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
from telegram.ext import AIORateLimiter, ExtBot

from bots.telegram.app import RATE_LIMIT_RETRIES
from bots.telegram.formatting import WORD_JOINER
from bots.telegram.streaming import StreamingReply
from tests.fake_telegram import TOKEN, FakeBotAPI

ALICE = FakeBotAPI.user(601, "Alice")
GROUP_ID = -1005555
INTERVAL = 0.5
STORY = " ".join(f"word{i}" for i in range(400))[:1500]
NAMING = "Ask @someone_else about it, or mail bob@example.com. " + STORY[:500]


@pytest.fixture
async def bot(api: FakeBotAPI) -> AsyncIterator[ExtBot[Any]]:
    """The client as bots.telegram.app builds it: the same rate limiter and retries."""
    client: ExtBot[Any] = ExtBot(
        TOKEN,
        base_url=api.api_url,
        rate_limiter=AIORateLimiter(max_retries=RATE_LIMIT_RETRIES),
    )
    await client.initialize()
    yield client
    await client.shutdown()


async def at_once() -> None:
    """The reply's turn to be sent: no earlier reply is waiting."""


def streaming(bot: ExtBot[Any], chat_id: int, *, private: bool, **options: Any) -> StreamingReply:
    """A reply streamed to ``chat_id`` whose turn has come."""
    defaults: dict[str, Any] = {"thread_id": None, "reply_to": None, "interval": INTERVAL}
    return StreamingReply(bot, chat_id, private=private, ready=at_once, **{**defaults, **options})


async def written_gradually(reply: StreamingReply, text: str) -> None:
    """The text in 50-character steps, as a model writes it, then the finished reply."""
    for end in range(50, len(text) + 1, 50):
        reply.update(text[:end])
        await asyncio.sleep(0.05)
    await reply.finish(text)


async def test_a_long_group_reply_is_edited_at_most_once_per_interval_through_a_429(
    api: FakeBotAPI, bot: ExtBot[Any]
) -> None:
    asked = api.send(FakeBotAPI.group_chat(GROUP_ID), ALICE, "Tell me a long story")
    api.fail_next("editMessageText", 429, retry_after=1)
    reply = streaming(bot, GROUP_ID, private=False, reply_to=asked["message_id"])
    await written_gradually(reply, STORY)

    (preview,) = api.calls_to("sendMessage")  # one message, edited, never re-sent
    assert preview.params["text"].endswith(" …")
    assert int(preview.params["reply_parameters"]["message_id"]) == asked["message_id"]
    edits = api.calls_to("editMessageText")
    assert any(edit.status == 429 for edit in edits)  # flood control was asked for
    done = [edit for edit in edits if edit.status == 200]
    assert done[-1].params["text"] == STORY  # the finished reply, in full, in place
    # Previews (every call but the final edit) at most one per interval.
    shown = [preview, *edits[:-1]]
    gaps = [b.at - a.at for a, b in itertools.pairwise(shown)]
    assert gaps and min(gaps) >= INTERVAL * 0.95, gaps
    assert len(STORY) == 1500 and len(done) <= 1 + 1500 // 50


async def test_a_private_reply_streams_as_a_draft_then_arrives_as_one_message(
    api: FakeBotAPI, bot: ExtBot[Any]
) -> None:
    api.send({"id": ALICE["id"], "type": "private", "first_name": "Alice"}, ALICE, "Hi")
    reply = streaming(bot, ALICE["id"], private=True)
    await written_gradually(reply, STORY)

    drafts = api.calls_to("sendMessageDraft", ok=True)
    assert drafts and {int(d.params["draft_id"]) for d in drafts} != {0}
    assert len({d.params["draft_id"] for d in drafts}) == 1  # one draft, animated
    assert all(d.params["text"].endswith(" …") for d in drafts)
    assert not api.calls_to("editMessageText")
    (sent,) = api.sent_to(ALICE["id"])
    assert sent["text"] == STORY


async def test_finishing_after_the_preview_caught_up_does_not_hang(
    api: FakeBotAPI, bot: ExtBot[Any]
) -> None:
    """The model paused after its last partial text: the preview loop waits for new text."""
    api.send({"id": ALICE["id"], "type": "private", "first_name": "Alice"}, ALICE, "Hi")
    reply = streaming(bot, ALICE["id"], private=True, interval=0.01)
    reply.update("Hello")
    await api.wait_for(lambda: api.calls_to("sendMessageDraft", ok=True))
    await asyncio.sleep(0.2)  # well past the interval: the loop now waits for new text
    async with asyncio.timeout(10):
        await reply.finish("Hello there.")
    assert api.sent_to(ALICE["id"])[-1]["text"] == "Hello there."


def mentions(shown: dict[str, Any]) -> list[dict[str, Any]]:
    """The entities of a message or draft, as the fake Bot API found them like Telegram,
    that would notify someone."""
    return [e for e in shown.get("entities", []) if e["type"] in {"mention", "text_mention"}]


async def test_a_streamed_group_reply_mentions_nobody_while_it_is_written(
    api: FakeBotAPI, bot: ExtBot[Any]
) -> None:
    """The preview is plain text sent and edited past sending.py: it neutralises too."""
    asked = api.send(FakeBotAPI.group_chat(GROUP_ID), ALICE, "Who knows?")
    reply = streaming(bot, GROUP_ID, private=False, reply_to=asked["message_id"])
    await written_gradually(reply, NAMING)

    (preview,) = api.sent_to(GROUP_ID)
    assert preview["parse_mode"] is None and preview["text"].endswith(" …")
    edits = [edit for edit in api.edits if edit["chat"]["id"] == GROUP_ID]
    assert edits and edits[-1]["parse_mode"] == "HTML"  # the finished reply, in place
    for shown in [preview, *edits]:
        assert not mentions(shown), shown
        assert shown["text"].startswith(f"Ask @{WORD_JOINER}someone_else")  # reads the same
    assert edits[-1]["text"].replace(WORD_JOINER, "") == NAMING  # the e-mail address too


async def test_a_streamed_private_draft_mentions_nobody(api: FakeBotAPI, bot: ExtBot[Any]) -> None:
    api.send({"id": ALICE["id"], "type": "private", "first_name": "Alice"}, ALICE, "Hi")
    reply = streaming(bot, ALICE["id"], private=True)
    await written_gradually(reply, NAMING)

    assert api.drafts
    for draft in api.drafts:
        assert not mentions(draft), draft
        assert draft["text"].startswith(f"Ask @{WORD_JOINER}someone_else")
    (sent,) = api.sent_to(ALICE["id"])
    assert not mentions(sent) and sent["text"].replace(WORD_JOINER, "") == NAMING
