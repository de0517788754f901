"""Generation on an OpenAI-compatible HTTP server: vLLM, llama.cpp's server, Ollama, TGI.

A deployment that outgrows one GPU, or already runs a serving engine, moves generation
there while the bots stay where they are. The engine does not notice: this is the same
:class:`~core.generation.generator.Generator` port, spoken over ``/v1/chat/completions``.

Why httpx and not the ``openai`` package: the extra sampling fields vLLM and llama.cpp
accept (``top_k``, the repetition penalty) and the non-OpenAI endpoints read at start-up
(llama.cpp's ``/props``) are outside that client's typed surface anyway, its own retry
layer would have to be switched off to keep ours (which retries only before the first
token), and httpx is already installed with python-telegram-bot. httpx-sse parses the
event stream.

Failures the user cannot act on (the server is down, overloaded or answers an error) are
raised as :class:`GenerationError` *with a cause*, so the engine logs the details and shows
the user its apology; the next message tries again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Literal

import httpx
from httpx_sse import EventSource, SSEError

from core.errors import ConfigError, GenerationError
from core.generation.generator import Generation
from core.generation.remote.chat_token_counter import ChatTokenCounter, load_token_counter
from core.redaction import redact
from core.settings import Settings
from core.types import ChatMessage, SamplingParams

log = logging.getLogger(__name__)

DEFAULT_CONTEXT_WINDOW = 2048
"""Used when neither the settings nor the server say: small enough for any server's default
(llama.cpp and Ollama start with 2048-4096 tokens)."""
BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 8.0
MAX_RETRY_AFTER_SECONDS = 30.0
RETRY_STATUSES = frozenset({429, 503})
_CONNECT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout)
_DETAIL_CHARS = 300

Dialect = Literal["vllm", "llama.cpp", "unknown"]


class ServerReplyError(Exception):
    """What the server itself said went wrong; kept as a GenerationError's cause for the log."""


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What the server tells about itself at start-up."""

    models: tuple[str, ...]
    context_windows: dict[str, int]
    """Context length per listed model, where the server gives one (vLLM's max_model_len)."""
    props_context: int | None
    """llama.cpp's ``/props`` n_ctx: the context of every request on that server."""
    dialect: Dialect


def _server_root(base_url: str) -> str:
    """The server's own root (llama.cpp serves /props there, beside /v1)."""
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def _detail(response: httpx.Response) -> str:
    """The server's error message, short and with secrets masked."""
    try:
        body: Any = response.json()
    except (ValueError, UnicodeDecodeError):
        body = response.text
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            body = error.get("message") or error.get("detail") or error
        elif error:
            body = error
        if isinstance(body, dict):
            body = body.get("detail") or body.get("message") or json.dumps(body)
    text = " ".join(str(body).split())
    if len(text) > _DETAIL_CHARS:
        text = text[:_DETAIL_CHARS] + "..."
    return redact(text) or response.reason_phrase


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return None if value is None else min(max(float(value), 0.0), MAX_RETRY_AFTER_SECONDS)
    except ValueError:  # an HTTP date: rare from inference servers; use our own backoff
        return None


class OpenAIGenerator:
    """A :class:`~core.generation.generator.Generator` over an OpenAI-compatible HTTP server."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str | None,
        lora: str | None,
        api_key: str | None,
        timeout_seconds: float,
        max_retries: int,
        counter: ChatTokenCounter,
        context_window: int | None,
    ) -> None:
        self._base_url = base_url.rstrip("/") + "/"
        self._model = model
        self._lora = lora
        self._timeout = timeout_seconds
        self._max_retries = max_retries
        self._counter = counter
        self._configured_context = context_window
        self._context_window = context_window or DEFAULT_CONTEXT_WINDOW
        self._dialect: Dialect = "unknown"
        self._closed = False
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # One timeout for each step (connect, send, each read): while streaming, a read
        # timeout is the longest silence between two pieces, not the reply's whole time.
        self._client = httpx.AsyncClient(
            base_url=self._base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout_seconds),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )
        url = httpx.URL(self._base_url)
        self._where = f"{url.host}:{url.port}" if url.port else str(url.host)

    # -- Generator port ---------------------------------------------------------------------

    @property
    def name(self) -> str:
        model = self._lora or self._model or "server default model"
        return f"openai ({model} at {self._where}, {self._counter.source})"

    @property
    def context_window(self) -> int:
        return self._context_window

    @property
    def dialect(self) -> Dialect:
        """Which server family the start-up probe recognised (it picks the extra fields)."""
        return self._dialect

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return self._counter.count(messages)

    async def generate(self, messages: Sequence[ChatMessage], params: SamplingParams) -> Generation:
        self._check_open()
        payload = await self._payload(messages, params, stream=False)
        response = await self._send(payload)
        body = await self._read_body(response)
        data, text = self._completion(body)
        usage: dict[str, Any] = data["usage"] if isinstance(data.get("usage"), dict) else {}
        prompt_tokens = usage.get("prompt_tokens")
        completion_tokens = usage.get("completion_tokens")
        if not isinstance(prompt_tokens, int):
            prompt_tokens = self.count_tokens(messages)
        if not isinstance(completion_tokens, int):
            completion_tokens = self._reply_tokens(messages, text)
        return Generation(
            text=text, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
        )

    async def stream(
        self, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> AsyncGenerator[str, None]:
        self._check_open()
        payload = await self._payload(messages, params, stream=True)
        response = await self._send(payload)
        if "text/event-stream" not in response.headers.get("content-type", ""):
            # A server that ignores "stream": the whole reply in one piece.
            _, text = self._completion(await self._read_body(response))
            if text:
                yield text
            return
        events = EventSource(response).aiter_sse()
        try:
            async for event in events:
                if event.data.strip() == "[DONE]":
                    break
                for piece in self._pieces(event.data):
                    yield piece
        except httpx.TimeoutException as exc:
            raise self._timeout_error() from exc
        except (httpx.HTTPError, SSEError) as exc:
            raise self._lost_error(exc) from exc
        finally:
            # Leaving early (the caller stopped listening, or was cancelled) closes the
            # connection, which is how a server learns to stop decoding this reply.
            await events.aclose()
            await response.aclose()

    async def aclose(self) -> None:
        self._closed = True
        await self._client.aclose()

    # -- start-up -----------------------------------------------------------------------------

    async def probe(self) -> ServerInfo | None:
        """Read models, context length and server family; None when the server is down.

        A server that is down at start-up is not fatal (a bot and its model server often
        start together): replies fail with an apology until it is up. A wrong API key or a
        model the server does not serve is a configuration error and stops start-up.
        """
        try:
            response = await self._client.get("models")
        except httpx.TransportError as exc:
            log.warning(
                "The generation server at %s cannot be reached (%s: %s); starting anyway, "
                "replies will fail until it is up. Context window: %d tokens.",
                self._base_url,
                type(exc).__name__,
                exc,
                self._context_window,
            )
            return None
        if response.status_code in (401, 403):
            raise ConfigError(
                f"The generation server at {self._base_url} rejected the API key "
                f"(HTTP {response.status_code}: {_detail(response)}). Check "
                "PERSONABOT_OPENAI_API_KEY."
            )
        info = ServerInfo(*self._read_models(response), props_context=None, dialect="unknown")
        if info.context_windows or any("vllm" in str(owner) for owner in self._owners(response)):
            info = ServerInfo(info.models, info.context_windows, None, "vllm")
        else:
            props = await self._read_props()
            if props is not None:
                info = ServerInfo(info.models, info.context_windows, props, "llama.cpp")
        self._apply(info)
        return info

    def _apply(self, info: ServerInfo) -> None:
        for setting, wanted in (("OPENAI_MODEL", self._model), ("OPENAI_LORA", self._lora)):
            if wanted is not None and info.models and wanted not in info.models:
                raise ConfigError(
                    f"PERSONABOT_{setting}={wanted!r}: the generation server at "
                    f"{self._base_url} does not serve it. It serves: "
                    f"{', '.join(info.models)}."
                )
        if self._model is None and info.models:
            self._model = info.models[0]
        self._dialect = info.dialect
        if self._configured_context is None:
            served = info.context_windows.get(self._lora or "") or info.context_windows.get(
                self._model or ""
            )
            found = served or info.props_context
            if found is None and info.context_windows:
                found = min(info.context_windows.values())
            if found:
                self._context_window = found
        log.info(
            "Generation server %s (%s): model %s, context %d tokens, token counts from %s.",
            self._base_url,
            info.dialect,
            self._lora or self._model,
            self._context_window,
            self._counter.source,
        )

    @staticmethod
    def _read_models(response: httpx.Response) -> tuple[tuple[str, ...], dict[str, int]]:
        if not response.is_success:
            return (), {}
        try:
            cards = response.json().get("data") or []
        except (ValueError, AttributeError):
            return (), {}
        models: list[str] = []
        windows: dict[str, int] = {}
        for card in cards:
            if not isinstance(card, dict) or not card.get("id"):
                continue
            models.append(str(card["id"]))
            length = card.get("max_model_len")
            if isinstance(length, int) and length > 0:
                windows[str(card["id"])] = length
        return tuple(models), windows

    @staticmethod
    def _owners(response: httpx.Response) -> list[object]:
        try:
            return [c.get("owned_by") for c in response.json().get("data") or []]
        except (ValueError, AttributeError):
            return []

    async def _read_props(self) -> int | None:
        """llama.cpp's server context size (``/props``), or None on other servers."""
        try:
            response = await self._client.get(_server_root(self._base_url) + "/props")
            data = response.json() if response.is_success else None
        except (httpx.HTTPError, ValueError):
            return None
        if not isinstance(data, dict):
            return None
        settings = data.get("default_generation_settings")
        for source in (settings if isinstance(settings, dict) else {}, data):
            n_ctx = source.get("n_ctx")
            if isinstance(n_ctx, int) and n_ctx > 0:
                return n_ctx
        return None

    # -- requests -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise GenerationError("The generator has been shut down; restart personabot.")

    async def _model_for(self, params: SamplingParams) -> str:
        """The model name to ask for: a persona's own adapter, the LoRA, or the base model."""
        if params.adapter:
            # Served under its directory's name: vLLM --lora-modules NAME=DIR.
            return PurePath(params.adapter).name
        if self._lora:
            return self._lora
        if self._model is None:  # the server was down at start-up; ask it now
            info = await self.probe()
            if info is None:
                raise GenerationError(
                    f"Cannot reach the generation server at {self._base_url} "
                    "(PERSONABOT_OPENAI_BASE_URL)."
                ) from ServerReplyError("unreachable")
            if self._model is None:
                raise GenerationError(
                    f"The generation server at {self._base_url} lists no model; set "
                    "PERSONABOT_OPENAI_MODEL."
                ) from ServerReplyError("no model")
        return self._model

    async def _payload(
        self, messages: Sequence[ChatMessage], params: SamplingParams, *, stream: bool
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": await self._model_for(params),
            "messages": [
                {"role": m.role, "content": m.content} for m in self._counter.prepare(messages)
            ],
            "max_tokens": params.max_new_tokens,
            "temperature": max(params.temperature, 0.0),
            "top_p": params.top_p,
            "top_k": params.top_k,
            "stream": stream,
        }
        if params.stop:
            payload["stop"] = list(params.stop)
        if params.seed is not None:
            payload["seed"] = params.seed
        # Not OpenAI fields: vLLM and TGI call it repetition_penalty, llama.cpp (and
        # llama-cpp-python) repeat_penalty. Unknown servers get both and ignore the other.
        if self._dialect != "llama.cpp":
            payload["repetition_penalty"] = params.repetition_penalty
        if self._dialect != "vllm":
            payload["repeat_penalty"] = params.repetition_penalty
        return payload

    async def _send(self, payload: dict[str, Any]) -> httpx.Response:
        """POST the request and return the open response once its status is a success.

        Retried with a doubling pause (or the server's Retry-After) while nothing has been
        generated: the connection was refused, or the server said 429/503.
        """
        attempt = 0
        while True:
            accept = "text/event-stream" if payload["stream"] else "application/json"
            request = self._client.build_request(
                "POST", "chat/completions", json=payload, headers={"Accept": accept}
            )
            try:
                response = await self._client.send(request, stream=True)
            except _CONNECT_ERRORS as exc:
                if attempt < self._max_retries:
                    await asyncio.sleep(self._backoff(attempt))
                    attempt += 1
                    continue
                raise GenerationError(
                    f"Cannot reach the generation server at {self._base_url} "
                    f"(PERSONABOT_OPENAI_BASE_URL) after {attempt + 1} attempt(s): "
                    f"{type(exc).__name__}: {redact(str(exc))}"
                ) from exc
            except httpx.TimeoutException as exc:
                raise self._timeout_error() from exc
            except httpx.HTTPError as exc:
                raise self._lost_error(exc) from exc
            if response.is_success:
                return response
            try:
                await response.aread()
            except httpx.HTTPError:
                pass  # the status alone says enough
            finally:
                await response.aclose()
            if response.status_code in RETRY_STATUSES and attempt < self._max_retries:
                delay = _retry_after(response)
                await asyncio.sleep(self._backoff(attempt) if delay is None else delay)
                attempt += 1
                continue
            error = self._status_error(response, payload["model"], attempt + 1)
            raise error from ServerReplyError(f"HTTP {response.status_code}: {error}")

    @staticmethod
    def _backoff(attempt: int) -> float:
        return float(min(BACKOFF_SECONDS * 2**attempt, MAX_BACKOFF_SECONDS))

    async def _read_body(self, response: httpx.Response) -> bytes:
        try:
            return await response.aread()
        except httpx.TimeoutException as exc:
            raise self._timeout_error() from exc
        except httpx.HTTPError as exc:
            raise self._lost_error(exc) from exc
        finally:
            await response.aclose()

    def _completion(self, body: bytes) -> tuple[dict[str, Any], str]:
        """The decoded chat completion and its reply text."""
        try:
            data = json.loads(body)
            text = str(data["choices"][0]["message"].get("content") or "")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise GenerationError(
                f"The generation server at {self._where} sent a reply that is not an OpenAI "
                f"chat completion: {redact(body[:_DETAIL_CHARS].decode(errors='replace'))}"
            ) from exc
        return data, text

    def _pieces(self, data: str) -> list[str]:
        """The text of one streamed chunk; a mid-stream error event raises."""
        try:
            chunk = json.loads(data)
        except ValueError as exc:
            raise GenerationError(
                f"The generation server at {self._where} streamed something that is not "
                f"JSON: {redact(data[:_DETAIL_CHARS])}"
            ) from exc
        if not isinstance(chunk, dict):
            return []
        if chunk.get("error"):
            error = chunk["error"]
            message = error.get("message", error) if isinstance(error, dict) else error
            detail = redact(str(message)[:_DETAIL_CHARS])
            raise GenerationError(
                f"The generation server at {self._where} failed mid-reply: {detail}"
            ) from ServerReplyError(detail)
        pieces: list[str] = []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            content = delta.get("content") if isinstance(delta, dict) else None
            if content:
                pieces.append(str(content))
        return pieces

    def _reply_tokens(self, messages: Sequence[ChatMessage], text: str) -> int:
        with_reply = self.count_tokens([*messages, ChatMessage("assistant", text)])
        without = self.count_tokens([*messages, ChatMessage("assistant", "")])
        return max(0, with_reply - without)

    # -- errors -------------------------------------------------------------------------------

    def _timeout_error(self) -> GenerationError:
        return GenerationError(
            f"The generation server at {self._base_url} did not answer within "
            f"{self._timeout:g} s (PERSONABOT_OPENAI_TIMEOUT_SECONDS)."
        )

    def _lost_error(self, exc: Exception) -> GenerationError:
        return GenerationError(
            f"The connection to the generation server at {self._base_url} failed: "
            f"{type(exc).__name__}: {redact(str(exc))}"
        )

    def _status_error(self, response: httpx.Response, model: str, attempts: int) -> GenerationError:
        status = response.status_code
        detail = _detail(response)
        if status in (401, 403):
            advice = "It rejected the API key: check PERSONABOT_OPENAI_API_KEY."
        elif status == 404:
            advice = (
                f"Check PERSONABOT_OPENAI_BASE_URL (it ends in /v1) and that the server "
                f"serves model {model!r} (PERSONABOT_OPENAI_MODEL / PERSONABOT_OPENAI_LORA)."
            )
        elif status in RETRY_STATUSES:
            advice = f"It is overloaded; gave up after {attempts} attempt(s)."
        elif status == 400:
            advice = "It refused the request (a prompt longer than its context window?)."
        else:
            advice = "The server failed; see its log."
        return GenerationError(
            f"The generation server at {self._base_url} answered HTTP {status}: {detail}. {advice}"
        )


async def create_openai_generator(
    settings: Settings, *, counter: ChatTokenCounter | None = None
) -> OpenAIGenerator:
    """Connect to the configured server and read what it serves (``counter``: reuse one)."""
    if counter is None:
        counter = await asyncio.to_thread(load_token_counter, settings)
    api_key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    generator = OpenAIGenerator(
        base_url=settings.openai_base_url,
        model=settings.openai_model,
        lora=settings.openai_lora,
        api_key=api_key,
        timeout_seconds=settings.openai_timeout_seconds,
        max_retries=settings.openai_max_retries,
        counter=counter,
        context_window=settings.openai_context_window,
    )
    try:
        await generator.probe()
    except BaseException:
        await generator.aclose()
        raise
    return generator
