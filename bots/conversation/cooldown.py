"""Per-user and per-conversation cooldowns: nobody can keep the model busy for everyone else.

Generation is the expensive, shared resource (one model, often one CPU or GPU), so a
frontend asks :class:`Cooldown` before handing a message to the engine. A refused message
is not answered; the frontend tells the user once per cooldown rather than once per
message, because answering every refused message would itself be the flood.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["CommandBudget", "Cooldown", "CooldownCheck", "RateDecision", "RateLimits"]


@dataclass(frozen=True, slots=True)
class CooldownCheck:
    """The answer for one message.

    ``retry_after`` is how many seconds remain (0 when allowed); ``notify`` is true for the
    first refusal since the user's last accepted message, so they hear about it only once.
    """

    allowed: bool
    retry_after: float = 0.0
    notify: bool = False


class Cooldown:
    """At most one accepted message per key every ``seconds``; ``seconds == 0`` disables it.

    State is in memory: a restart forgets cooldowns, which only errs on the generous side.
    """

    def __init__(
        self,
        seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
    ) -> None:
        if seconds < 0:
            raise ValueError(f"cooldown seconds must be >= 0, got {seconds}")
        self._seconds = seconds
        self._clock = clock
        self._max_keys = max_keys
        self._last: dict[str, float] = {}
        self._notified: set[str] = set()

    @property
    def seconds(self) -> float:
        return self._seconds

    def ready(self, key: str) -> bool:
        """Whether :meth:`check` would accept ``key`` now; takes nothing.

        A frontend guarding one message with two cooldowns (per user and per channel) asks
        this first, so a message the second one refuses does not use up the first one.
        """
        last = self._last.get(key)
        return self._seconds == 0 or last is None or self._clock() - last >= self._seconds

    def check(self, key: str) -> CooldownCheck:
        """Accept (and start the key's cooldown) or refuse, saying for how long."""
        if self._seconds == 0:
            return CooldownCheck(allowed=True)
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._seconds:
            notify = key not in self._notified
            self._notified.add(key)
            return CooldownCheck(False, self._seconds - (now - last), notify)
        self._last[key] = now
        self._notified.discard(key)
        if len(self._last) > self._max_keys:
            self._forget_expired(now)
        return CooldownCheck(allowed=True)

    def _forget_expired(self, now: float) -> None:
        """Keep memory bounded by the number of recently active users, not all users ever."""
        expired = [k for k, t in self._last.items() if now - t >= self._seconds]
        for key in expired:
            del self._last[key]
            self._notified.discard(key)

    def __len__(self) -> int:
        return len(self._last)


@dataclass(frozen=True, slots=True)
class RateDecision:
    """Whether a message may go to the model, and what to tell its author if not.

    ``notice`` is the polite "slow down" text, set only for the first refusal of a streak
    (once per window), so the frontend never answers a flood with a flood.
    """

    allowed: bool
    scope: str | None = None
    """``"user"`` or ``"conversation"``: which limit refused the message."""
    notice: str | None = None


class RateLimits:
    """The two limits every chat frontend puts in front of the model.

    One per user (a person writing fast anywhere) and one per conversation (a busy group
    channel, whoever writes). A message must pass both; the user's cooldown is only taken
    once the conversation's has accepted, so a message refused for the channel's sake does
    not also cost its author their next turn. ``0`` seconds turns a limit off.
    """

    def __init__(
        self,
        *,
        user_seconds: float,
        conversation_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._users = Cooldown(user_seconds, clock=clock)
        self._conversations = Cooldown(conversation_seconds, clock=clock)

    def check(self, user: str, conversation: str) -> RateDecision:
        if self._users.ready(user):
            by_conversation = self._conversations.check(conversation)
            if by_conversation.allowed:
                self._users.check(user)
                return RateDecision(allowed=True)
            notice = None
            if by_conversation.notify:
                notice = (
                    "Lots of messages here at once, so I skipped that one. Please send it "
                    f"again in {_seconds(by_conversation.retry_after)} s."
                )
            return RateDecision(False, "conversation", notice)
        by_user = self._users.check(user)
        notice = None
        if by_user.notify:
            notice = (
                "You're writing faster than I can answer, so I skipped that message. "
                f"Send it again in {_seconds(by_user.retry_after)} s."
            )
        return RateDecision(False, "user", notice)


def _seconds(retry_after: float) -> int:
    return max(1, round(retry_after))


class CommandBudget:
    """At most ``limit`` commands (or button taps) per user in any ``window`` seconds.

    Commands cost little each, but not nothing: /mood runs the classifier, a Telegram button
    tap asks Telegram who is an admin. A budget rather than a cooldown, because people
    often send two or three commands in a row (/persona, then /length); a flood is what
    must stop. ``limit == 0`` turns it off. The first refusal of a streak carries a notice.
    """

    def __init__(
        self,
        limit: int,
        window: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
    ) -> None:
        self._limit = limit
        self._window = window
        self._clock = clock
        self._max_keys = max_keys
        self._used: dict[str, deque[float]] = {}
        self._notified: set[str] = set()

    def check(self, user: str) -> RateDecision:
        if self._limit == 0:
            return RateDecision(allowed=True)
        now = self._clock()
        used = self._used.setdefault(user, deque())
        while used and now - used[0] >= self._window:
            used.popleft()
        if len(used) >= self._limit:
            notice = None
            if user not in self._notified:
                self._notified.add(user)
                wait = _seconds(self._window - (now - used[0]))
                notice = f"That's a lot of commands at once; please wait {wait} s."
            return RateDecision(False, "user", notice)
        used.append(now)
        self._notified.discard(user)
        if len(self._used) > self._max_keys:
            self._forget_idle(now)
        return RateDecision(allowed=True)

    def _forget_idle(self, now: float) -> None:
        idle = [k for k, used in self._used.items() if not used or now - used[-1] >= self._window]
        for key in idle:
            del self._used[key]
            self._notified.discard(key)
