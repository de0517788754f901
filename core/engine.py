"""The engine: the small async API every frontend talks to.

A frontend translates a platform event into ``reply(conversation, author, text)`` and sends
back what it returns; personas, moods, history and generation all live behind this class.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from core.errors import GenerationError, InputError
from core.generation.base import Generator
from core.generation.profiles import prompt_budget
from core.mood import MoodDetector
from core.ordering import TurnQueue
from core.personas import Persona, PersonaCatalog
from core.prompting import Prompt, PromptBuilder
from core.settings import Settings
from core.storage import ConversationState, ConversationStore, Database
from core.text import (
    clean_model_output,
    clean_user_text,
    speaker_stop_strings,
    trim_to_last_sentence,
)
from core.types import (
    Author,
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
    ) -> None:
        self._settings = settings
        self._database = database
        self._store = store
        self._personas = personas
        self._mood = mood_detector
        self._generator = generator
        budget = min(prompt_budget(settings), generator.context_window)
        self._prompts = PromptBuilder(generator.count_tokens, budget)
        self._arrivals = TurnQueue()
        self._turns = TurnQueue()

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

    async def reply(self, conversation: ConversationRef, author: Author, text: str) -> Reply:
        """Store the message, then answer it once earlier messages here have been answered.

        The user's message is committed before generation starts, so a failed or interrupted
        generation loses nothing; the reply is committed as soon as it exists.
        """
        text = clean_user_text(text, max_chars=self._settings.max_message_chars)
        # Two queues, both joined before any await: messages are stored in arrival order, and
        # answered in arrival order, while storing never waits for a slow generation.
        arrival = self._arrivals.join(conversation.key())
        turn = self._turns.join(conversation.key())
        try:
            state = await self._state(conversation)
            mood = await self._detect(text, await self._previous_text(state))
            await arrival.wait()
            user_message = await self._store.add_message(
                state.id, role="user", author=author, text=text, mood=mood, persona=state.persona
            )
            arrival.finish()
            await turn.wait()
            state = await self._state(conversation)  # persona/length may have changed meanwhile
            persona = self._persona_of(state)
            prompt, history = await self._prompt_for(state, persona, mood, user_message)
            params = self._sampling(persona, state.length, history, user_message)
            reply_text = await self._generate(prompt, params, persona, history, user_message)
            reply_message = await self._store.add_message(
                state.id,
                role="assistant",
                author=Author(id="personabot", display_name=persona.display_name),
                text=reply_text,
                persona=persona.name,
                reply_to_id=user_message.id,
            )
        finally:
            arrival.finish()
            turn.finish()
        return Reply(
            text=reply_text,
            mood=mood,
            persona=persona.name,
            user_message_id=user_message.id,
            reply_message_id=reply_message.id,
            prompt_tokens=prompt.tokens,
            history_messages_used=prompt.history_used,
        )

    async def preview_prompt(
        self, conversation: ConversationRef, author: Author, text: str
    ) -> Prompt:
        """The prompt a message would get now, without storing or generating anything."""
        text = clean_user_text(text, max_chars=self._settings.max_message_chars)
        state = await self._state(conversation)
        mood = await self._detect(text, await self._previous_text(state))
        persona = self._persona_of(state)
        draft = StoredMessage(
            id=0,
            role="user",
            author_id=author.id,
            author_name=author.display_name,
            text=text,
            mood=mood.mood,
            persona=persona.name,
            created_at=datetime.now(UTC),
        )
        history = await self._store.history(state.id, limit=self._settings.history_messages)
        return self._build_prompt(state, persona, mood, history, draft)

    async def history(self, conversation: ConversationRef, limit: int = 50) -> list[StoredMessage]:
        state = await self._state(conversation)
        return await self._store.history(state.id, limit=limit)

    async def reset(self, conversation: ConversationRef) -> int:
        """Forget the conversation's messages (persona and length stay); returns how many."""
        state = await self._state(conversation)
        return await self._store.clear_history(state.id)

    # -- personas and settings per conversation ----------------------------------------------

    def personas(self) -> list[Persona]:
        return self._personas.all()

    def persona_named(self, name: str) -> Persona:
        return self._personas.get(name)

    async def persona(self, conversation: ConversationRef) -> Persona:
        return self._persona_of(await self._state(conversation))

    async def set_persona(self, conversation: ConversationRef, name: str) -> Persona:
        persona = self._personas.get(name)  # raises UnknownPersonaError listing valid names
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

    async def create_persona(self, persona: Persona, created_by: str | None = None) -> None:
        """Store a user-made persona so it survives restarts, and serve it at once."""
        await self._store.save_persona(persona.name, persona.to_json(), created_by)
        self._personas.add(persona)

    async def delete_persona(self, name: str) -> bool:
        """Delete a user-made persona; built-in and folder personas cannot be deleted."""
        persona = self._personas.get(name)
        if not self._personas.is_user_defined(persona.name):
            raise InputError(
                f"{persona.name!r} is not a user-made persona, so it cannot be deleted."
            )
        removed = await self._store.delete_persona(persona.name)
        if removed:
            self._personas.remove(persona.name)
        return removed

    async def detect_mood(self, text: str) -> MoodResult:
        text = clean_user_text(text, max_chars=self._settings.max_message_chars)
        return await self._detect(text, None)

    async def aclose(self) -> None:
        await self._generator.aclose()
        await self._database.close()

    # -- internals ----------------------------------------------------------------------------

    async def _state(self, conversation: ConversationRef) -> ConversationState:
        return await self._store.get_or_create(
            conversation, default_persona=self._settings.default_persona
        )

    def _persona_of(self, state: ConversationState) -> Persona:
        if state.persona in self._personas:
            return self._personas.get(state.persona)
        log.warning(
            "Conversation %s uses persona %r, which no longer exists; using %r.",
            state.ref.key(),
            state.persona,
            self._settings.default_persona,
        )
        return self._personas.get(self._settings.default_persona)

    async def _previous_text(self, state: ConversationState) -> str | None:
        last = await self._store.history(state.id, limit=1)
        return last[-1].text if last else None

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
        history = [m for m in stored if m.id != current.id][-self._settings.history_messages :]
        if self._settings.history_messages == 0:
            history = []
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
    ) -> str:
        user_names = sorted({m.author_name for m in (*history, current) if m.role == "user"})
        for attempt in range(2):
            generation = await self._generator.generate(prompt.messages, params)
            text = clean_model_output(
                generation.text,
                user_names=user_names,
                assistant_names=(persona.display_name, persona.name),
            )
            if generation.completion_tokens >= params.max_new_tokens:
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
