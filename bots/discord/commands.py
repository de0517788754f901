"""The slash commands: /persona, /reset, /retry, /forget, /mood, /length, /chat and /help.

They are discord.py ``app_commands`` in one Cog, registered with Discord at start-up (see
:func:`bots.discord.app.sync_commands`). Answers that only concern the caller (lists, help,
refusals, errors, moods) are ephemeral; changes that affect everyone in the channel
(persona, length, reset, answer mode) are posted for everyone to see.

Who may do what is checked here at run time, not only by Discord's command permissions:
Discord can hide a top-level command from members without a permission, but not a
subcommand such as ``/persona create``, and server admins can change those defaults.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

import discord
from discord import app_commands
from discord.ext import commands

from bots.conversation import texts
from bots.conversation.commands import help_lines
from bots.conversation.last_mood import last_mood
from bots.conversation.persona_editing import create_persona, delete_persona
from bots.conversation.reply_flow import ReplyFlow
from bots.discord.messages import PLATFORM, ChannelDelivery, author_of, conversation_of
from bots.discord.sending import NO_MENTIONS, split_reply
from core.engine import Engine
from core.errors import PersonabotError
from core.types import ConversationRef

__all__ = ["CommandTree", "ConversationCommands", "Refused", "respond"]

log = logging.getLogger(__name__)

Interaction = discord.Interaction[discord.Client]

#: How long a /persona create form may stay open before its answer is no longer accepted.
FORM_TIMEOUT_SECONDS = 15 * 60

#: Discord shows at most 25 autocomplete suggestions.
_MAX_CHOICES = 25


class Refused(app_commands.CheckFailure):
    """A permission check failed; the message says which permission is missing."""


class CommandTree(app_commands.CommandTree[discord.Client]):
    """Turns every command failure into a short private answer instead of a silent error."""

    async def on_error(self, interaction: Interaction, error: app_commands.AppCommandError) -> None:
        original = getattr(error, "original", error)
        if isinstance(error, Refused):
            text = str(error)
        elif isinstance(original, PersonabotError):
            log.info("Discord command refused: %s", original)
            text = texts.error_text(original)
        elif isinstance(error, app_commands.CommandNotFound):
            text = "I don't know that command (any more). Try /help."
        elif isinstance(error, app_commands.CheckFailure):
            text = "You can't use this command here."
        else:
            log.error("Discord command failed: %s", error, exc_info=original)
            text = texts.APOLOGY
        await respond(interaction, text, ephemeral=True)


async def respond(interaction: Interaction, text: str, *, ephemeral: bool) -> None:
    """Answer an interaction with any length of text, pinging nobody; never raises.

    The first part is the interaction's response (or a follow-up if it was deferred or
    already answered); longer texts continue as follow-ups.
    """
    try:
        for index, chunk in enumerate(split_reply(text)):
            if index == 0 and not interaction.response.is_done():
                await interaction.response.send_message(
                    chunk, ephemeral=ephemeral, allowed_mentions=NO_MENTIONS
                )
            else:
                await interaction.followup.send(
                    chunk, ephemeral=ephemeral, allowed_mentions=NO_MENTIONS
                )
    except discord.NotFound as exc:  # the interaction expired (3 s to answer, 15 min after)
        log.warning("Could not answer a Discord command in time: %s", exc)
    except (discord.HTTPException, discord.ClientException) as exc:
        log.error("Could not answer a Discord command: %s", exc)


def needs(permission: str, label: str, *, in_dms: bool) -> Callable[[Interaction], bool]:
    """A check: in a server the caller needs ``permission``, unless PERSONABOT_ADMIN_ONLY
    is off; in DMs ``in_dms`` decides."""

    def check(interaction: Interaction) -> bool:
        if interaction.guild is None:
            if in_dms:
                return True
            raise Refused("This command works in servers only.")
        cog = getattr(interaction.command, "binding", None)
        if isinstance(cog, ConversationCommands) and not cog.admin_only:
            return True
        granted = interaction.permissions
        if granted.administrator or getattr(granted, permission):
            return True
        raise Refused(f"Only members with the {label} permission can use this command here.")

    return check


def help_text() -> str:
    lines = [
        "Talk to me in a DM, or in a server by mentioning me or replying to one of my "
        "messages (or everywhere in a channel switched to /chat always). Each channel and "
        "thread is its own conversation.",
        "",
        *(f"`{usage}`: {about}" for usage, about in help_lines("discord")),
    ]
    return "\n".join(lines)


class PersonaModal(discord.ui.Modal, title="Create a persona"):
    """The form behind /persona create: a persona's name, looks and instructions."""

    name: discord.ui.TextInput[PersonaModal] = discord.ui.TextInput(
        label="Name (lowercase, used in /persona set)",
        placeholder="chef",
        min_length=1,
        max_length=32,
    )
    display_name: discord.ui.TextInput[PersonaModal] = discord.ui.TextInput(
        label="Display name", placeholder="Chef", required=False, max_length=64
    )
    description: discord.ui.TextInput[PersonaModal] = discord.ui.TextInput(
        label="One-line description",
        placeholder="A passionate chef who relates everything to food.",
        required=False,
        max_length=200,
    )
    system_prompt: discord.ui.TextInput[PersonaModal] = discord.ui.TextInput(
        label="Instructions: who is this persona?",
        style=discord.TextStyle.paragraph,
        placeholder="You are a passionate chef. You answer warmly and relate everything...",
        min_length=1,
        max_length=2000,
    )

    def __init__(self, engine: Engine, flow: ReplyFlow) -> None:
        # A form left open longer is forgotten, so abandoned forms do not pile up in memory.
        super().__init__(timeout=FORM_TIMEOUT_SECONDS)
        self._engine = engine
        self._flow = flow

    async def on_submit(self, interaction: Interaction) -> None:
        fields = {
            "name": self.name.value,
            "display_name": self.display_name.value,
            "description": self.description.value,
            "system_prompt": self.system_prompt.value,
        }
        try:
            answer = await create_persona(
                self._engine,
                fields,
                here=_here(interaction),
                created_by=f"discord:{interaction.user.id}",
                switch_with="/persona set",
            )
        except PersonabotError as exc:
            await respond(interaction, texts.error_text(exc), ephemeral=True)
            return
        self._flow.spoke(_here(interaction))
        await respond(interaction, answer, ephemeral=False)

    async def on_error(self, interaction: Interaction, error: Exception) -> None:  # type: ignore[override]
        log.error("Creating a persona failed: %s", error, exc_info=error)
        await respond(interaction, "Sorry, the persona could not be created.", ephemeral=True)


class ConversationCommands(commands.Cog):
    """Every slash command, discord.py's Cog idiom: /persona is a group of subcommands,
    the rest are top-level commands."""

    persona = app_commands.Group(name="persona", description="Who I am in this channel")

    def __init__(self, engine: Engine, flow: ReplyFlow, *, admin_only: bool = True) -> None:
        self._engine = engine
        self._flow = flow
        self.admin_only = admin_only
        """PERSONABOT_ADMIN_ONLY: changing a server's conversations needs a permission."""

    async def interaction_check(self, interaction: Interaction) -> bool:
        """Every command of this Cog first spends from the user's command budget
        (PERSONABOT_COMMANDS_PER_MINUTE); past it, a private note instead of the command."""
        decision = self._flow.command_allowed(str(interaction.user.id))
        if not decision.allowed:
            raise Refused(decision.notice or texts.SLOW_DOWN)
        return True

    async def _announce(self, interaction: Interaction, text: str) -> None:
        """Answer for everyone in the channel: that is now the bot's last message there."""
        self._flow.spoke(_here(interaction))
        await respond(interaction, text, ephemeral=False)

    # -- /persona ...

    @persona.command(name="set", description="Switch this channel's persona")
    @app_commands.describe(name="The persona to switch to")
    @app_commands.check(needs("manage_guild", "Manage Server", in_dms=True))
    async def persona_set(self, interaction: Interaction, name: str) -> None:
        chosen = await self._engine.set_persona(_here(interaction), name)
        await self._announce(interaction, texts.persona_set(chosen))

    @persona.command(name="list", description="List the personas")
    async def persona_list(self, interaction: Interaction) -> None:
        here = _here(interaction)
        current = (await self._engine.persona(here)).name
        lines = texts.persona_list(self._engine.personas(here), current, markdown=True)
        await respond(interaction, "\n".join(lines), ephemeral=True)

    @persona.command(name="show", description="The persona, reply length and answer mode here")
    async def persona_show(self, interaction: Interaction) -> None:
        here = _here(interaction)
        current = await self._engine.persona(here)
        length = await self._engine.length(here)
        private = interaction.guild is None
        always = not private and await self._engine.always_answer(here)
        mode = texts.answer_mode(always, private=private)
        await respond(
            interaction,
            f"Persona: {current.display_name} ({current.name}): {current.description}\n"
            f"Reply length: {length.value}. {mode}",
            ephemeral=True,
        )

    @persona.command(name="create", description="Write a new persona (needs Manage Server)")
    @app_commands.check(needs("manage_guild", "Manage Server", in_dms=False))
    async def persona_create(self, interaction: Interaction) -> None:
        await interaction.response.send_modal(PersonaModal(self._engine, self._flow))

    @persona.command(name="delete", description="Delete a user-made persona (needs Manage Server)")
    @app_commands.describe(name="The persona to delete")
    @app_commands.check(needs("manage_guild", "Manage Server", in_dms=False))
    async def persona_delete(self, interaction: Interaction, name: str) -> None:
        removed, answer = await delete_persona(self._engine, name, here=_here(interaction))
        if removed:
            await self._announce(interaction, answer)
        else:
            await respond(interaction, answer, ephemeral=True)

    @persona_set.autocomplete("name")
    @persona_delete.autocomplete("name")
    async def persona_names(
        self, interaction: Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        typed = current.strip().lower()
        return [
            app_commands.Choice(name=f"{p.display_name} ({p.name})"[:100], value=p.name)
            for p in self._engine.personas(_here(interaction))
            if typed in p.name or typed in p.display_name.lower()
        ][:_MAX_CHOICES]

    # -- top-level commands

    @app_commands.command(name="reset", description="Forget this channel's conversation")
    @app_commands.default_permissions(manage_messages=True)
    @app_commands.check(needs("manage_messages", "Manage Messages", in_dms=True))
    async def reset(self, interaction: Interaction) -> None:
        count = await self._engine.reset(_here(interaction))
        await self._announce(interaction, texts.conversation_reset(count))

    @app_commands.command(name="retry", description="Write my last reply here again")
    async def retry(self, interaction: Interaction) -> None:
        # Anyone may ask again for the answer to their own message; an answer to someone
        # else's needs Manage Messages, like /reset. The new reply goes to the channel.
        await interaction.response.defer(ephemeral=True, thinking=True)
        channel = interaction.channel
        if not isinstance(channel, discord.abc.Messageable):
            raise PersonabotError("This command needs to be used in a channel.")
        granted = interaction.permissions
        may_retry_others = (
            interaction.guild is None
            or not self.admin_only
            or bool(granted.administrator or granted.manage_messages)
        )
        delivery = ChannelDelivery(channel, reference=None, stream=False)
        with self._flow.accepted() as accepted:
            refused = (
                await self._flow.retry(
                    _here(interaction),
                    author_of(interaction.user),
                    delivery,
                    may_retry_others=may_retry_others,
                )
                if accepted
                else texts.SHUTTING_DOWN
            )
        await respond(interaction, refused or texts.RETRIED, ephemeral=True)

    @app_commands.command(
        name="forget", description="Delete your messages here and my replies to them"
    )
    @app_commands.describe(everywhere="True: in every channel, thread and DM I share with you")
    async def forget(self, interaction: Interaction, everywhere: bool = False) -> None:
        # Anyone may delete what they wrote, anywhere, without a permission: it is their data
        # (docs/privacy.md). Others' messages and the channel's settings stay. The answer is
        # private: nobody else needs to know. Deferred, because forgetting here waits for a
        # reply still being written to this person (it is deleted with the rest).
        await interaction.response.defer(ephemeral=True, thinking=True)
        author = author_of(interaction.user)
        if everywhere:
            count = await self._engine.forget(author, platform=PLATFORM)
        else:
            count = await self._engine.forget(author, _here(interaction))
        await respond(interaction, texts.forgotten(count, everywhere=everywhere), ephemeral=True)

    @app_commands.command(
        name="mood", description="The mood of a text, or of your last message here"
    )
    @app_commands.describe(text="Any text; leave it out for your last message here")
    async def mood(self, interaction: Interaction, text: str | None = None) -> None:
        # The first use may load the mood model: take longer than Discord's 3 s to answer.
        await interaction.response.defer(ephemeral=True, thinking=True)
        if text and text.strip():
            answer = texts.mood_of_text(await self._engine.detect_mood(text))
        else:
            here = _here(interaction)
            mood = await last_mood(self._engine, here, str(interaction.user.id))
            answer = texts.last_mood(mood, "/mood text:")
        await respond(interaction, answer, ephemeral=True)

    @app_commands.command(name="length", description="How long my replies are in this channel")
    @app_commands.describe(preset="short, medium or long")
    @app_commands.check(needs("manage_guild", "Manage Server", in_dms=True))
    async def length(
        self, interaction: Interaction, preset: Literal["short", "medium", "long"]
    ) -> None:
        chosen = await self._engine.set_length(_here(interaction), preset)
        await self._announce(interaction, texts.length_set(chosen))

    @app_commands.command(
        name="chat", description="Answer every message here, or only when spoken to"
    )
    @app_commands.describe(mode="always: every message; mention: when mentioned or replied to")
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.check(needs("manage_guild", "Manage Server", in_dms=False))
    async def chat(self, interaction: Interaction, mode: Literal["always", "mention"]) -> None:
        always = mode == "always"
        await self._engine.set_always_answer(_here(interaction), always)
        await self._announce(interaction, texts.answer_mode_set(always))

    @app_commands.command(name="help", description="How to talk to me, and the commands")
    async def help(self, interaction: Interaction) -> None:
        await respond(interaction, help_text(), ephemeral=True)


def _here(interaction: Interaction) -> ConversationRef:
    """The conversation a command was used in."""
    return conversation_of(
        _channel(interaction), guild_id=interaction.guild_id, user_id=interaction.user.id
    )


def _channel(interaction: Interaction) -> discord.abc.Snowflake:
    """Where the command was used; every interaction from a channel carries it."""
    if interaction.channel is not None:
        return interaction.channel
    if interaction.channel_id is not None:
        return discord.Object(interaction.channel_id)
    raise PersonabotError("This command needs to be used in a channel.")
