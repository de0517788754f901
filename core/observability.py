"""What an operator sees of a running bot: one log line per event, and Prometheus metrics.

Events go to the ``personabot.events`` logger at INFO as one ``key=value`` line each
(``event=reply conversation=telegram:42 persona=pirate mood=happiness latency_ms=812 ...``),
so ``PERSONABOT_LOG_LEVEL=INFO`` shows them and a log shipper can parse them without a
schema; the same fields ride on the record as ``record.fields`` for structured handlers.

Metrics live in a registry per engine (several engines in one process, as in the tests, must
not collide in prometheus-client's global registry) and are always counted, which costs next
to nothing; the HTTP endpoint that exposes them starts only when ``PERSONABOT_METRICS_PORT``
is set.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from core.errors import ConfigError

events = logging.getLogger("personabot.events")

_BARE = re.compile(r"[A-Za-z0-9_.:/@+-]+")

# Reply latency on a CPU model runs to tens of seconds, on a GPU well under one.
_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
_RATE_BUCKETS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 250, 500)


def _value(value: object) -> str:
    if isinstance(value, float):
        value = round(value, 3)
    text = str(value)
    if _BARE.fullmatch(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def log_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one event as a single ``event=... key=value ...`` line; ``None`` fields are left out."""
    if not events.isEnabledFor(level):
        return
    present = {key: value for key, value in fields.items() if value is not None}
    line = " ".join([f"event={event}", *(f"{k}={_value(v)}" for k, v in present.items())])
    events.log(level, "%s", line, extra={"event": event, "fields": present})


class Metrics:
    """The engine's Prometheus metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "personabot_requests",
            "Messages the engine was asked to answer, by outcome (ok, error, cancelled).",
            ["outcome"],
            registry=self.registry,
        )
        self.errors = Counter(
            "personabot_errors",
            "Failed replies by kind (generation, busy, storage, input, other).",
            ["kind"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "personabot_queue_depth",
            "Messages accepted and not yet answered (waiting for their turn or being written).",
            registry=self.registry,
        )
        self.latency = Histogram(
            "personabot_reply_latency_seconds",
            "Time from receiving a message to its stored reply, queueing included.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.generation = Histogram(
            "personabot_generation_seconds",
            "Time the model took to write one reply.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "personabot_generated_tokens",
            "Tokens the model generated in stored replies.",
            registry=self.registry,
        )
        self.tokens_per_second = Histogram(
            "personabot_tokens_per_second",
            "Generation speed of each reply, in tokens per second.",
            buckets=_RATE_BUCKETS,
            registry=self.registry,
        )
        self.purged = Counter(
            "personabot_messages_deleted",
            "Messages deleted by retention, /forget or /reset, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self._server: Any = None

    def serve(self, host: str, port: int) -> None:
        """Expose ``/metrics`` over HTTP on a daemon thread, until :meth:`close`."""
        try:
            self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(
                f"Cannot serve metrics on {host}:{port} (PERSONABOT_METRICS_LISTEN, "
                f"PERSONABOT_METRICS_PORT): {exc.strerror or exc}. Choose a free port, or "
                "unset PERSONABOT_METRICS_PORT."
            ) from None
        log_event("metrics_endpoint", url=f"http://{host}:{port}/metrics")

    def close(self) -> None:
        """Stop the endpoint (blocks up to half a second: call it off the event loop)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
