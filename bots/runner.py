"""Deciding which frontends ``personabot run`` starts, and telling the user why."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.settings import Settings


@dataclass(frozen=True, slots=True)
class FrontendPlan:
    """Which frontends will start, and a reason for each one that will not."""

    started: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return "terminal" in self.started

    def report(self) -> list[str]:
        lines = [f"Starting {name}." for name in self.started]
        lines += [f"Not starting {name}: {why}" for name, why in self.skipped.items()]
        return lines


# Platform frontends register here as they are built: name -> (token setting, env name).
PLATFORM_FRONTENDS: dict[str, tuple[str, str]] = {
    "Discord": ("discord_token", "DISCORD_TOKEN"),
    "Telegram": ("telegram_token", "TELEGRAM_TOKEN"),
}
AVAILABLE_PLATFORMS: frozenset[str] = frozenset()


def plan_frontends(settings: Settings) -> FrontendPlan:
    """Platforms start when their token is set; the terminal chat when none does."""
    plan = FrontendPlan()
    for name, (setting, env_name) in PLATFORM_FRONTENDS.items():
        if getattr(settings, setting) is None:
            plan.skipped[name] = f"{env_name} is not set."
        elif name not in AVAILABLE_PLATFORMS:
            plan.skipped[name] = (
                f"{env_name} is set, but this version of personabot has no {name} frontend yet."
            )
        else:
            plan.started.append(name)
    if not plan.started:
        plan.started.append("terminal")
        plan.skipped.pop("terminal", None)
    return plan
