"""Prompt building with the real tokenizer and chat template of the offline model."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal

from core.generation.local.transformers_generator import TransformersGenerator
from core.personas import load_builtin_personas
from core.prompting import PromptBuilder, fold_system_prompt, normalise_turns
from core.types import ChatMessage, LengthPreset, Mood, MoodResult, StoredMessage

NOW = datetime.now(UTC)


def stored(
    i: int, role: Literal["user", "assistant"], text: str, author: str = "Alice"
) -> StoredMessage:
    return StoredMessage(
        id=i,
        role=role,
        author_id=author,
        author_name=author,
        text=text,
        mood=None,
        persona=None,
        created_at=NOW,
    )


def test_fold_system_prompt_into_first_user_turn() -> None:
    folded = fold_system_prompt(
        [
            ChatMessage("system", "Be a pirate."),
            ChatMessage("user", "Hi"),
            ChatMessage("assistant", "Arr"),
            ChatMessage("user", "Bye"),
        ]
    )
    assert [m.role for m in folded] == ["user", "assistant", "user"]
    assert folded[0].content == "Be a pirate.\n\nHi"


def test_normalise_turns_merges_and_drops_leading_assistant() -> None:
    turns = normalise_turns(
        [
            ChatMessage("system", "s"),
            ChatMessage("assistant", "orphan"),
            ChatMessage("user", "a"),
            ChatMessage("user", "b"),
            ChatMessage("assistant", "c"),
        ]
    )
    assert turns == [
        ChatMessage("system", "s"),
        ChatMessage("user", "a\nb"),
        ChatMessage("assistant", "c"),
    ]


def test_history_is_fitted_to_the_token_budget(offline_generator: TransformersGenerator) -> None:
    persona = {p.name: p for p in load_builtin_personas()}["pirate"]
    history = []
    for i in range(0, 120, 2):
        history.append(stored(i, "user", f"Question {i}: what do you think of ships and seas?"))
        history.append(stored(i + 1, "assistant", f"Answer {i}: ships are grand, matey, aye."))
    builder = PromptBuilder(offline_generator.count_tokens, budget_tokens=600)
    prompt = builder.build(
        persona=persona,
        mood=MoodResult(Mood.SADNESS, 0.9),
        length=LengthPreset.SHORT,
        history=history,
        current=stored(999, "user", "Latest question?"),
        max_new_tokens=100,
    )
    assert prompt.tokens <= 500
    assert 0 < prompt.history_used < len(history)
    assert prompt.tokens == offline_generator.count_tokens(prompt.messages)
    assert prompt.messages[-1] == ChatMessage("user", "Latest question?")
    # The most recent history is what is kept.
    assert "Answer 118" in prompt.messages[-2].content
    assert all("Question 0:" not in m.content for m in prompt.messages)
    system = prompt.messages[0].content
    assert persona.system_prompt.strip() in system and "sadness" in system
    # One more message would not have fitted.
    bigger = PromptBuilder(offline_generator.count_tokens, budget_tokens=10_000).build(
        persona=persona,
        mood=MoodResult(Mood.SADNESS, 0.9),
        length=LengthPreset.SHORT,
        history=history,
        current=stored(999, "user", "Latest question?"),
        max_new_tokens=100,
    )
    assert bigger.history_used == len(history)
    assert bigger.tokens == offline_generator.count_tokens(bigger.messages)


def test_a_history_that_fits_whole_costs_one_count(
    offline_generator: TransformersGenerator,
) -> None:
    """Each count renders the template and tokenises the prompt on the event loop; a
    bisection for a history that fits anyway cost six of them per message."""
    calls: list[int] = []

    def count(messages: Sequence[ChatMessage]) -> int:
        calls.append(len(messages))
        return offline_generator.count_tokens(messages)

    history = [
        stored(i, "user" if i % 2 == 0 else "assistant", f"Line {i} of a chat.") for i in range(20)
    ]
    prompt = PromptBuilder(count, budget_tokens=2000).build(
        persona=load_builtin_personas()[0],
        mood=MoodResult(Mood.HAPPINESS, 0.9),
        length=LengthPreset.MEDIUM,
        history=history,
        current=stored(99, "user", "And now?"),
        max_new_tokens=100,
    )
    assert prompt.history_used == 20 and len(calls) == 1
    assert prompt.tokens == offline_generator.count_tokens(prompt.messages)


def test_group_history_names_speakers(offline_generator: TransformersGenerator) -> None:
    persona = load_builtin_personas()[0]
    builder = PromptBuilder(offline_generator.count_tokens, budget_tokens=2000)
    prompt = builder.build(
        persona=persona,
        mood=MoodResult(Mood.NO_EMOTION, 0.9),
        length=LengthPreset.MEDIUM,
        history=[stored(1, "user", "I like tea.", "Alice"), stored(2, "assistant", "Nice!")],
        current=stored(3, "user", "I prefer coffee.", "Bob"),
        max_new_tokens=50,
    )
    assert prompt.messages[1].content == "Alice: I like tea."
    assert prompt.messages[-1].content == "Bob: I prefer coffee."
    assert "Several people" in prompt.messages[0].content


def test_low_confidence_mood_is_not_asserted(offline_generator: TransformersGenerator) -> None:
    persona = load_builtin_personas()[0]
    builder = PromptBuilder(offline_generator.count_tokens, budget_tokens=2000)
    prompt = builder.build(
        persona=persona,
        mood=MoodResult(Mood.ANGER, 0.1),
        length=LengthPreset.MEDIUM,
        history=[],
        current=stored(1, "user", "ok"),
        max_new_tokens=50,
    )
    assert "anger" not in prompt.messages[0].content
