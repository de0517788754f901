"""The model failing mid-reply: an apology for the user, the details for the log, and on.

The failure is injected where it really happens, in the torch model's forward pass (the
third-party edge), after the reply has started: the product's generator, its error
handling and the engine run unchanged. ``torch.cuda.OutOfMemoryError`` is what a GPU that
ran out of memory raises; it can be raised on a CPU too.
"""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import torch

from bots.terminal import TerminalChat
from core.bootstrap import build_engine
from core.engine import APOLOGY, APOLOGY_OUT_OF_MEMORY, Engine
from core.errors import GenerationError
from core.generation.local.transformers_generator import TransformersGenerator
from core.types import Author, ConversationRef
from tests.conftest import SettingsFactory
from tests.test_reliability import terse_settings

ALICE = Author("u1", "Alice")
HERE = ConversationRef("test", "faults")


class FailingForward:
    """Raises ``error`` on the model's Nth forward pass from now on, once; else computes."""

    def __init__(self, model: Any, error: BaseException, on_call: int) -> None:
        self._forward: Callable[..., Any] = model.forward
        self._error = error
        self._on_call = on_call
        self.calls = 0
        self.raised = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls == self._on_call and not self.raised:
            self.raised = True
            raise self._error
        return self._forward(*args, **kwargs)


def innermost(model: Any) -> Any:
    """The transformers model under any peft wrapper: the one whose forward does the work.

    The offline profile serves the shipped LoRA adapter, so the generator's model is a
    PeftModel whose own ``forward`` is bypassed by ``generate``.
    """
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


@pytest.fixture
async def engine(
    make_settings: SettingsFactory, offline_generator: TransformersGenerator
) -> AsyncIterator[Engine]:
    # A generator of its own over the session's weights, so closing it closes nothing shared.
    generator = TransformersGenerator(
        offline_generator._model,
        offline_generator._tokenizer,
        offline_generator._spec,
        offline_generator._system_role,
    )
    built = await build_engine(terse_settings(make_settings), generator=generator)
    yield built
    await built.aclose()


@pytest.mark.parametrize(
    ("error", "apology"),
    [
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "memory"),
        (RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED when calling cublasGemmEx"), "generic"),
    ],
    ids=["out-of-memory", "runtime-error"],
)
async def test_a_failure_mid_reply_is_an_apology_and_the_next_message_works(
    engine: Engine,
    offline_generator: TransformersGenerator,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    error: BaseException,
    apology: str,
) -> None:
    await engine.reply(HERE, ALICE, "Hello there.")
    model = innermost(offline_generator._model)
    # Call 1 encodes the prompt, call 2 decodes the second token: the reply has begun.
    failing = FailingForward(model, error, on_call=2)
    monkeypatch.setattr(model, "forward", failing)

    with (
        caplog.at_level(logging.ERROR, logger="core.engine"),
        pytest.raises(GenerationError) as caught,
    ):
        await engine.reply(HERE, ALICE, "Tell me something nice.")

    assert failing.raised
    expected = APOLOGY_OUT_OF_MEMORY if apology == "memory" else APOLOGY
    assert str(caught.value) == expected
    assert "Error" not in str(caught.value) and "CUDA" not in str(caught.value)
    [record] = [r for r in caplog.records if r.name == "core.engine"]
    logged = record.getMessage()
    assert "conversation test:faults" in logged and "persona terse" in logged
    assert "out of memory" in logged if apology == "memory" else "out of memory" not in logged
    assert record.exc_info is not None  # the traceback is in the log, not in the chat
    history = await engine.history(HERE)
    assert [(m.role, m.text) for m in history][-1] == ("user", "Tell me something nice.")

    reply = await engine.reply(HERE, ALICE, "Are you there?")
    assert reply.text
    assert [m.role for m in await engine.history(HERE)] == [
        "user",
        "assistant",
        "user",
        "user",
        "assistant",
    ]
    failures = engine.metrics.errors.labels("generation")._value.get()
    assert failures == 1


async def test_the_terminal_shows_the_apology_as_an_error_line(
    engine: Engine, offline_generator: TransformersGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = innermost(offline_generator._model)
    error = torch.cuda.OutOfMemoryError("CUDA out of memory.")
    monkeypatch.setattr(model, "forward", FailingForward(model, error, on_call=2))
    chat = TerminalChat(
        engine,
        conversation=HERE,
        author=ALICE,
        stdin=io.StringIO(),
        stdout=io.StringIO(),
        interactive=False,
    )

    line = await chat.handle("Write me a poem.")

    assert (line.kind, line.text) == ("error", APOLOGY_OUT_OF_MEMORY)
    assert (await chat.handle("And now?")).kind == "reply"


async def test_retry_answers_the_message_whose_reply_failed(
    engine: Engine, offline_generator: TransformersGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = innermost(offline_generator._model)
    error = RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED")
    monkeypatch.setattr(model, "forward", FailingForward(model, error, on_call=2))
    with pytest.raises(GenerationError):
        await engine.reply(HERE, ALICE, "Are you there?")
    assert [m.role for m in await engine.history(HERE)] == ["user"]

    again = await engine.retry(HERE, ALICE, may_retry_others=False)
    stored = await engine.history(HERE)
    assert [m.role for m in stored] == ["user", "assistant"]
    assert stored[1].text == again.text and stored[1].reply_to_id == stored[0].id
