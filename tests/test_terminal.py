"""The terminal's commands that the chat platforms have too: /retry and persona editing."""

from __future__ import annotations

import io

from bots.conversation.commands import commands_on
from bots.terminal import TerminalChat
from core.engine import Engine
from core.types import Author, ConversationRef

ALICE = Author("local", "Alice")
HERE = ConversationRef("terminal", "local")


def terminal(engine: Engine) -> TerminalChat:
    return TerminalChat(
        engine,
        conversation=HERE,
        author=ALICE,
        stdin=io.StringIO(),
        stdout=io.StringIO(),
        interactive=False,
    )


async def test_retry_replaces_the_last_reply(engine: Engine) -> None:
    chat = terminal(engine)
    nothing = await chat.handle("/retry")
    assert nothing.kind == "error" and "no reply here" in nothing.text
    first = await chat.handle("Tell me about the sea.")
    again = await chat.handle("/retry")
    assert again.kind == "reply" and again.text and again.text != first.text
    history = await engine.history(HERE)
    assert [(m.role, m.text) for m in history] == [
        ("user", "Tell me about the sea."),
        ("assistant", again.text),
    ]


async def test_personas_are_created_switched_to_and_deleted(engine: Engine) -> None:
    chat = terminal(engine)
    created = await chat.handle("/persona create Chef You are a passionate chef.")
    assert created.text == "Created the persona Chef (chef). Switch to it with /persona chef."
    assert engine.persona_named("chef").system_prompt == "You are a passionate chef."
    taken = await chat.handle("/persona create chef You are someone else.")
    assert taken.kind == "error" and "exists already" in taken.text
    usage = await chat.handle("/persona create chef")
    assert usage.kind == "error" and "/persona create NAME INSTRUCTIONS" in usage.text
    assert (await chat.handle("/persona set chef")).text == "Persona set to Chef (chef)."
    built_in = await chat.handle("/persona delete friend")
    assert built_in.kind == "error" and "not a user-made persona" in built_in.text
    deleted = await chat.handle("/persona delete chef")
    assert deleted.text == "Deleted the persona chef."
    assert "chef" not in {p.name for p in engine.personas()}
    # The conversation falls back to the default persona.
    assert (await engine.persona(HERE)).name == engine.default_persona


async def test_every_command_in_the_table_is_known(engine: Engine) -> None:
    """Each terminal command of the shared table has a handler (bots/conversation)."""
    chat = terminal(engine)
    for command in commands_on("terminal"):
        spelling = command.on("terminal") or ""
        answer = await chat.handle(spelling.split()[0])
        assert not answer.text.startswith("Unknown command"), spelling
