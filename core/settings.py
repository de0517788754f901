"""The one place configuration comes from: environment variables and an optional TOML file.

Settings are read once at start-up by :func:`load_settings` and passed down explicitly, so
every component can be built from a plain :class:`Settings` value in tests.

Precedence, highest first: explicit overrides (the CLI), environment variables
(``PERSONABOT_<NAME>``, plus ``DISCORD_TOKEN`` and ``TELEGRAM_TOKEN``), the TOML file named by
``PERSONABOT_CONFIG`` (flat keys with the same names in lower case, e.g. ``model_profile``),
then the defaults below.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from core.errors import ConfigError

ENV_PREFIX = "PERSONABOT_"

ModelProfileName = Literal["auto", "mistral-7b", "smollm2-135m"]
MoodDetectorName = Literal["lexicon", "classifier", "tfidf", "text2emotion"]
GeneratorBackendName = Literal["transformers", "openai"]
DeviceName = Literal["auto", "cpu", "cuda"]
QuantizationName = Literal["auto", "nf4", "int4", "gemlite", "none"]

# What Telegram accepts as a webhook's secret_token.
_WEBHOOK_SECRET = re.compile(r"[A-Za-z0-9_-]{1,256}")


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    """Follow the XDG convention so a user's data survives re-cloning the repository."""
    env = os.environ if env is None else env
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "personabot"


class Settings(BaseSettings):
    """Every knob personabot has. Field descriptions are docs/configuration.md's reference
    (``python -m core.settings_reference``), so they say what and why, never measurements."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        frozen=True,
        validate_default=True,
    )

    config: Path | None = Field(
        default=None,
        description="TOML file with any of these settings, as flat keys named in lower case "
        "without the prefix (e.g. model_profile); environment variables beat it.",
    )
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Where the SQLite database, model cache, adapters, datasets and the persona "
        "folder live. Default: `$XDG_DATA_HOME/personabot` (`~/.local/share/personabot`), "
        "outside the repository so that data survives re-cloning it.",
    )
    cache_dir: Path | None = Field(
        default=None,
        description="Where converted model weights and the exported mood classifier are cached "
        "(default: `DATA_DIR/cache`).",
    )
    database_url: str | None = Field(
        default=None,
        description="Any SQLAlchemy async URL, e.g. `postgresql+asyncpg://...` (see "
        "docs/operations.md#storage); default: SQLite at `DATA_DIR/personabot.db`.",
    )
    auto_migrate: bool = Field(
        default=True,
        description="Upgrade the database schema at start-up when it is behind; false refuses "
        "to start on an old schema and says to run `personabot db upgrade`.",
    )
    database_connect_attempts: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Attempts to reach the database at start-up, with a doubling pause in "
        "between (a bot started together with its database server waits for it).",
    )
    database_retry_backoff_seconds: float = Field(
        default=1.0,
        ge=0.0,
        le=60.0,
        description="First pause between two attempts to reach the database; it doubles "
        "each time, up to 10 s.",
    )
    database_outage_seconds: float = Field(
        default=30.0,
        ge=0.0,
        le=3600.0,
        description="How long a request waits for a database that became unreachable "
        "(restart, failover) before the user is told to try again; 0 fails at once.",
    )
    history_retention_days: float | None = Field(
        default=None,
        gt=0,
        description="Delete messages older than this many days, at start-up and hourly; "
        "unset keeps history until /reset or /forget (see docs/privacy.md).",
    )
    shutdown_timeout_seconds: float = Field(
        default=30.0,
        ge=0.0,
        le=3600.0,
        description="On SIGTERM/Ctrl-C, how long replies being written may take to finish "
        "before they are cancelled (their messages stay stored).",
    )
    metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Serve Prometheus metrics on this port at `/metrics` (see "
        "docs/operations.md#observability); unset: no endpoint.",
    )
    metrics_listen: str = Field(
        default="127.0.0.1",
        description="Address the Prometheus metrics endpoint listens on; `0.0.0.0` reaches it "
        "from elsewhere, and as it has no authentication, only on a private network.",
    )
    model_profile: ModelProfileName = Field(
        default="auto",
        description="'mistral-7b' (GPU, 4-bit), 'smollm2-135m' (offline CPU) or 'auto': "
        "mistral-7b when CUDA is available, else smollm2-135m.",
    )
    model_path: str | None = Field(
        default=None,
        description="Hub id or local directory overriding the profile's model weights.",
    )
    adapter_path: Path | None = Field(
        default=None,
        description="LoRA adapter directory. Default: `DATA_DIR/adapters/<profile>-dailydialog` "
        "if present, else the shipped `core/adapters/<profile>-dailydialog` (only with the "
        "profile's own weights); 'none' serves the base model without any adapter.",
    )
    load_in_4bit: bool | None = Field(
        default=None,
        description="Force bitsandbytes NF4 on or off (default: the profile's choice); "
        "an older spelling of quantization='nf4' / 'none'; contradicting "
        "PERSONABOT_QUANTIZATION stops start-up.",
    )
    quantization: QuantizationName = Field(
        default="auto",
        description="Weight format: 'nf4' (bitsandbytes NF4 with double quantisation and "
        "bf16 compute; GPU or CPU), 'int4' (torchao int4 weight-only on PyTorch's tinygemm "
        "kernel: a CUDA GPU of compute capability 8.0+ and the gpu extra), 'gemlite' (4-bit "
        "HQQ weights on GemLite's Triton kernels: the same GPUs and extra, one adapter merged "
        "into the weights), 'none' (bf16 on a GPU, fp32 on a CPU) or 'auto': nf4 for "
        "mistral-7b, none for smollm2-135m. How they compare: docs/gpu.md.",
    )
    nf4_kernel: Literal["triton", "bitsandbytes"] = Field(
        default="triton",
        description="Kernel for NF4 products of up to 64 rows (decode steps) on a CUDA GPU: "
        "'triton' (personabot's fused kernel: reads bitsandbytes' packed 4-bit weights once "
        "instead of dequantising them to bf16 first; tilings measured per GPU model in "
        "`core/generation/local/nf4_tiles.json`; bitsandbytes is kept where Triton is missing and "
        "where that table found bitsandbytes faster) or 'bitsandbytes' (its own kernels "
        "throughout). Prompt passes and CPUs always use bitsandbytes. Figures: "
        "docs/benchmarks.md#decode-speed-gpu.",
    )
    compile: bool | None = Field(
        default=None,
        description="Decode on a static KV cache (MAX_BATCH_SIZE slots of MAX_PROMPT_TOKENS "
        "tokens, one per conversation, reserved at start-up) and replay each decode step as a "
        "CUDA graph captured at start-up. Default: on on a GPU, off otherwise; true on a "
        "machine without CUDA stops start-up.",
    )
    merge_adapter: bool | None = Field(
        default=None,
        description="Merge the LoRA adapter into the weights at load (before quantising). "
        "Default: on when one adapter serves every persona, off when personas have their "
        "own adapters (they need the unmerged model; true then stops start-up).",
    )
    device: DeviceName = Field(
        default="auto", description="Where the model runs; 'auto' picks CUDA when available."
    )
    generator_backend: GeneratorBackendName = Field(
        default="transformers",
        description="Which generation backend serves replies: 'transformers' (the model "
        "runs in this process) or 'openai' (an OpenAI-compatible server: vLLM, llama.cpp, "
        "Ollama, TGI; see the OPENAI_* settings and docs/remote-generation.md).",
    )
    openai_base_url: str = Field(
        default="http://127.0.0.1:8000/v1",
        description="The generation server's OpenAI API base URL, '/v1' included (backend "
        "'openai').",
    )
    openai_model: str | None = Field(
        default=None,
        description="Model name to ask the server for; default: the first model it lists. "
        "Start-up fails, listing the served names, if the server does not serve it.",
    )
    openai_lora: str | None = Field(
        default=None,
        description="LoRA adapter name the server serves (vLLM: --lora-modules NAME=DIR); "
        "when set, requests ask for it instead of OPENAI_MODEL.",
    )
    openai_api_key: SecretStr | None = Field(
        default=None,
        description="API key sent as a Bearer token (vLLM --api-key, llama.cpp --api-key); "
        "masked in `personabot config` and in every log line.",
    )
    openai_timeout_seconds: float = Field(
        default=60.0,
        gt=0.0,
        le=3600.0,
        description="Longest wait for the generation server: to connect, and for its reply "
        "(streaming: for each next piece of it).",
    )
    openai_max_retries: int = Field(
        default=2,
        ge=0,
        le=20,
        description="Retries, with a doubling pause from 0.5 s (or the server's Retry-After), "
        "when the server cannot be reached or answers 429/503 before the reply starts.",
    )
    openai_tokenizer: str | None = Field(
        default=None,
        description="Tokenizer (local directory or Hub id) of the served model, to count "
        "prompt tokens exactly; default: the profile's tokenizer when MODEL_PROFILE names "
        "one, else an estimate (3 bytes a token) that errs high.",
    )
    openai_context_window: int | None = Field(
        default=None,
        ge=256,
        description="The served model's context length in tokens; default: read from the "
        "server (vLLM /v1/models, llama.cpp /props), else 2048.",
    )
    mood_detector: MoodDetectorName = Field(
        default="classifier",
        description="Which mood detector classifies user messages: 'classifier' (the "
        "trained MiniLM model, see `core/mood/classifier_model/MODEL_CARD.md`), 'lexicon', "
        "'tfidf' or 'text2emotion' (optional extra); see "
        "docs/personas-and-moods.md#mood-detection.",
    )
    persona_dir: Path | None = Field(
        default=None,
        description="Folder of extra persona TOML files (default: `DATA_DIR/personas`).",
    )
    default_persona: str = Field(
        default="friend", description="Persona a new conversation starts with."
    )
    max_message_chars: int = Field(
        default=8000,
        ge=1,
        le=1_000_000,
        description="Longest user message accepted (characters); a longer one is refused "
        "with a clear answer and not stored.",
    )
    max_user_personas: int = Field(
        default=100,
        ge=0,
        le=10_000,
        description="Most personas each community (a Discord server or DM, a Telegram chat) "
        "may create with /persona create; 0 allows none. Each persona's fields are limited "
        "too: display name 64 characters, description 200 (one line), instructions 2,000, "
        "each mood response 400.",
    )
    history_messages: int = Field(
        default=200, ge=0, le=10_000, description="Most stored messages considered per reply."
    )
    max_prompt_tokens: int | None = Field(
        default=None,
        ge=256,
        description="Prompt budget in tokens (persona + mood + history), capped by the "
        "model's context window. Default: the profile's (1024 for smollm2-135m, whose CPU "
        "latency grows with the prompt; 4096 for mistral-7b).",
    )
    seed: int | None = Field(default=None, description="Fix sampling for reproducible replies.")
    max_batch_size: int = Field(
        default=16,
        ge=1,
        le=512,
        description="Most replies the local model writes at once in one batch (continuous "
        "batching: a new request joins the running batch at the next token); 1 writes one "
        "reply at a time. Key/value cache memory grows with it (see "
        "docs/gpu.md#many-conversations-at-once).",
    )
    batch_window_ms: float = Field(
        default=10.0,
        ge=0.0,
        le=10_000.0,
        description="When the model is idle, how long the first request waits for others to "
        "arrive so they start together in one batch (milliseconds).",
    )
    max_queued_requests: int = Field(
        default=64,
        ge=0,
        le=100_000,
        description="Most replies waiting for a place in the batch; beyond it a message is "
        "answered at once with 'busy, try again' instead of waiting.",
    )
    care_after_messages: int = Field(
        default=3,
        ge=0,
        le=100,
        description="After this many sad or afraid messages in a row from one user, every "
        "persona is told to answer supportively first (0 turns it off).",
    )
    support_text: str | None = Field(
        default=None,
        max_length=1000,
        description="Text appended (once per conversation per day) to a reply to a user past "
        "PERSONABOT_CARE_AFTER_MESSAGES, e.g. local support lines; unset: none.",
    )
    max_waiting_per_conversation: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Most messages of one conversation waiting for their reply; beyond it a "
        "message is answered at once with 'still answering earlier messages' instead of "
        "queueing, so a busy /chat always channel cannot pile up replies that arrive minutes "
        "late.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="WARNING",
        description="Logging threshold for messages on standard error; INFO adds one line "
        "per answered message (see docs/operations.md#observability); DEBUG logs SQL with "
        "message text, so not in production.",
    )
    discord_token: SecretStr | None = Field(
        default=None,
        description="Discord bot token; set it to start the Discord frontend (see "
        "docs/discord.md).",
    )
    telegram_token: SecretStr | None = Field(
        default=None,
        description="Telegram bot token; set it to start the Telegram frontend (see "
        "docs/telegram.md).",
    )
    telegram_api_url: str = Field(
        default="https://api.telegram.org/bot",
        description="Bot API base URL the token is appended to (or '{token}' replaced in); "
        "point it at a self-hosted telegram-bot-api server, e.g. http://127.0.0.1:8081/bot.",
    )
    telegram_webhook_url: str | None = Field(
        default=None,
        description="Public HTTPS URL Telegram should POST updates to; set it to use a "
        "webhook instead of long polling (see docs/telegram.md#webhook-instead-of-long-polling"
        "). Its path is the path served locally.",
    )
    telegram_webhook_listen: str = Field(
        default="0.0.0.0",
        description="Address the webhook server listens on (behind a TLS reverse proxy, "
        "usually 127.0.0.1).",
    )
    telegram_webhook_port: int = Field(
        default=8443, ge=1, le=65535, description="Port the webhook server listens on."
    )
    telegram_webhook_secret: SecretStr | None = Field(
        default=None,
        description="Secret Telegram sends with every webhook request (1-256 of A-Z, a-z, "
        "0-9, _ and -); default: a random one per start.",
    )
    commands_per_minute: int = Field(
        default=20,
        ge=0,
        le=10_000,
        description="Most commands and button taps one user may send per minute on chat "
        "platforms (a bare mention's hint counts too); past it they are ignored, with one "
        "notice (on Discord a private note); 0 turns the limit off.",
    )
    admin_only: bool = Field(
        default=True,
        description="In Discord servers and Telegram groups, only admins may change the "
        "conversation (persona, reply length, /chat, /reset, /persona create and delete, "
        "/retry of someone else's reply; Discord: Manage Server, Manage Messages for /reset "
        "and /retry; Telegram: the group's admins); false lets everyone. In private chats the "
        "user always decides.",
    )
    telegram_admin_only: bool | None = Field(
        default=None,
        description="Telegram's own PERSONABOT_ADMIN_ONLY, overriding it there (the older "
        "name, still accepted).",
    )
    user_cooldown_seconds: float = Field(
        default=2.0,
        ge=0.0,
        le=3600.0,
        description="Minimum seconds between two messages of one user that the bot answers "
        "on chat platforms (0 disables the cooldown).",
    )
    discord_api_url: str = Field(
        default="https://discord.com/api/v10",
        description="Discord REST API base URL, version included; point it at a REST proxy, "
        "e.g. http://127.0.0.1:8080/api/v10.",
    )
    discord_gateway_url: str = Field(
        default="wss://gateway.discord.gg/",
        description="Discord gateway (websocket) URL for new sessions, e.g. "
        "ws://127.0.0.1:8080/gateway.",
    )
    discord_guild_ids: tuple[int, ...] = Field(
        default=(),
        description="Servers (guild ids, comma-separated) to register the slash commands in, "
        "where they appear at once (DMs then have none); empty: register them globally, for "
        "every server and DMs.",
    )
    stream_replies: bool = Field(
        default=False,
        description="Show a reply while the model writes it: on Discord by editing the "
        "message (at most every 1.5 s), on Telegram as a draft in private chats (at most "
        "every 1 s) and an edited message in groups (at most every 3 s), each throttled to "
        "the platform's rate limits.",
    )
    discord_stream_replies: bool | None = Field(
        default=None,
        description="Discord's own PERSONABOT_STREAM_REPLIES, overriding it there (the older "
        "name, still accepted).",
    )
    conversation_cooldown_seconds: float = Field(
        default=1.0,
        ge=0.0,
        le=3600.0,
        description="Minimum seconds between two answered messages in one conversation (a "
        "Discord channel or thread, a Telegram chat or forum topic), whoever writes them "
        "(0 disables it).",
    )
    discord_channel_cooldown_seconds: float | None = Field(
        default=None,
        ge=0.0,
        le=3600.0,
        description="Discord's own conversation cooldown, overriding "
        "PERSONABOT_CONVERSATION_COOLDOWN_SECONDS there (the older name, still accepted).",
    )
    telegram_chat_cooldown_seconds: float | None = Field(
        default=None,
        ge=0.0,
        le=3600.0,
        description="Telegram's own conversation cooldown, overriding "
        "PERSONABOT_CONVERSATION_COOLDOWN_SECONDS there (the older name, still accepted).",
    )

    def streams_replies(self, platform: Literal["discord", "telegram"]) -> bool:
        """Whether ``platform`` shows replies while they are written."""
        override = self.discord_stream_replies if platform == "discord" else None
        return self.stream_replies if override is None else override

    def conversation_cooldown(self, platform: Literal["discord", "telegram"]) -> float:
        """The platform's conversation cooldown: its own override, else the shared one."""
        override = {
            "discord": self.discord_channel_cooldown_seconds,
            "telegram": self.telegram_chat_cooldown_seconds,
        }[platform]
        return self.conversation_cooldown_seconds if override is None else override

    def admins_only(self, platform: Literal["discord", "telegram"]) -> bool:
        """Whether only admins may change a group conversation on ``platform``."""
        override = self.telegram_admin_only if platform == "telegram" else None
        return self.admin_only if override is None else override

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("telegram_api_url", "telegram_webhook_url", "openai_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("discord_api_url")
    @classmethod
    def _discord_api_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")  # discord.py appends paths that start with '/'

    @field_validator("discord_gateway_url")
    @classmethod
    def _websocket_url(cls, value: str) -> str:
        if not value.startswith(("ws://", "wss://")):
            raise ValueError("must be a ws:// or wss:// URL")
        return value

    @field_validator("discord_guild_ids", mode="before")
    @classmethod
    def _split_ids(cls, value: object) -> object:
        # The environment gives one string ("123, 456"); TOML gives a list.
        if isinstance(value, str):
            return [part for part in re.split(r"[\s,]+", value) if part]
        return value

    @field_validator("discord_guild_ids")
    @classmethod
    def _snowflakes(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        bad = [guild for guild in value if guild <= 0]
        if bad:
            raise ValueError(f"guild ids are positive numbers, got {bad[0]}")
        return tuple(dict.fromkeys(value))  # a repeated id would be registered twice

    @field_validator("telegram_webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not _WEBHOOK_SECRET.fullmatch(value.get_secret_value()):
            raise ValueError("must be 1-256 characters from A-Z, a-z, 0-9, _ and -")
        return value

    @field_validator("default_persona", mode="before")
    @classmethod
    def _normalise_persona(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_settings gathers the environment and the TOML file itself, so that it can tell
        # the user which source a bad value came from; constructing Settings directly (tests)
        # therefore never reads the process environment by surprise.
        return (init_settings,)

    # Derived locations -------------------------------------------------------------------

    @property
    def resolved_cache_dir(self) -> Path:
        return self.cache_dir or self.data_dir / "cache"

    @property
    def resolved_persona_dir(self) -> Path:
        return self.persona_dir or self.data_dir / "personas"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'personabot.db').resolve()}"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(
            f"Config file {path} (PERSONABOT_CONFIG) does not exist. Create it or unset "
            "PERSONABOT_CONFIG."
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"Config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"Config file {path} cannot be read: {exc.strerror}") from None
    allowed = set(Settings.model_fields) - {"config"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(
            f"Config file {path}: unknown key(s) {', '.join(unknown)}. "
            f"Accepted keys: {', '.join(sorted(allowed))}."
        )
    return data


_TOKEN_ENV = {"DISCORD_TOKEN": "discord_token", "TELEGRAM_TOKEN": "telegram_token"}


def env_name(field: str) -> str:
    """The environment variable that sets ``field``."""
    for name, target in _TOKEN_ENV.items():
        if target == field:
            return name
    return ENV_PREFIX + field.upper()


def _describe_error(error: Mapping[str, Any], source: str | None) -> str:
    """Turn one pydantic error into a line naming the setting the way the user wrote it."""
    loc = error.get("loc") or ("?",)
    key = str(loc[0])
    where = f"{env_name(key)} (or '{key}' in {source})" if source else env_name(key)
    value = error.get("input")
    secret = key.endswith(("_token", "_secret", "_key"))  # never echo a credential to the terminal
    shown = "" if isinstance(value, dict) or value is None or secret else f" = {value!r}"
    message = str(error.get("msg", "invalid value"))
    if error.get("type") == "extra_forbidden":
        accepted = ", ".join(sorted(env_name(f) for f in Settings.model_fields))
        message = f"unknown setting; accepted names: {accepted}"
    elif error.get("type") == "literal_error":
        expected = (error.get("ctx") or {}).get("expected", "")
        message = f"expected one of {expected}"
    return f"  {where}{shown}: {message}"


def _values_from_env(env: Mapping[str, str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for name, value in env.items():
        if name in _TOKEN_ENV:
            values[_TOKEN_ENV[name]] = value
        elif name.startswith(ENV_PREFIX):
            values[name[len(ENV_PREFIX) :].lower()] = value
    return values


def load_settings(
    overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Read and validate settings once; raise ConfigError listing every bad key.

    ``env`` defaults to the process environment; tests pass their own mapping. Unknown
    ``PERSONABOT_*`` variables are errors, because a typo silently ignored is worse.
    """
    env_values = _values_from_env(os.environ if env is None else env)
    explicit = {k: v for k, v in (overrides or {}).items() if v is not None}
    config_path = explicit.get("config") or env_values.get("config")
    values: dict[str, Any] = {}
    if config_path:
        values.update(_read_toml(Path(config_path).expanduser()))
    values.update(env_values)
    values.update(explicit)
    try:
        return Settings(**values)
    except ValidationError as exc:
        source = str(config_path) if config_path else None
        lines = [_describe_error(err, source) for err in exc.errors()]
        raise ConfigError("Invalid configuration:\n" + "\n".join(lines)) from None
