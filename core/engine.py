"""The engine: the small async API every frontend talks to.

A frontend translates a platform event into ``reply(conversation, author, text)`` and sends
back what it returns; personas, moods, history and generation all live behind this class.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta

from core.errors import (
    GenerationError,
    GeneratorBusyError,
    InputError,
    PersonabotError,
    StorageError,
)
from core.generation.generator import Generator
from core.generation.local.profiles import prompt_budget
from core.mood import MoodDetector
from core.mood.trend import MoodTrend
from core.observability import Metrics, log_event
from core.ordering import TurnQueue
from core.personas import GLOBAL, Persona, PersonaCatalog
from core.prompting import Prompt, PromptBuilder
from core.settings import Settings
from core.storage import ConversationState, ConversationStore, Database
from core.text import (
    ReplyCleaner,
    clean_display_name,
    clean_user_text,
    speaker_stop_strings,
    trim_to_last_sentence,
)
from core.types import (
    Author,
    ChatMessage,
    ConversationRef,
    LengthPreset,
    Mood,
    MoodResult,
    Reply,
    SamplingParams,
    StoredMessage,
)

log = logging.getLogger(__name__)

UNSURE = MoodResult(Mood.NO_EMOTION, 0.0)

#: Receives the reply written so far, already cleaned like the final reply, while the model
#: writes it (see :meth:`Engine.reply`); chat frontends use it to show a reply growing.
PartialReply = Callable[[str], None]

#: A streamed reply's token count is measured by re-tokenising its text, which can fall
#: several tokens short of what was decoded (whitespace and merges the decoder dropped); a
#: reply within this fraction of its budget is treated as cut off by it. Trimming a reply
#: that did finish costs nothing: it already ends on a sentence.
_STREAM_BUDGET_SLACK_FRACTION = 0.125

#: What the user is told when the model fails mid-reply; the details go to the log.
APOLOGY = "Sorry, something went wrong while I was writing that reply. Please try again."
APOLOGY_OUT_OF_MEMORY = (
    "Sorry, I ran out of memory while writing that reply. Please try again, perhaps with a "
    "shorter message."
)
#: What the user is told when too many replies are already waiting for the model.
BUSY = "Sorry, I'm answering a lot of messages right now. Please try again in a moment."
#: ... and when too many messages of this conversation are already waiting for theirs.
BUSY_HERE = (
    "Sorry, I'm still answering earlier messages here. Please wait for those replies before "
    "writing more."
)

#: The least sampling temperature of a retry, so that it can say something else.
RETRY_MIN_TEMPERATURE = 0.7

#: How often expired history is deleted while running (besides once at start-up).
RETENTION_INTERVAL_SECONDS = 3600.0


class Engine:
    """Answers messages per conversation, in arrival order, in the conversation's persona."""

    def __init__(
        self,
        *,
        settings: Settings,
        database: Database,
        store: ConversationStore,
        personas: PersonaCatalog,
        mood_detector: MoodDetector,
        generator: Generator,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        #: Always counted; exposed over HTTP only with PERSONABOT_METRICS_PORT.
        self.metrics = metrics or Metrics()
        self._in_flight = 0
        self._maintenance: asyncio.Task[None] | None = None
        self._database = database
        self._store = store
        self._personas = personas
        self._mood = mood_detector
        self._generator = generator
        budget = min(prompt_budget(settings), generator.context_window)
        self._prompts = PromptBuilder(generator.count_tokens, budget)
        self._arrivals = TurnQueue()
        self._turns = TurnQueue()
        self._empty_reply_tokens: int | None = None
        self._always_answer: dict[str, bool] = {}

    # -- read-only facts for frontends --------------------------------------------------------

    @property
    def generator_name(self) -> str:
        return self._generator.name

    @property
    def mood_detector_name(self) -> str:
        return self._mood.name

    @property
    def default_persona(self) -> str:
        return self._settings.default_persona

    # -- conversation -------------------------------------------------------------------------

    async def reply(
        self,
        conversation: ConversationRef,
        author: Author,
        text: str,
        *,
        on_partial: PartialReply | None = None,
    ) -> Reply:
        """Store the message, then answer it once earlier messages here have been answered.

        The user's message is committed before generation starts, so a failed or interrupted
        generation loses nothing; the reply is committed as soon as it exists. With
        ``on_partial`` the reply is streamed (see :meth:`_answer`).

        A model failure mid-reply (an exception, CUDA out of memory) reaches the caller as a
        :class:`GenerationError` with a short apology to show the user, while the log gets
        the details and the conversation it happened in; the next message is answered as
        usual. Every call ends in one ``event=reply`` (or ``reply_failed``) log line and in
        the metrics.
        """
        if (
            self._turns.unfinished(conversation.key())
            >= self._settings.max_waiting_per_conversation
        ):
            return await self._measured(conversation, _refused(GeneratorBusyError(BUSY_HERE)))
        return await self._measured(
            conversation, self._answer(conversation, author, text, on_partial=on_partial)
        )

    async def retry(
        self,
        conversation: ConversationRef,
        author: Author,
        *,
        may_retry_others: bool,
        on_partial: PartialReply | None = None,
    ) -> Reply:
        """Write the last reply here again, in place of the old one (/retry).

        The conversation's last message is answered anew: its reply is rewritten in place,
        so the history keeps one answer, not two; a message whose reply failed gets one.
        Only its author may ask, unless ``may_retry_others`` (an admin, or a private chat).
        It takes its turn like a message, so replies being written are finished first.
        """
        return await self._measured(
            conversation,
            self._answer_again(
                conversation, author, may_retry_others=may_retry_others, on_partial=on_partial
            ),
        )

    async def _measured(self, conversation: ConversationRef, work: Awaitable[Reply]) -> Reply:
        """Await a reply with its ``event=reply`` (or ``reply_failed``) log line and metrics."""
        started = time.perf_counter()
        self._in_flight += 1
        self.metrics.queue_depth.inc()
        outcome = "error"
        try:
            result = await work
            outcome = "ok"
        except asyncio.CancelledError:
            outcome = "cancelled"
            log_event("reply_cancelled", conversation=conversation.key())
            raise
        except Exception as exc:
            kind = _error_kind(exc)
            self.metrics.errors.labels(kind).inc()
            log_event(
                "reply_failed",
                logging.INFO if kind == "input" else logging.WARNING,  # a user's typo is no alarm
                conversation=conversation.key(),
                error=kind,
                latency_ms=round((time.perf_counter() - started) * 1000),
                message=str(exc) if isinstance(exc, PersonabotError) else type(exc).__name__,
            )
            raise
        finally:
            self._in_flight -= 1
            self.metrics.queue_depth.dec()
            self.metrics.requests.labels(outcome).inc()
        self._record(conversation, result, time.perf_counter() - started)
        return result

    @property
    def replies_in_flight(self) -> int:
        """Messages accepted and not yet answered (queued or being written)."""
        return self._in_flight

    async def _answer(
        self,
        conversation: ConversationRef,
        author: Author,
        text: str,
        *,
        on_partial: PartialReply | None = None,
    ) -> Reply:
        """Store the message, then answer it once earlier messages here have been answered.

        The user's message is committed before generation starts, so a failed or interrupted
        generation loses nothing; the reply is committed as soon as it exists.

        With ``on_partial`` the reply is streamed: the callback gets the text so far after
        each decoded piece (it must not block; a frontend throttles its own display). The
        returned reply is still the one to show at the end: it may drop a trailing fragment
        the callback saw.
        """
        text = clean_user_text(text, max_chars=self._settings.max_message_chars)
        author = dataclasses.replace(author, display_name=clean_display_name(author.display_name))
        # Two queues, both joined before any await: messages are stored in arrival order, and
        # answered in arrival order, while storing never waits for a slow generation.
        arrival = self._arrivals.join(conversation.key())
        turn = self._turns.join(conversation.key())
        # First in line, nothing can be stored here before this message: the history read
        # now is the prompt's, and reading it again after storing the message is saved.
        first_in_line = turn.first_in_line
        try:
            state = await self._state(conversation)
            earlier = await self._earlier_messages(state)
            mood = await self._detect(text, _last_text(earlier))
            await arrival.wait()
            user_message = await self._store.add_message(
                state.id, role="user", author=author, text=text, mood=mood, persona=state.persona
            )
            arrival.finish()
            if await turn.wait():  # the persona or length may have changed meanwhile
                state = await self._state(conversation)
            persona = self._persona_of(state, conversation.scope)
            if first_in_line:
                history = self._prompt_history(earlier)
                prompt = self._build_prompt(state, persona, mood, history, user_message)
            else:
                prompt, history = await self._prompt_for(state, persona, mood, user_message)
            params = self._sampling(persona, state.length, history, user_message)
            reply_text, generation_seconds = await self._write_reply(
                state, persona, prompt, params, history, user_message, on_partial
            )
            reply_text = await self._with_support_text(
                state, history, user_message, mood, reply_text
            )
            reply_message = await self._store.add_reply(
                state.id,
                author=Author(id="personabot", display_name=persona.display_name),
                text=reply_text,
                persona=persona.name,
                reply_to_id=user_message.id,
            )
        finally:
            arrival.finish()
            turn.finish()
        return _reply(
            reply_text,
            mood,
            persona,
            user_message.id,
            None if reply_message is None else reply_message.id,
            prompt,
            generation_seconds,
        )

    async def _answer_again(
        self,
        conversation: ConversationRef,
        author: Author,
        *,
        may_retry_others: bool,
        on_partial: PartialReply | None,
    ) -> Reply:
        turn = self._turns.join(conversation.key())
        try:
            await turn.wait()
            state = await self._state(conversation)
            question, old = _last_exchange(await self._store.history(state.id, limit=2))
            if question is None:
                raise InputError("There is no reply here to write again yet.")
            if question.author_id != author.id and not may_retry_others:
                raise InputError(
                    f"Only {question.author_name} or an admin can ask me to write my last "
                    "reply again."
                )
            persona = self._persona_of(state, conversation.scope)
            # The question's own thread (it, and the old reply) is not history.
            stored = await self._store.history(
                state.id, limit=self._settings.history_messages + 2, up_to_id=question.id
            )
            history = self._prompt_history(
                [m for m in stored if question.id not in (m.id, m.reply_to_id)]
            )
            mood = (
                UNSURE
                if question.mood is None
                else MoodResult(question.mood, question.mood_confidence or 0.0)
            )
            prompt = self._build_prompt(state, persona, mood, history, question)
            params = _resampled(self._sampling(persona, state.length, history, question), old)
            reply_text, generation_seconds = await self._write_reply(
                state, persona, prompt, params, history, question, on_partial
            )
            speaker = Author(id="personabot", display_name=persona.display_name)
            rewritten = old is not None and await self._store.rewrite_reply(
                old.id, text=reply_text, author=speaker, persona=persona.name
            )
            reply_id = old.id if old is not None and rewritten else None
            if reply_id is None:
                stored_reply = await self._store.add_reply(
                    state.id,
                    author=speaker,
                    text=reply_text,
                    persona=persona.name,
                    reply_to_id=question.id,
                )
                reply_id = None if stored_reply is None else stored_reply.id
        finally:
            turn.finish()
        log_event("retry", conversation=conversation.key(), reply_message=reply_id)
        return _reply(reply_text, mood, persona, question.id, reply_id, prompt, generation_seconds)

    async def _with_support_text(
        self,
        state: ConversationState,
        history: Sequence[StoredMessage],
        current: StoredMessage,
        mood: MoodResult,
        text: str,
    ) -> str:
        """The reply with PERSONABOT_SUPPORT_TEXT after it, for someone sad or afraid past
        PERSONABOT_CARE_AFTER_MESSAGES: once a day per conversation, so it helps without
        nagging."""
        support, after = self._settings.support_text, self._settings.care_after_messages
        if not support or not after:
            return text
        if MoodTrend.of_author(history, current.author_id, mood).distress_run < after:
            return text
        since = datetime.now(UTC) - timedelta(days=1)
        if await self._store.replied_with(state.id, support, since=since):
            return text
        return f"{text}\n\n{support}"

    async def _write_reply(
        self,
        state: ConversationState,
        persona: Persona,
        prompt: Prompt,
        params: SamplingParams,
        history: Sequence[StoredMessage],
        current: StoredMessage,
        on_partial: PartialReply | None,
    ) -> tuple[str, float]:
        """The reply's text and the seconds it took; a failure as the error to show."""
        started = time.perf_counter()
        try:
            text = await self._generate(prompt, params, persona, history, current, on_partial)
        except Exception as exc:
            failure = self._generation_failure(exc, state, persona, current, prompt)
            if failure is exc:
                raise
            raise failure from exc
        return text, time.perf_counter() - started

    def _generation_failure(
        self,
        exc: Exception,
        state: ConversationState,
        persona: Persona,
        current: StoredMessage,
        prompt: Prompt,
    ) -> Exception:
        """Log a failed generation with its context; the error the user should see.

        A GenerationError of our own making with no underlying exception (the generator is
        shut down, the model wrote nothing usable) already says what to do and is kept. Any
        other failure is an internal one, and the user only needs to know it was not their
        fault and that trying again is fine.
        """
        context = (
            f"conversation {state.ref.key()}, message {current.id}, persona {persona.name}, "
            f"prompt {prompt.tokens} tokens, {prompt.history_used} history messages"
        )
        if isinstance(exc, GeneratorBusyError):  # back-pressure, not a fault: no traceback
            log.warning("No reply, the model is busy (%s): %s", context, exc)
            return GeneratorBusyError(BUSY)
        if isinstance(exc, GenerationError) and exc.__cause__ is None:
            log.warning("No reply (%s): %s", context, exc)
            return exc
        out_of_memory = _out_of_memory(exc)
        log.error(
            "Generation failed%s (%s): %s: %s",
            " (out of memory)" if out_of_memory else "",
            context,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        return GenerationError(APOLOGY_OUT_OF_MEMORY if out_of_memory else APOLOGY)

    def _record(self, conversation: ConversationRef, reply: Reply, latency: float) -> None:
        """One ``event=reply`` log line and the metrics for an answered message."""
        tokens = self._reply_tokens(reply.text)
        generation = reply.extra.get("generation_seconds")
        seconds = generation if isinstance(generation, float) and generation > 0 else None
        rate = tokens / seconds if seconds else None
        self.metrics.latency.observe(latency)
        self.metrics.tokens.inc(tokens)
        if seconds is not None and rate is not None:
            self.metrics.generation.observe(seconds)
            self.metrics.tokens_per_second.observe(rate)
        log_event(
            "reply",
            conversation=conversation.key(),
            persona=reply.persona,
            mood=reply.mood.mood.value,
            mood_confidence=round(reply.mood.confidence, 3),
            latency_ms=round(latency * 1000),
            generation_ms=None if seconds is None else round(seconds * 1000),
            prompt_tokens=reply.prompt_tokens,
            completion_tokens=tokens,
            tokens_per_s=None if rate is None else round(rate, 1),
            history_messages=reply.history_messages_used,
            user_message=reply.user_message_id,
            reply_message=reply.reply_message_id,
        )

    def _reply_tokens(self, text: str) -> int:
        """Tokens of a reply in the model's own tokenizer (template overhead removed).

        Counted as the answer to an empty user turn: strict templates (Mistral's) reject a
        chat that opens with the assistant.
        """
        try:
            question = ChatMessage("user", "")
            if self._empty_reply_tokens is None:  # the same for every reply: counted once
                empty = [question, ChatMessage("assistant", "")]
                self._empty_reply_tokens = self._generator.count_tokens(empty)
            reply = [question, ChatMessage("assistant", text)]
            return max(0, self._generator.count_tokens(reply) - self._empty_reply_tokens)
        except Exception:  # statistics must never cost a reply
            log.debug("Counting reply tokens failed.", exc_info=True)
            return 0

    async def preview_prompt(
        self, conversation: ConversationRef, author: Author, text: str
    ) -> Prompt:
        """The prompt a message would get now, without storing or generating anything."""
        text = clean_user_text(text, max_chars=self._settings.max_message_chars)
        state = await self._state(conversation)
        earlier = await self._earlier_messages(state)
        mood = await self._detect(text, _last_text(earlier))
        persona = self._persona_of(state, conversation.scope)
        draft = StoredMessage(
            id=0,
            role="user",
            author_id=author.id,
            author_name=clean_display_name(author.display_name),
            text=text,
            mood=mood.mood,
            persona=persona.name,
            created_at=datetime.now(UTC),
        )
        return self._build_prompt(state, persona, mood, self._prompt_history(earlier), draft)

    async def history(self, conversation: ConversationRef, limit: int = 50) -> list[StoredMessage]:
        state = await self._state(conversation)
        return await self._store.history(state.id, limit=limit)

    async def always_answer(self, conversation: ConversationRef) -> bool:
        """Whether a chat frontend answers every message here, not only those addressed to it.

        Reading it never creates the conversation, so frontends may ask for every message.
        It is read from the database once per conversation, in one attempt, and then kept
        in memory (it changes only through :meth:`set_always_answer`): a busy server must
        not cost a query per message, nor park every message in the outage retries.
        """
        key = conversation.key()
        known = self._always_answer.get(key)
        if known is None:
            known = self._always_answer[key] = await self._store.always_answer(conversation)
        return known

    async def set_always_answer(self, conversation: ConversationRef, always: bool) -> None:
        await self._store.set_always_answer(
            conversation, always, default_persona=self._settings.default_persona
        )
        self._always_answer[conversation.key()] = always

    async def reset(self, conversation: ConversationRef) -> int:
        """Forget the conversation's messages (persona and length stay); returns how many.

        It takes its turn like a message: a reply being written here is finished and stored
        first, then deleted with the rest, instead of failing to store after the reset.
        """
        turn = self._turns.join(conversation.key())
        try:
            await turn.wait()
            state = await self._state(conversation)
            removed = await self._store.clear_history(state.id)
        finally:
            turn.finish()
        self.metrics.purged.labels("reset").inc(removed)
        log_event("reset", conversation=conversation.key(), deleted=removed)
        return removed

    async def forget(
        self,
        author: Author,
        conversation: ConversationRef | None = None,
        *,
        platform: str | None = None,
    ) -> int:
        """Delete every message ``author`` wrote, and the replies to them; returns how many.

        The privacy command (/forget): in one ``conversation``, or with ``platform`` instead
        in every conversation on that platform (user ids are unique per platform only).
        Other people's messages and the conversation's settings stay. In a conversation it
        takes its turn like a message, so a reply still being written to this person is
        finished and then deleted with the rest rather than stored afterwards.
        """
        if (conversation is None) == (platform is None):
            raise ValueError("forget() needs exactly one of conversation and platform")
        if conversation is None:
            assert platform is not None
            removed = await self._store.forget_author(author.id, platform=platform)
            scope = f"{platform}:*"
        else:
            turn = self._turns.join(conversation.key())
            try:
                await turn.wait()
                found = await self._store.find(conversation)
                removed = (
                    0
                    if found is None
                    else await self._store.forget_author(author.id, conversation_id=found.id)
                )
            finally:
                turn.finish()
            scope = conversation.key()
        self.metrics.purged.labels("forget").inc(removed)
        log_event("forget", conversation=scope, deleted=removed)
        return removed

    async def move(self, old: ConversationRef, new: ConversationRef) -> bool:
        """A platform gave a conversation a new id (a Telegram group became a supergroup):
        its persona, length, answer mode, history and its community's own personas follow.
        Waits for replies being written in it first. False when ``old`` was never used."""
        turn = self._turns.join(old.key())
        try:
            await turn.wait()
            moved = await self._store.move_conversation(old, new)
            if old.scope != new.scope:
                await self._store.move_scope(old.scope, new.scope)
                self._personas.move_scope(old.scope, new.scope)
        finally:
            turn.finish()
        self._always_answer.pop(old.key(), None)
        self._always_answer.pop(new.key(), None)
        log_event("move", conversation=old.key(), to=new.key(), moved=moved)
        return moved

    async def purge_expired(self) -> int:
        """Delete history older than PERSONABOT_HISTORY_RETENTION_DAYS; returns how many."""
        days = self._settings.history_retention_days
        if days is None:
            return 0
        removed = await self._store.purge_before(datetime.now(UTC) - timedelta(days=days))
        self.metrics.purged.labels("retention").inc(removed)
        log_event("retention_purge", deleted=removed, older_than_days=days)
        return removed

    def start_maintenance(self) -> None:
        """Start deleting expired history every hour, when a retention period is set.

        A failed run is logged and tried again at the next interval: a database that is
        briefly away must not stop the bot.
        """
        if self._settings.history_retention_days is None or self._maintenance is not None:
            return

        async def maintain() -> None:
            while True:
                await asyncio.sleep(RETENTION_INTERVAL_SECONDS)
                try:
                    await self.purge_expired()
                except PersonabotError as exc:
                    log.warning("Deleting expired history failed (%s); will try again.", exc)

        self._maintenance = asyncio.create_task(maintain(), name="personabot-retention")

    # -- personas and settings per conversation ----------------------------------------------

    def personas(self, conversation: ConversationRef | None = None) -> list[Persona]:
        """The personas usable in ``conversation``: the global ones, its community's own
        and private ones granted to it; without one, every global persona (the operator's
        view)."""
        return self._personas.all(_scope(conversation))

    def persona_named(self, name: str, conversation: ConversationRef | None = None) -> Persona:
        return self._personas.get(name, _scope(conversation))

    async def persona(self, conversation: ConversationRef) -> Persona:
        return self._persona_of(await self._state(conversation), conversation.scope)

    async def set_persona(self, conversation: ConversationRef, name: str) -> Persona:
        # Raises UnknownPersonaError listing the names usable here.
        persona = self._personas.get(name, conversation.scope)
        await self._store.set_persona(
            conversation, persona.name, default_persona=self._settings.default_persona
        )
        return persona

    async def set_length(
        self, conversation: ConversationRef, length: str | LengthPreset
    ) -> LengthPreset:
        preset = LengthPreset.parse(length) if isinstance(length, str) else length
        await self._store.set_length(
            conversation, preset, default_persona=self._settings.default_persona
        )
        return preset

    async def length(self, conversation: ConversationRef) -> LengthPreset:
        return (await self._state(conversation)).length

    async def create_persona(
        self,
        persona: Persona,
        created_by: str | None = None,
        *,
        conversation: ConversationRef | None = None,
    ) -> None:
        """Store a user-made persona in ``conversation``'s community, and serve it at once.

        It is listed and usable only there (without a conversation: everywhere, the
        operator's). Its name may not hide a global persona's. At most
        PERSONABOT_MAX_USER_PERSONAS per community: each is listed, suggested and kept in
        memory, so creating them must not be a way to flood the bot.
        """
        scope = _scope(conversation)
        if scope != GLOBAL and self._personas.is_global_name(persona.name):
            raise InputError(
                f"{persona.name!r} is the name of a persona every community has; pick another name."
            )
        limit = self._settings.max_user_personas
        if scope == GLOBAL:
            made = [n for n in self._personas.names() if self._personas.is_user_defined(n)]
        else:
            made = [p.name for p in self._personas.scoped(scope)]
        if persona.name not in made and len(made) >= limit:
            raise InputError(
                f"There are already {len(made)} personas made here, the most allowed "
                f"(PERSONABOT_MAX_USER_PERSONAS={limit}). Delete one first."
            )
        await self._store.save_persona(persona.name, persona.to_json(), created_by, scope)
        self._personas.add(persona, scope)

    async def delete_persona(self, name: str, conversation: ConversationRef | None = None) -> bool:
        """Delete a persona made in ``conversation``'s community (without a conversation: a
        global user-made one); built-in and folder personas, and another community's,
        cannot be deleted from here."""
        scope = _scope(conversation)
        persona = self._personas.get(name, scope)
        if self._personas.scope_of(persona.name, scope) != scope:
            raise InputError(
                f"{persona.name!r} was not made here with /persona create, so it cannot be "
                "deleted here."
            )
        if not self._personas.is_user_defined(persona.name, scope):
            raise InputError(
                f"{persona.name!r} is not a user-made persona, so it cannot be deleted."
            )
        removed = await self._store.delete_persona(persona.name, scope)
        if removed:
            self._personas.remove(persona.name, scope)
        return removed

    async def detect_mood(self, text: str) -> MoodResult:
        text = clean_user_text(text, max_chars=self._settings.max_message_chars)
        return await self._detect(text, None)

    async def aclose(self) -> None:
        """Stop background work, release the model and flush and close the database."""
        if self._maintenance is not None:
            self._maintenance.cancel()
            await asyncio.gather(self._maintenance, return_exceptions=True)
            self._maintenance = None
        await asyncio.to_thread(self.metrics.close)
        await self._generator.aclose()
        await self._database.close()

    # -- internals ----------------------------------------------------------------------------

    async def _state(self, conversation: ConversationRef) -> ConversationState:
        return await self._store.get_or_create(
            conversation, default_persona=self._settings.default_persona
        )

    def _persona_of(self, state: ConversationState, scope: str) -> Persona:
        if self._personas.scope_of(state.persona, scope) is not None:
            return self._personas.get(state.persona, scope)
        log.warning(
            "Conversation %s uses persona %r, which no longer exists here; using %r.",
            state.ref.key(),
            state.persona,
            self._settings.default_persona,
        )
        return self._personas.get(self._settings.default_persona)

    async def _earlier_messages(self, state: ConversationState) -> list[StoredMessage]:
        """The conversation's last messages, as both the mood detector and the prompt need
        them, in one read: at least one (the text a mood is read against), else
        PERSONABOT_HISTORY_MESSAGES of them."""
        return await self._store.history(state.id, limit=max(1, self._settings.history_messages))

    def _prompt_history(self, earlier: Sequence[StoredMessage]) -> list[StoredMessage]:
        """The part of ``earlier`` (oldest first) a prompt may use."""
        keep = self._settings.history_messages
        return list(earlier[-keep:]) if keep else []

    async def _detect(self, text: str, previous: str | None) -> MoodResult:
        """A broken mood detector must not cost the user their reply."""
        try:
            return await self._mood.detect(text, previous)
        except Exception:
            log.exception("Mood detector %s failed; treating the mood as unknown.", self._mood.name)
            return UNSURE

    async def _prompt_for(
        self,
        state: ConversationState,
        persona: Persona,
        mood: MoodResult,
        current: StoredMessage,
    ) -> tuple[Prompt, list[StoredMessage]]:
        stored = await self._store.history(
            state.id, limit=self._settings.history_messages + 1, up_to_id=current.id
        )
        history = self._prompt_history([m for m in stored if m.id != current.id])
        return self._build_prompt(state, persona, mood, history, current), history

    def _build_prompt(
        self,
        state: ConversationState,
        persona: Persona,
        mood: MoodResult,
        history: Sequence[StoredMessage],
        current: StoredMessage,
    ) -> Prompt:
        return self._prompts.build(
            persona=persona,
            mood=mood,
            length=state.length,
            history=history,
            current=current,
            max_new_tokens=persona.sampling(state.length).max_new_tokens,
            care_after=self._settings.care_after_messages,
        )

    def _sampling(
        self,
        persona: Persona,
        length: LengthPreset,
        history: Sequence[StoredMessage],
        current: StoredMessage,
    ) -> SamplingParams:
        names = {m.author_name for m in (*history, current) if m.role == "user"}
        return dataclasses.replace(
            persona.sampling(length),
            stop=speaker_stop_strings(sorted(names)),
            seed=self._settings.seed,
        )

    async def _generate(
        self,
        prompt: Prompt,
        params: SamplingParams,
        persona: Persona,
        history: Sequence[StoredMessage],
        current: StoredMessage,
        on_partial: PartialReply | None = None,
    ) -> str:
        user_names = sorted({m.author_name for m in (*history, current) if m.role == "user"})
        tidy = ReplyCleaner(
            user_names=user_names, assistant_names=(persona.display_name, persona.name)
        )

        for attempt in range(2):
            if on_partial is not None and attempt == 0:
                raw, completion_tokens = await self._stream(prompt, params, on_partial, tidy)
                slack = max(2, round(params.max_new_tokens * _STREAM_BUDGET_SLACK_FRACTION))
                budget = params.max_new_tokens - slack
            else:  # a second attempt is not streamed: the frontend shows its result at once
                generation = await self._generator.generate(prompt.messages, params)
                raw, completion_tokens = generation.text, generation.completion_tokens
                budget = params.max_new_tokens
            text = tidy(raw)
            if completion_tokens >= budget:
                text = trim_to_last_sentence(text)  # cut by the budget, not finished
            if text:
                return text
            log.info("Empty reply after cleaning (attempt %d); sampling again.", attempt + 1)
            params = dataclasses.replace(
                params,
                seed=None if params.seed is None else params.seed + 1,
                temperature=max(params.temperature, 0.7),
            )
        raise GenerationError("The model produced no usable reply. Please try rephrasing.")

    async def _stream(
        self,
        prompt: Prompt,
        params: SamplingParams,
        on_partial: PartialReply,
        tidy: Callable[[str], str],
    ) -> tuple[str, int]:
        """Generate while reporting progress; returns the raw text and its token count.

        The generator's stream yields text, not tokens, so the count comes from tokenising
        the reply on its own (:meth:`_reply_tokens`). Counting it in context, after the
        whole prompt, gave the same count for all 290 DailyDialog validation replies tried
        with SmolLM2's tokenizer (and the budget check allows for a token or two), but it
        rendered and tokenised the prompt twice more per reply, on the event loop, just as
        a burst of replies ends together and the next messages wait for the loop.
        """
        pieces: list[str] = []
        async for piece in self._generator.stream(prompt.messages, params):
            pieces.append(piece)
            try:
                on_partial(tidy("".join(pieces)))
            except Exception:  # showing progress is a nicety; it must not cost the reply
                log.exception("The partial-reply callback failed; generation goes on.")
        raw = "".join(pieces)
        return raw, self._reply_tokens(raw)


def _reply(
    text: str,
    mood: MoodResult,
    persona: Persona,
    user_message_id: int,
    reply_message_id: int | None,
    prompt: Prompt,
    generation_seconds: float,
) -> Reply:
    return Reply(
        text=text,
        mood=mood,
        persona=persona.name,
        user_message_id=user_message_id,
        reply_message_id=reply_message_id,
        prompt_tokens=prompt.tokens,
        history_messages_used=prompt.history_used,
        extra={"generation_seconds": generation_seconds},
    )


async def _refused(error: Exception) -> Reply:
    """A reply that fails at once, measured like any other."""
    raise error


def _scope(conversation: ConversationRef | None) -> str:
    return GLOBAL if conversation is None else conversation.scope


def _last_exchange(
    latest: Sequence[StoredMessage],
) -> tuple[StoredMessage | None, StoredMessage | None]:
    """The last user message of the newest messages (oldest first), and its reply if any."""
    if not latest:
        return None, None
    last = latest[-1]
    if last.role == "user":
        return last, None
    question = next((m for m in latest if m.id == last.reply_to_id), None)
    return (question, last) if question is not None else (None, None)


def _resampled(params: SamplingParams, old: StoredMessage | None) -> SamplingParams:
    """Sampling for a retry: it must not write the same reply again.

    The seed moves on from the old reply's text, so retries stay reproducible under
    PERSONABOT_SEED yet differ each time; a persona that decodes nearly greedily samples.
    """
    seed = params.seed
    if seed is not None and old is not None:
        seed = (seed + zlib.crc32(old.text.encode())) % 2**31
    return dataclasses.replace(
        params, seed=seed, temperature=max(params.temperature, RETRY_MIN_TEMPERATURE)
    )


def _last_text(messages: Sequence[StoredMessage]) -> str | None:
    return messages[-1].text if messages else None


def _out_of_memory(exc: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError, or any error saying so, anywhere in the cause chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if type(current).__name__ == "OutOfMemoryError" or "out of memory" in str(current).lower():
            return True
        current = current.__cause__ or current.__context__
    return False


def _error_kind(exc: BaseException) -> str:
    """The ``kind`` label of the errors metric and the reply_failed event."""
    if isinstance(exc, GeneratorBusyError):
        return "busy"
    if isinstance(exc, GenerationError):
        return "generation"
    if isinstance(exc, StorageError):
        return "storage"
    if isinstance(exc, InputError):
        return "input"
    return "other"
