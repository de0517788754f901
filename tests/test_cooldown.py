"""Per-user cooldowns (bots/conversation/cooldown.py)."""

from __future__ import annotations

import pytest

from bots.conversation.cooldown import CommandBudget, Cooldown, CooldownCheck, RateLimits


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_message_per_key_per_period_and_one_notice_per_refusal_streak() -> None:
    clock = Clock()
    cooldown = Cooldown(5.0, clock=clock)
    assert cooldown.check("alice") == CooldownCheck(allowed=True)
    clock.now += 1
    assert cooldown.check("alice") == CooldownCheck(False, 4.0, notify=True)
    clock.now += 1
    assert cooldown.check("alice") == CooldownCheck(False, 3.0, notify=False)
    assert cooldown.check("bob").allowed  # keys are independent
    clock.now += 3
    assert cooldown.check("alice").allowed  # refused messages do not extend the wait
    clock.now += 1
    assert cooldown.check("alice").notify  # a new streak is announced again


def test_zero_seconds_disables_it() -> None:
    cooldown = Cooldown(0)
    assert all(cooldown.check("alice").allowed for _ in range(10))
    assert len(cooldown) == 0


def test_memory_is_bounded_by_recently_active_keys() -> None:
    clock = Clock()
    cooldown = Cooldown(1.0, clock=clock, max_keys=10)
    for i in range(10):
        cooldown.check(f"user{i}")
    clock.now += 2
    cooldown.check("late")
    assert len(cooldown) == 1


def test_negative_seconds_are_refused() -> None:
    with pytest.raises(ValueError):
        Cooldown(-1)


def test_ready_says_whether_a_check_would_pass_without_taking_it() -> None:
    clock = Clock()
    cooldown = Cooldown(5.0, clock=clock)
    assert cooldown.ready("alice") and cooldown.ready("alice")
    assert cooldown.check("alice").allowed
    assert not cooldown.ready("alice")
    assert cooldown.check("alice").notify  # ready() did not count as a refusal
    clock.now += 5
    assert cooldown.ready("alice") and cooldown.check("alice").allowed
    assert Cooldown(0).ready("alice")


def test_rate_limits_per_user_and_per_conversation_with_one_notice_per_window() -> None:
    clock = Clock()
    limits = RateLimits(user_seconds=5.0, conversation_seconds=2.0, clock=clock)
    assert limits.check("alice", "group").allowed
    busy = limits.check("bob", "group")  # the conversation's window, whoever writes
    assert (busy.allowed, busy.scope) == (False, "conversation")
    assert busy.notice is not None and busy.notice.startswith("Lots of messages here at once")
    assert limits.check("carol", "group").notice is None  # one notice per window
    assert limits.check("bob", "dm-bob").allowed  # refused for the group: not charged to Bob
    fast = limits.check("alice", "dm-alice")  # Alice is in her own window, anywhere
    assert (fast.allowed, fast.scope) == (False, "user")
    assert fast.notice is not None and "Send it again in 5 s." in fast.notice
    assert limits.check("alice", "dm-alice").notice is None
    clock.now += 5
    assert limits.check("alice", "group").allowed


def test_rate_limits_of_zero_allow_everything() -> None:
    limits = RateLimits(user_seconds=0, conversation_seconds=0)
    assert all(limits.check("alice", "group").allowed for _ in range(20))


def test_the_command_budget_allows_a_burst_then_refuses_with_one_notice() -> None:
    clock = Clock()
    budget = CommandBudget(3, 60.0, clock=clock)
    assert [budget.check("u").allowed for _ in range(3)] == [True, True, True]
    first, second = budget.check("u"), budget.check("u")
    assert (
        not first.allowed and first.notice == "That's a lot of commands at once; please wait 60 s."
    )
    assert not second.allowed and second.notice is None  # one notice per streak
    assert budget.check("someone else").allowed
    clock.now += 30.0
    assert not budget.check("u").allowed
    clock.now += 30.0  # the first three have left the window
    assert budget.check("u").allowed
    assert CommandBudget(0, clock=clock).check("u").allowed  # 0 turns it off
