"""Turn taking per conversation, independent of the model."""

from __future__ import annotations

import asyncio

from core.ordering import TurnQueue


async def test_turns_run_in_join_order_and_other_keys_do_not_wait() -> None:
    queue = TurnQueue()
    log: list[str] = []
    gate = asyncio.Event()

    async def worker(key: str, label: str, hold: bool = False) -> None:
        turn = queue.join(key)
        try:
            await asyncio.sleep(0)  # e.g. storing the message
            await turn.wait()
            log.append(f"start {label}")
            if hold:
                await gate.wait()
            log.append(f"end {label}")
        finally:
            turn.finish()

    a1 = asyncio.create_task(worker("a", "a1", hold=True))
    a2 = asyncio.create_task(worker("a", "a2"))
    b1 = asyncio.create_task(worker("b", "b1"))
    await asyncio.wait_for(b1, 1)  # b is not blocked by a's held turn
    assert "end b1" in log and "start a2" not in log
    gate.set()
    await asyncio.gather(a1, a2)
    assert log.index("end a1") < log.index("start a2")
    assert len(queue) == 0  # nothing left behind


async def test_cancelled_waiter_does_not_let_later_turns_jump_ahead() -> None:
    queue = TurnQueue()
    log: list[str] = []
    gate = asyncio.Event()

    async def worker(label: str, hold: bool = False) -> None:
        turn = queue.join("k")
        try:
            await turn.wait()
            log.append(label)
            if hold:
                await gate.wait()
        finally:
            turn.finish()

    first = asyncio.create_task(worker("first", hold=True))
    second = asyncio.create_task(worker("second"))
    third = asyncio.create_task(worker("third"))
    await asyncio.sleep(0.01)
    second.cancel()
    await asyncio.sleep(0.01)
    assert log == ["first"]  # third still waits for first
    gate.set()
    await asyncio.gather(first, third)
    assert log == ["first", "third"]
    assert second.cancelled()


async def test_first_in_line_means_nothing_was_ahead_when_the_turn_was_taken() -> None:
    """wait() says whether the turn ahead was still running when waited for; the engine
    reuses reads made before that only for a turn that had nothing ahead at all."""
    queue = TurnQueue()
    first = queue.join("k")
    second = queue.join("k")
    other = queue.join("elsewhere")
    assert first.first_in_line and other.first_in_line and not second.first_in_line
    first.finish()
    await asyncio.sleep(0)
    assert not await second.wait()  # the earlier turn ended before this one waited...
    assert not second.first_in_line  # ...but it was running when this one was taken
    second.finish()
    other.finish()
    assert queue.join("k").first_in_line
