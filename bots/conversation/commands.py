"""The one command table: every command, what it does, who may run it, and where.

Each platform spells a command its own way (Discord's slash commands have subcommands and
named options; Telegram's take the rest of the line; the terminal is plain text), so a
command lists its spelling per platform, or none where it is not available yet. The help
texts of every frontend, Telegram's "/" menu and the README's parity table are all made
from this table, so they cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Platform = Literal["terminal", "discord", "telegram"]
PLATFORMS: tuple[Platform, ...] = ("terminal", "discord", "telegram")
PLATFORM_NAMES: dict[Platform, str] = {
    "terminal": "Terminal",
    "discord": "Discord",
    "telegram": "Telegram",
}


@dataclass(frozen=True, slots=True)
class Command:
    """One thing a user can ask for, and how to ask on each platform."""

    name: str
    """The command without the slash; its first word is Telegram's menu entry."""
    about: str
    who: str
    """Who may run it. In a private chat, with the bot alone, anyone may run anything;
    PERSONABOT_ADMIN_ONLY=false lets everyone do what is for admins."""
    spellings: dict[Platform, str]
    """How to type it on each platform where it exists."""

    def on(self, platform: Platform) -> str | None:
        return self.spellings.get(platform)


ANYONE = "anyone"
ADMINS = "admins in servers and groups"
ANYONE_SHOWS_ADMINS_CHANGE = "anyone to show; admins in servers and groups to change"
AUTHOR_OR_ADMINS = "the person it answered; admins in servers and groups"

COMMANDS: tuple[Command, ...] = (
    Command(
        "persona",
        "show the persona here, or switch to another",
        who=ANYONE_SHOWS_ADMINS_CHANGE,
        spellings={
            "terminal": "/persona [NAME]",
            "discord": "/persona show, /persona set <name>",
            "telegram": "/persona [NAME]",
        },
    ),
    Command(
        "personas",
        "list the personas usable here",
        who=ANYONE,
        spellings={
            "terminal": "/personas",
            "discord": "/persona list",
            "telegram": "/personas",
        },
    ),
    Command(
        "persona create",
        "write a new persona, usable only in this server or chat",
        who=ADMINS,
        spellings={
            "terminal": "/persona create NAME INSTRUCTIONS",
            "discord": "/persona create",
            "telegram": "/persona create NAME INSTRUCTIONS",
        },
    ),
    Command(
        "persona delete",
        "delete a persona this server or chat made with /persona create",
        who=ADMINS,
        spellings={
            "terminal": "/persona delete NAME",
            "discord": "/persona delete <name>",
            "telegram": "/persona delete NAME",
        },
    ),
    Command(
        "reset",
        "forget this conversation's history",
        who=ADMINS,
        spellings={"terminal": "/reset", "discord": "/reset", "telegram": "/reset"},
    ),
    Command(
        "retry",
        "write my last reply here again, in place of the old one",
        who=AUTHOR_OR_ADMINS,
        spellings={"terminal": "/retry", "discord": "/retry", "telegram": "/retry"},
    ),
    Command(
        "forget",
        "delete your own messages here and my replies to them (or everywhere)",
        who=ANYONE,
        spellings={
            "terminal": "/forget",
            "discord": "/forget [everywhere]",
            "telegram": "/forget [all]",
        },
    ),
    Command(
        "mood",
        "the mood of a text, or of your last message here",
        who=ANYONE,
        spellings={
            "terminal": "/mood [TEXT]",
            "discord": "/mood [text]",
            "telegram": "/mood [TEXT]",
        },
    ),
    Command(
        "length",
        "show or set how long my replies are here: short, medium or long",
        who=ANYONE_SHOWS_ADMINS_CHANGE,
        spellings={
            "terminal": "/length [PRESET]",
            "discord": "/length <short|medium|long>",
            "telegram": "/length [PRESET]",
        },
    ),
    Command(
        "chat",
        "answer every message in a channel, or only when spoken to",
        who=ADMINS,
        spellings={"discord": "/chat <always|mention>", "telegram": "/chat always|mention"},
    ),
    Command(
        "help",
        "how to talk to me, and the commands",
        who=ANYONE,
        spellings={"terminal": "/help", "discord": "/help", "telegram": "/help"},
    ),
)


def commands_on(platform: Platform) -> list[Command]:
    return [command for command in COMMANDS if command.on(platform) is not None]


def help_lines(platform: Platform) -> list[tuple[str, str]]:
    """(spelling, what it does) for each command available on ``platform``."""
    lines = []
    for command in commands_on(platform):
        spelling = command.on(platform) or ""
        admins = command.who == ADMINS and platform != "terminal"
        lines.append((spelling, f"{command.about} (admins)" if admins else command.about))
    return lines


def menu(platform: Platform) -> list[tuple[str, str]]:
    """(command word, description) pairs for a platform's command menu, in table order.

    The word is what is typed after the slash, so /persona list on Discord is under
    "persona" and /personas on Telegram under "personas".
    """
    seen: dict[str, str] = {}
    for command in commands_on(platform):
        word = (command.on(platform) or "").split()[0].lstrip("/")
        seen.setdefault(word, command.about)
    return list(seen.items())


def parity_table() -> str:
    """The README's table: each command, and its spelling on each platform (– where none)."""
    header = ["command", "what it does", "who", *(PLATFORM_NAMES[p] for p in PLATFORMS)]
    rows = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
    ]
    for command in COMMANDS:
        cells = [
            f"`/{command.name}`",
            command.about,
            command.who,
            *(f"`{command.on(p)}`" if command.on(p) else "–" for p in PLATFORMS),
        ]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(parity_table())  # README's "Commands on every platform" table
