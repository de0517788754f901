"""Every text personabot says to people, on every platform, written once.

Frontends format these for their platform (Markdown, keyboards, ephemeral answers) but never
write their own wording, so the terminal, Discord and Telegram say the same thing.
"""

from __future__ import annotations

from collections.abc import Sequence

from core.errors import PersonabotError, StorageError
from core.mood.trend import MoodTrend
from core.personas import Persona
from core.types import LengthPreset, MoodResult

APOLOGY = "Sorry, something went wrong on my side. Please try again in a moment."
"""Said when a reply or command fails in a way the user cannot fix."""


def mood_label(mood: MoodResult) -> str:
    return f"{mood.mood.value} ({mood.confidence:.0%})"


def mood_of_text(mood: MoodResult) -> str:
    return f"Mood: {mood_label(mood)}"


def last_mood(trend: MoodTrend | None, usage: str) -> str:
    """The mood of the user's last message here and of their recent ones; ``usage`` shows
    how to test a sentence."""
    if trend is None or trend.latest is None:
        return f"No message from you here yet. Use {usage} to test a sentence."
    text = f"Mood of your last message: {trend.latest.value}"
    if trend.run_mood is not None and trend.run_length > 1:
        return f"{text}. Your last {trend.run_length} messages all read {trend.run_mood.value}."
    leading = trend.leading
    if leading is not None and leading is not trend.latest:
        return f"{text}. Lately, mostly: {leading.value}."
    return text


def persona_set(persona: Persona) -> str:
    return f"Persona set to {persona.display_name} ({persona.name})."


def current_persona(persona: Persona) -> str:
    return f"Current persona: {persona.display_name} ({persona.name}): {persona.description}"


def persona_list(personas: Sequence[Persona], current: str, *, markdown: bool = False) -> list[str]:
    """One line a persona, the current one marked; ``markdown`` sets the names in bold."""
    mark = "**" if markdown else ""
    return [
        f"{'▶' if p.name == current else '•'} {mark}{p.name}{mark} ({p.display_name}): "
        f"{p.description}"
        for p in personas
    ]


def conversation_reset(count: int) -> str:
    return f"Conversation reset ({count} messages forgotten)."


def forgotten(count: int, *, everywhere: bool) -> str:
    where = "in all our conversations on this platform" if everywhere else "here"
    return f"Done: I deleted {count} stored messages {where} (yours and my replies to them)."


def reply_length(current: LengthPreset) -> str:
    choices = ", ".join(p.value for p in LengthPreset)
    return f"Reply length: {current.value} (choices: {choices})."


def length_set(preset: LengthPreset) -> str:
    return f"Reply length set to {preset.value}."


def answer_mode_set(always: bool) -> str:
    if always:
        return "I'll answer every message in this conversation now."
    return "I'll answer here only when mentioned or replied to."


def answer_mode(always: bool, *, private: bool) -> str:
    if private:
        return "I answer every message in this private chat."
    if always:
        return "I answer every message in this conversation."
    return "I answer here when mentioned or replied to."


def unknown_command(name: str) -> str:
    return f"Unknown command /{name}. Try /help."


def only_admins(action: str) -> str:
    """A refusal: ``action`` is what the user tried, e.g. "change the persona"."""
    return f"Only admins can {action}."


def what_to_say(mention: str) -> str:
    """An empty mention: how to write to the bot."""
    return f"Yes? Write your message after the mention, e.g. {mention} how was your day?"


SHUTTING_DOWN = "I'm shutting down for a moment; please try again shortly."
"""Said to a command that would write a reply while the bot stops."""

RETRIED = "Done: I wrote my last reply here again."
"""The private note on Discord after /retry; the new reply itself is in the channel."""


def persona_created(persona: Persona, switch_with: str) -> str:
    """``switch_with`` is the platform's spelling of the switch command."""
    return (
        f"Created the persona {persona.display_name} ({persona.name}). Switch to it with "
        f"{switch_with} {persona.name}."
    )


def persona_exists(name: str) -> str:
    return (
        f"A persona named {name!r} exists already; pick another name "
        "(or /persona delete it first, if it was made with /persona create)."
    )


def persona_deleted(name: str) -> str:
    return f"Deleted the persona {name}."


def no_such_persona(name: str) -> str:
    return f"There is no persona {name}."


CHAT_USAGE = "Switch with /chat always or /chat mention (admins)."

TELEGRAM_PRIVACY_MODE = (
    "Note: Telegram only shows me every message in a group if my privacy mode is off "
    "(ask the bot's owner: @BotFather → /setprivacy → Disable) or if I am an admin here."
)


STORAGE_UNAVAILABLE = (
    "Sorry, I can't reach my memory (the database) right now. Please try again in a moment."
)
"""Said instead of a storage error's own text, which names the database and where it is."""


def error_text(error: PersonabotError) -> str:
    """What chat users see of an error: its own text, except storage details, which go to
    the log only (they name the database file or server)."""
    return STORAGE_UNAVAILABLE if isinstance(error, StorageError) else str(error)


SLOW_DOWN = "Too many at once; please wait a moment."
"""The short answer to a refused button tap after the first (which says how long)."""
