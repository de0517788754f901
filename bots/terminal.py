"""The terminal frontend: chat with a persona in a shell, or script it through a pipe.

Interactive use shows a banner, the detected mood and a typing hint. Piped use (stdin not a
terminal) prints exactly one line per input line (a reply, a command's answer, or an
``[error] ...`` line), so a script can pair inputs with outputs; ``--json`` makes each of
those lines a JSON object.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TextIO

from bots.conversation import texts
from bots.conversation.commands import help_lines
from bots.conversation.last_mood import last_mood
from bots.conversation.persona_editing import (
    create_persona,
    delete_persona,
    fields_from_text,
    persona_action,
)
from core.engine import Engine
from core.errors import PersonabotError
from core.types import Author, ConversationRef, MoodResult


def help_text() -> str:
    """The terminal's /help, made from the shared command table."""
    lines = [f"  {spelling:<18}{about}" for spelling, about in help_lines("terminal")]
    lines.append(f"  {'/quit':<18}leave (Ctrl-D works too)")
    return "\n".join(["Commands:", *lines, "Anything else is a message to the persona."])


@dataclass(frozen=True, slots=True)
class Line:
    """One answer to one input line."""

    text: str
    kind: str = "info"  # reply | info | error
    persona: str | None = None
    mood: MoodResult | None = None


class TerminalChat:
    """Reads lines, answers each through the engine, writes the answers."""

    def __init__(
        self,
        engine: Engine,
        *,
        conversation: ConversationRef,
        author: Author,
        stdin: TextIO,
        stdout: TextIO,
        interactive: bool,
        json_lines: bool = False,
        shutdown_timeout: float = 30.0,
    ) -> None:
        self._engine = engine
        self._shutdown_timeout = shutdown_timeout
        self._conversation = conversation
        self._author = author
        self._stdin = stdin
        self._stdout = stdout
        self._interactive = interactive
        self._json = json_lines
        self._commands: dict[str, Callable[[str], Awaitable[Line]]] = {
            "persona": self._persona,
            "personas": self._personas,
            "reset": self._reset,
            "retry": self._retry,
            "forget": self._forget,
            "mood": self._mood,
            "length": self._length,
            "help": self._help,
        }

    async def run(self, stop: asyncio.Event | None = None) -> int:
        """Chat until end of input, /quit or ``stop``; returns the process exit code.

        ``stop`` is set by SIGTERM/SIGINT (see ``bots.cli``): a reply being written is
        finished and printed if it takes at most ``shutdown_timeout`` seconds, else
        cancelled (the message itself is already stored), and the chat ends with 0.
        """
        stop = stop or asyncio.Event()
        if self._interactive:
            await self._banner()
        lines = _LineReader(self._stdin)
        stopped = asyncio.create_task(stop.wait())
        try:
            while True:
                if self._interactive:
                    self._write_raw(f"{self._author.display_name}> ")
                raw = await _first(lines.readline(), stopped)
                if raw is None:
                    return 0
                if not raw:
                    if self._interactive:
                        self._write_raw("\n")
                    return 0
                text = raw.rstrip("\n")
                if text.strip() in ("/quit", "/exit"):
                    return 0
                if not text.strip() and self._interactive:
                    continue
                answer = asyncio.create_task(self.handle(text))
                await asyncio.wait([answer, stopped], return_when=asyncio.FIRST_COMPLETED)
                if not answer.done():
                    await asyncio.wait([answer], timeout=self._shutdown_timeout)
                    if not answer.done():
                        answer.cancel()
                        await asyncio.gather(answer, return_exceptions=True)
                        return 0
                self._emit(answer.result())
                if stop.is_set():
                    return 0
        finally:
            stopped.cancel()

    async def handle(self, text: str) -> Line:
        """Answer one input line; errors become an error line, never an exception."""
        try:
            stripped = text.strip()
            if stripped.startswith("/") and len(stripped) > 1:
                name, _, argument = stripped[1:].partition(" ")
                command = self._commands.get(name.lower())
                if command is None:
                    return Line(texts.unknown_command(name), "error")
                return await command(argument.strip())
            if self._interactive:
                persona = await self._engine.persona(self._conversation)
                self._write_raw(f"{persona.display_name} is typing…\r")
            reply = await self._engine.reply(self._conversation, self._author, text)
            return Line(reply.text, "reply", persona=reply.persona, mood=reply.mood)
        except PersonabotError as exc:
            return Line(str(exc), "error")

    # -- commands -----------------------------------------------------------------------------

    async def _persona(self, argument: str) -> Line:
        action, rest = persona_action(argument)
        if action == "create":
            created_by = f"{self._conversation.platform}:{self._author.id}"
            answer = await create_persona(
                self._engine,
                fields_from_text(rest),
                here=self._conversation,
                created_by=created_by,
                switch_with="/persona",
            )
            return Line(answer)
        if action == "delete":
            removed, answer = await delete_persona(self._engine, rest, here=self._conversation)
            return Line(answer, "info" if removed else "error")
        if rest:
            persona = await self._engine.set_persona(self._conversation, rest)
            return Line(texts.persona_set(persona))
        return Line(texts.current_persona(await self._engine.persona(self._conversation)))

    async def _personas(self, argument: str) -> Line:
        current = (await self._engine.persona(self._conversation)).name
        items = texts.persona_list(self._engine.personas(self._conversation), current)
        separator = "\n" if self._interactive else " | "
        return Line(separator.join(items))

    async def _reset(self, argument: str) -> Line:
        count = await self._engine.reset(self._conversation)
        return Line(texts.conversation_reset(count))

    async def _retry(self, argument: str) -> Line:
        reply = await self._engine.retry(self._conversation, self._author, may_retry_others=True)
        return Line(reply.text, "reply", persona=reply.persona, mood=reply.mood)

    async def _forget(self, argument: str) -> Line:
        count = await self._engine.forget(self._author, self._conversation)
        return Line(texts.forgotten(count, everywhere=False))

    async def _mood(self, argument: str) -> Line:
        if argument:
            return Line(texts.mood_of_text(await self._engine.detect_mood(argument)))
        mood = await last_mood(self._engine, self._conversation, self._author.id)
        return Line(texts.last_mood(mood, "/mood TEXT"))

    async def _length(self, argument: str) -> Line:
        if not argument:
            return Line(texts.reply_length(await self._engine.length(self._conversation)))
        try:
            preset = await self._engine.set_length(self._conversation, argument)
        except ValueError as exc:
            return Line(str(exc).capitalize() + ".", "error")
        return Line(texts.length_set(preset))

    async def _help(self, argument: str) -> Line:
        text = help_text()
        return Line(text if self._interactive else text.replace("\n", " | "))

    # -- output -------------------------------------------------------------------------------

    async def _banner(self) -> None:
        persona = await self._engine.persona(self._conversation)
        self._write_raw(
            f"personabot: chatting with {persona.display_name} ({persona.name}).\n"
            f"Model: {self._engine.generator_name}; mood detector: "
            f"{self._engine.mood_detector_name}. Type /help for commands, /quit to leave.\n"
        )

    def _emit(self, line: Line) -> None:
        if self._json:
            record: dict[str, object] = {"kind": line.kind, "text": line.text}
            if line.persona:
                record["persona"] = line.persona
            if line.mood:
                record["mood"] = line.mood.mood.value
                record["confidence"] = round(line.mood.confidence, 4)
            self._write_raw(json.dumps(record, ensure_ascii=False) + "\n")
            return
        if self._interactive:
            self._write_raw("\x1b[2K")  # clear the "typing…" hint
            if line.kind == "reply" and line.persona and line.mood:
                name = self._engine.persona_named(line.persona).display_name
                mood = texts.mood_label(line.mood)
                self._write_raw(f"{name}: {line.text}\n  [your mood: {mood}]\n")
            else:
                prefix = "error: " if line.kind == "error" else ""
                self._write_raw(f"{prefix}{line.text}\n")
            return
        prefix = "[error] " if line.kind == "error" else ""
        self._write_raw(prefix + " ".join(line.text.split("\n")) + "\n")

    def _write_raw(self, text: str) -> None:
        self._stdout.write(text)
        self._stdout.flush()


class _LineReader:
    """Input lines read on a daemon thread.

    ``asyncio.to_thread`` would park a blocking ``readline`` in the default executor, which
    ``asyncio.run`` joins on exit: a stop signal would then wait for the user to press
    Enter. A daemon thread is simply left behind when the process exits.
    """

    def __init__(self, stream: TextIO) -> None:
        self._loop = asyncio.get_running_loop()
        self._lines: asyncio.Queue[str] = asyncio.Queue()
        threading.Thread(
            target=self._pump, args=(stream,), name="personabot-stdin", daemon=True
        ).start()

    def _pump(self, stream: TextIO) -> None:
        while True:
            try:
                line = stream.readline()
            except (OSError, ValueError):  # closed or unreadable: treat as end of input
                line = ""
            try:
                self._loop.call_soon_threadsafe(self._lines.put_nowait, line)
            except RuntimeError:  # the loop is gone: the chat has ended
                return
            if not line:
                return

    async def readline(self) -> str:
        return await self._lines.get()


async def _first(read: Awaitable[str], stopped: asyncio.Task[bool]) -> str | None:
    """The next line, or ``None`` once ``stopped`` is done."""
    reading = asyncio.ensure_future(read)
    await asyncio.wait([reading, stopped], return_when=asyncio.FIRST_COMPLETED)
    if reading.done():
        return reading.result()
    reading.cancel()
    return None


def stdin_is_interactive() -> bool:
    return sys.stdin.isatty()
