"""A scripted OpenAI-compatible server on 127.0.0.1, for what a real one will not do on cue.

The real server in these tests is llama-cpp-python's (tests/llama_server.py). This fake
covers the rest at the network edge: answering 429/503/500 a given number of times, an
error event in the middle of a stream, vLLM's ``/v1/models`` (with ``max_model_len``) and
llama.cpp's ``/props``, and recording each request body so tests can read the exact fields
the backend sent.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web

JSON = dict[str, Any]
Flavour = Literal["vllm", "llama.cpp", "plain"]


@dataclass
class Failure:
    status: int
    body: JSON
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class FakeOpenAIServer:
    """Answers chat completions with ``reply``, after any scripted failures."""

    flavour: Flavour = "vllm"
    models: tuple[str, ...] = ("mistralai/Mistral-7B-Instruct-v0.2", "dailydialog")
    context: int = 8192
    reply: str = "Hello there, friend."
    stream_error_after: int | None = None
    """Send an error event after this many streamed pieces."""
    requests: list[JSON] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    port: int = 0
    _failures: list[Failure] = field(default_factory=list)
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/props", self._props)
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, handle_signals=False)
        await self._runner.setup()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        self.port = listener.getsockname()[1]
        await web.SockSite(self._runner, listener).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def fail_next(
        self, status: int, times: int = 1, *, message: str = "", retry_after: str | None = None
    ) -> None:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        body = {"error": {"message": message or f"scripted {status}", "code": status}}
        self._failures.extend(Failure(status, body, headers) for _ in range(times))

    # -- handlers -----------------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        cards: list[JSON] = []
        for name in self.models:
            card: JSON = {"id": name, "object": "model", "owned_by": "llamacpp"}
            if self.flavour == "vllm":
                card["owned_by"] = "vllm"
                if name == self.models[0]:
                    card["max_model_len"] = self.context
            cards.append(card)
        return web.json_response({"object": "list", "data": cards})

    async def _props(self, request: web.Request) -> web.Response:
        if self.flavour != "llama.cpp":
            return web.json_response({"detail": "Not Found"}, status=404)
        return web.json_response({"default_generation_settings": {"n_ctx": self.context}})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body: JSON = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        if self._failures:
            failure = self._failures.pop(0)
            return web.json_response(failure.body, status=failure.status, headers=failure.headers)
        words = self.reply.split(" ")
        pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": self.reply},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 42, "completion_tokens": len(pieces)},
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for index, piece in enumerate(pieces):
            if self.stream_error_after is not None and index == self.stream_error_after:
                error = {"error": {"message": "scripted failure mid-stream", "code": 500}}
                await response.write(f"data: {json.dumps(error)}\n\n".encode())
                return response
            chunk = {"choices": [{"index": 0, "delta": {"content": piece}}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response
