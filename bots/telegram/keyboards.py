"""The inline keyboards under /persona and /length, and what their buttons carry.

A button's callback data is a prefix naming the keyboard and the value chosen; the command
handlers in :mod:`bots.telegram.commands` route taps by that prefix.
"""

from __future__ import annotations

from collections.abc import Sequence

from telegram import Bot, CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message, Update

from bots.telegram.messages import place_of
from bots.telegram.sending import Place, edit_text
from core.personas import Persona
from core.types import LengthPreset

PERSONA_DATA = "persona:"
PAGE_DATA = "personas-page:"
LENGTH_DATA = "length:"

#: Personas per page of /persona's keyboard: Telegram refuses keyboards past about a hundred
#: buttons, and long ones are unreadable.
PAGE_SIZE = 8


def persona_keyboard(
    personas: Sequence[Persona], current: str, page: int = 0
) -> InlineKeyboardMarkup:
    """A button per persona, two a row, one page of them, with ◀ ▶ when there are more."""
    pages = max(1, -(-len(personas) // PAGE_SIZE))
    page = min(max(page, 0), pages - 1)
    buttons = [
        InlineKeyboardButton(
            f"{'✓ ' if p.name == current else ''}{p.display_name}",
            callback_data=f"{PERSONA_DATA}{p.name}",
        )
        for p in personas[page * PAGE_SIZE : (page + 1) * PAGE_SIZE]
    ]
    rows = [buttons[i : i + 2] for i in range(0, len(buttons), 2)]
    if pages > 1:
        rows.append(
            [
                InlineKeyboardButton("◀", callback_data=f"{PAGE_DATA}{(page - 1) % pages}"),
                InlineKeyboardButton(f"{page + 1}/{pages}", callback_data=f"{PAGE_DATA}{page}"),
                InlineKeyboardButton("▶", callback_data=f"{PAGE_DATA}{(page + 1) % pages}"),
            ]
        )
    return InlineKeyboardMarkup(rows)


def length_keyboard(current: LengthPreset) -> InlineKeyboardMarkup:
    """One row: a button per reply-length preset, the current one ticked."""
    return InlineKeyboardMarkup(
        [
            [
                InlineKeyboardButton(
                    f"{'✓ ' if p is current else ''}{p.value}",
                    callback_data=f"{LENGTH_DATA}{p.value}",
                )
                for p in LengthPreset
            ]
        ]
    )


async def replace_keyboard(bot: Bot, query: CallbackQuery, place: Place, text: str) -> None:
    """Replace a keyboard's message with what was chosen, as every sent text is formatted
    (mentions neutralised)."""
    if query.message is not None:
        await edit_text(bot, place.chat_id, query.message.message_id, text)


def button_place(update: Update) -> Place | None:
    """Where a tapped keyboard is; None when its message is too old for Telegram to send."""
    query = update.callback_query
    message = None if query is None else query.message
    return place_of(message) if isinstance(message, Message) else None
